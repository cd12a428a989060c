"""Loihi 2 readiness: is Intel's Lava extension installed, and which processes can it map.

Nothing here pings a host or imports the extension's compiler: the checks use
:func:`importlib.util.find_spec` and Lava's own model discovery.
"""

from __future__ import annotations

import importlib.util

from lava.magma.compiler.compiler_graphs import AbstractNcProcessModel, ProcGroupDiGraphs
from lava.magma.compiler.exceptions import NoProcessModelFound
from lava.magma.core.process.process import AbstractProcess

from lavaconv.lava.graph import LavaGraph

EXTENSION_MODULES = ("lava.utils.loihi2_profiler", "lava.magma.core.model.nc.model")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def loihi2_available() -> bool:
    """True iff Intel's Lava extension for Loihi (lava-loihi) can be imported."""
    return all(_importable(m) for m in EXTENSION_MODULES)


def _has_hw_model(proc: AbstractProcess) -> bool:
    try:
        models = ProcGroupDiGraphs._find_proc_models(proc)
    except NoProcessModelFound:
        return False
    return any(issubclass(m, AbstractNcProcessModel) for m in models)


def missing_hw_models(graph: LavaGraph) -> list[str]:
    """``"name (ProcessClass)"`` for every process without a Loihi (Nc) process model."""
    known: dict[type, bool] = {}
    missing = []
    for proc in graph.processes:
        cls = type(proc)
        if cls not in known:
            known[cls] = _has_hw_model(proc)
        if not known[cls]:
            missing.append(f"{proc.name} ({cls.__name__})")
    return missing
