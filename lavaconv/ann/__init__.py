"""The ANN side: data sets, running the canonical graph (one probe interpreter), and the
activation statistics that choose the scales."""
