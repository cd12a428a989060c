"""What a ``.pt2`` archive would make ``torch.export.load`` run, found before torch reads it.

torch 2.13's loader (``torch/export/pt2_archive/_package.py``, ``torch/_export/serde/
serialize.py``) runs code from the file in four ways: ``torch.load(weights_only=False)`` on a
weight or constant its config marks ``use_pickle``; ``pickle.loads`` / the TorchScript
unpickler on ``opaque_obj_*`` / ``custom_obj_*`` constants; a compiled AOTInductor library
under ``data/aotinductor/``; and ``deserialize_torch_artifact``, which retries
``weights_only=False`` when torch's weights-only unpickler refuses the sample inputs or a
legacy weights, constants or state_dict file. :func:`check_pt2` refuses all of them unless the
user trusts the file. (TorchScript archives need no such check: ``torch.jit.load``'s unpickler
resolves only TorchScript types and refuses any other global.)
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import torch

from lavaconv.errors import LavaconvError, cut

TRUST_HINT = ("loading it runs code from the file, so it needs --trust-pickle; safer: save the "
              "model again with torch.export.save from plain tensors")
CONFIGS = ("data/weights/", "_weights_config.json"), ("data/constants/", "_constants_config.json")
CODE_OBJECTS = ("custom_obj_", "opaque_obj_")  # constants unpickled as objects
# legacy entries torch.load()s with a weights_only=False fallback
LEGACY = ("serialized_state_dict.json", "serialized_constants.json",
          "serialized_example_inputs.json")


def check_pt2(path: Path, trust_pickle: bool) -> None:
    """Raise :class:`LavaconvError` if loading the ``.pt2`` archive at ``path`` would run code
    from it and ``trust_pickle`` is false; a damaged archive or config is refused either way."""
    try:
        with zipfile.ZipFile(path) as archive:
            found = _code(path, archive)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
        raise LavaconvError(f"{path}: damaged archive ({cut(str(err), 80)})") from None
    if found and not trust_pickle:
        raise LavaconvError(f"{path}: holds {cut(found[0])}"
                            f"{f' and {len(found) - 1} more' if len(found) > 1 else ''}; "
                            f"{TRUST_HINT}")


def _code(path: Path, archive: zipfile.ZipFile) -> list[str]:
    """The entries of ``archive`` whose loading runs code."""
    names = archive.namelist()
    found = [f for n in names if _is_config(n) for f in _pickled_payloads(path, archive, n)]
    found += [f"{n} (compiled AOTInductor code)" for n in names if "data/aotinductor/" in n]
    found += [f"{n} (pickled objects beyond tensors)" for n in names
              if _unpickled_by_torch(n) and not _weights_only(archive.read(n))]
    return found


def _is_config(name: str) -> bool:
    tail = _tail(name)
    return any(tail.startswith(d) and tail.endswith(e) for d, e in CONFIGS)


def _tail(name: str) -> str:
    """The entry name below the archive's root folder."""
    parts = PurePosixPath(name).parts
    return "/".join(parts[1:]) if len(parts) > 1 else name


def _pickled_payloads(path: Path, archive: zipfile.ZipFile, name: str) -> list[str]:
    """The entries of a weights or constants config that torch would unpickle."""
    try:
        config = json.loads(archive.read(name)).get("config")
        entries = [(str(fqn), meta.get("use_pickle") is not False, str(meta.get("path_name")))
                   for fqn, meta in config.items()]
    except (ValueError, AttributeError) as err:
        raise LavaconvError(f"{path}: damaged archive: {name} is not a payload config "
                            f"({cut(str(err), 80)})") from None
    return [f"{name}: {fqn} -> {file} (pickled)" for fqn, pickled, file in entries
            if pickled or file.startswith(CODE_OBJECTS)]


def _unpickled_by_torch(name: str) -> bool:
    tail = _tail(name)
    return (tail.endswith(".pt") and tail.startswith(("data/", "extra/"))) or \
        PurePosixPath(name).name in LEGACY


def _weights_only(data: bytes) -> bool:
    """Whether torch's weights-only unpickler (which runs no code) accepts ``data``."""
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any refusal or damage: torch would retry unsafely
        return False
    return True
