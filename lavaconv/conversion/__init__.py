"""ANN graph -> float spiking network: the structure (populations and composed synapses) and
every conversion method as a pass over the network (docs/design.md section 2)."""

from lavaconv.ann.stats import NormSpec
from lavaconv.conversion.build import build, build_network
from lavaconv.conversion.structure import ConvertOptions, convert

__all__ = ["ConvertOptions", "NormSpec", "build", "build_network", "convert"]
