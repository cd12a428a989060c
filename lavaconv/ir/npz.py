"""Reading ``.npz`` archives from users: no pickles, no array larger than its bytes or the
machine, and every failure one line naming the file."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from lavaconv.errors import LavaconvError, cut

NPY_VERSIONS = ((1, 0), (2, 0), (3, 0))


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``, each checked against its member's size first."""
    if not path.is_file():
        raise LavaconvError(f"{path}: no such file")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an npz archive")
        with npz:
            _check_sizes(npz)
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise LavaconvError(f"{path}: cannot read npz ({cut(str(err))})") from None


def _check_sizes(npz: np.lib.npyio.NpzFile) -> None:
    """Refuse, before numpy allocates it, an array whose header claims more bytes than its
    archive member holds, or a member larger than this machine's memory."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for info in npz.zip.infolist():
        with npz.zip.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version not in NPY_VERSIONS:
                raise ValueError(f"{info.filename}: unknown .npy format version {version}")
            shape, _, dtype = np.lib.format._read_array_header(member, version)  # noqa: SLF001
            held = info.file_size - member.tell()
        if dtype.hasobject:
            raise ValueError(f"{info.filename}: holds Python objects")
        need = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if need > held or info.file_size > memory:
            raise ValueError(f"{info.filename} claims shape {shape} of {dtype} "
                             f"({need / 2**30:.3g} GiB) and holds {held / 2**30:.3g} GiB; "
                             f"this machine has {memory / 2**30:.3g} GiB")
