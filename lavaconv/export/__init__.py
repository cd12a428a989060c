"""Exports of a converted network to the neuromorphic ecosystem: NIR and lava-dl netx HDF5."""

from lavaconv.export.netx import export_netx
from lavaconv.export.nir import export_nir, nir_graph
from lavaconv.export.nir_sim import run_nir

__all__ = ["export_netx", "export_nir", "nir_graph", "run_nir"]
