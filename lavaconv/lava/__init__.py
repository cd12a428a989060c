"""Lava back end: processes, process graph and runner (docs/design.md section 4).

Every lavaconv module that touches Lava imports it through this package: importing it first
installs the import fixes of :mod:`lavaconv.lava.compat` (Lava 0.10 on Python 3.11).
"""

from lavaconv.lava.compat import install

install()

from lavaconv.lava.graph import LavaGraph, build  # noqa: E402
from lavaconv.lava.hardware import loihi2_available, missing_hw_models  # noqa: E402
from lavaconv.lava.run import LavaResult, run_lava  # noqa: E402
from lavaconv.lava.verify import check, compare  # noqa: E402

__all__ = ["LavaGraph", "LavaResult", "build", "check", "compare", "install", "loihi2_available",
           "missing_hw_models", "run_lava"]
