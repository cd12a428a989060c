"""Output directories that appear whole or not at all and replace only what lavaconv wrote;
output files written in one step; JSON that is stable across runs."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from lavaconv import signals
from lavaconv.errors import LavaconvError, cut

MARKER = ".lavaconv-output"  # in every directory atomic_dir writes: only those are replaced


def check_out_dir(target: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """``target`` resolved, if an output directory may be written there: a new path or a
    directory lavaconv wrote (it holds :data:`MARKER`) that contains none of ``inputs``."""
    if not str(target).strip():
        raise LavaconvError("output directory '': give a path")
    path = Path(target).resolve()
    if path.exists():
        if not path.is_dir():
            raise LavaconvError(f"{cut(str(target))}: exists and is not a directory; "
                                "give a new path")
        if not (path / MARKER).is_file():
            raise LavaconvError(f"{cut(str(target))}: an existing directory lavaconv did "
                                "not write; give a new path (only a previous lavaconv output is "
                                "replaced)")
    for item in inputs:
        if path in Path(item).resolve().parents:
            raise LavaconvError(f"{cut(str(target))}: holds the input {cut(str(item))}, "
                                "which replacing it would delete")
    return path


@contextmanager
def atomic_dir(target: str | Path, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary directory beside ``target`` that replaces it only on success.

    ``target`` must pass :func:`check_out_dir` (checked again at the commit). On any error or
    interrupt the temporary directory is removed and a previous ``target`` is left untouched;
    concurrent commits of one target each replace the last (none fails or leaves a
    directory behind). OS errors are user errors naming the path.
    """
    inputs = list(inputs)
    if not str(target).strip():
        check_out_dir(target)  # refuses it
    path = Path(target).resolve()
    with _os_errors(target):
        path.parent.mkdir(parents=True, exist_ok=True)
        # checked under the lock only: a concurrent commit renames ``path`` under it
        with _locked(path.parent):
            check_out_dir(target, inputs)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (tmp / MARKER).write_text("written by lavaconv; lavaconv may replace this directory\n")
        yield tmp
        with _os_errors(target), _locked(path.parent), signals.held():
            _commit(tmp, check_out_dir(target, inputs))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _commit(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``, moving a previous ``path`` aside (then deleting it)."""
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
    try:
        try:
            path.rename(old)  # replaces the empty ``old``
        except FileNotFoundError:
            moved = False
        else:
            moved = True
        try:
            tmp.rename(path)
        except BaseException:
            if moved:
                old.rename(path)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory`` (flock on its descriptor, released on exit)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def _os_errors(path: str | Path) -> Iterator[None]:
    """An OSError while writing ``path`` as a one-line user error naming it."""
    try:
        yield
    except OSError as err:
        why = err.strerror or errno.errorcode.get(err.errno or 0, type(err).__name__)
        raise LavaconvError(f"{cut(str(path))}: cannot write: {why}") from None


@contextmanager
def atomic_file(path: str | Path, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` that replaces it on success (never a directory
    nor one of ``inputs``); OS errors are user errors naming ``path``."""
    if not str(path).strip():
        raise LavaconvError("output file '': give a file name")
    target = Path(path)
    if target.is_dir():
        raise LavaconvError(f"{cut(str(path))}: is a directory; give a file name")
    if any(target.resolve() == Path(i).resolve() for i in inputs):
        raise LavaconvError(f"{cut(str(path))}: is an input of this command; give another name")
    with _os_errors(path):
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with _os_errors(path):
            tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def json_text(obj) -> str:
    """Sorted, indented JSON of ``obj`` (numpy values as plain numbers)."""
    return json.dumps(_plain(obj), indent=2, sort_keys=True) + "\n"


def write_json(path: str | Path, obj) -> None:
    Path(path).write_text(json_text(obj))


def write_text(path: str | Path, text: str, inputs: Iterable[str | Path] = ()) -> None:
    """Write ``text`` to the user's file ``path`` through :func:`atomic_file`."""
    with atomic_file(path, inputs) as tmp, _os_errors(path):
        tmp.write_text(text)
