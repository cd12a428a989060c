"""Import-time fixes that make lava-nc 0.10.0 and lava-dl 0.6.0 importable on Python 3.11.

Both packages are archived and installed as they are; nothing in site-packages is edited.
A :data:`sys.meta_path` finder loads the few affected modules from their own source with
exact text replacements applied in memory:

- ``lava.magma.compiler.var_model``: dataclass fields default to a shared ``ByteEncoder()``
  instance, which Python 3.11 rejects ("mutable default"); use ``default_factory``.
- ``lava.magma.runtime.message_infrastructure.multiprocessing``: calls
  ``mp.set_start_method('fork')`` at import, which raises "context has already been set" once
  anything (torch, a test runner) has touched the default context; Lava needs fork, so keep it
  when it is set already and force it otherwise.
- ``lava.lib.dl.slayer``: its ``__init__`` imports ``object_detection`` (needs torchvision and
  OpenCV, which lavaconv does not use); drop that import.

If a replacement's text is missing (another Lava version), the import fails with a message
naming the module, instead of running a half-patched file.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import CodeType

PATCHES: dict[str, tuple[tuple[str, str], ...]] = {
    "lava.magma.compiler.var_model": (
        ("from dataclasses import dataclass, InitVar",
         "from dataclasses import dataclass, InitVar, field"),
        ("= ByteEncoder()", "= field(default_factory=ByteEncoder)"),
    ),
    "lava.magma.runtime.message_infrastructure.multiprocessing": (
        ("    mp.set_start_method('fork')\n",
         "    if mp.get_start_method(allow_none=True) != 'fork':\n"
         "        mp.set_start_method('fork', force=True)\n"),
    ),
    "lava.lib.dl.slayer": (
        ("from . import object_detection as obd\n", ""),
        ("'utils',\n    'obd'\n", "'utils'\n"),
    ),
}


class _PatchingLoader(importlib.machinery.SourceFileLoader):
    """Compile a module from its source after applying :data:`PATCHES` (no bytecode cache)."""

    def get_code(self, fullname: str) -> CodeType:
        source = self.get_data(self.path).decode("utf-8")
        for old, new in PATCHES[fullname]:
            if old not in source:
                raise ImportError(f"lavaconv.lava.compat: {self.path} does not contain {old!r}; "
                                  "this Lava version is not the one lavaconv supports (0.10.0)")
            source = source.replace(old, new)
        return compile(source, self.path, "exec", dont_inherit=True)


class _PatchingFinder(importlib.abc.MetaPathFinder):
    """Find the modules named in :data:`PATCHES` on the normal path, load them patched."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None:
            return None
        spec.loader = _PatchingLoader(fullname, spec.origin)
        return spec


def install() -> None:
    """Put the patching finder first on :data:`sys.meta_path` (idempotent)."""
    if not any(isinstance(f, _PatchingFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchingFinder())
