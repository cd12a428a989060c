"""lavaconv: trained PyTorch ReLU networks → spiking networks on Intel's Lava and Loihi.

Python API (see ``lavaconv.api``): ``lavaconv.convert(model, data=...)`` returns a
:class:`~lavaconv.api.Converted` with ``.simulate``, ``.quantize``, ``.to_lava``,
``.run_lava``, ``.energy`` and ``.report``. The command line is ``lavaconv`` (``lavaconv.cli``).
"""

from lavaconv.api import Converted, convert

__all__ = ["Converted", "convert"]
