"""lavaconv: trained PyTorch ReLU networks → spiking networks on Intel's Lava and Loihi.

Python API (see ``lavaconv.app.api``): ``lavaconv.convert(model, data=...)`` returns a
:class:`~lavaconv.app.api.Converted` with ``.simulate``, ``.quantize``, ``.to_lava``,
``.run_lava``, ``.energy`` and ``.report``. The command line is ``lavaconv`` (``lavaconv.app.cli``).
"""

from lavaconv.app.api import Converted, convert

__all__ = ["Converted", "convert"]
