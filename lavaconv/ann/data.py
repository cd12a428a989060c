"""Datasets for calibration and evaluation: ``digits``, ``fashion-mnist[:DIR]``, ``FILE.npz``.

Calibration items never overlap the evaluation items. Where a source has no separate
calibration part (``digits``, an npz without ``x_calib``), a fixed split (seed ``SPLIT_SEED``,
independent of ``seed``) sets one third of the items aside for calibration, so the evaluation
items stay the same whatever calibration subset ``seed`` draws.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lavaconv.errors import LavaconvError
from lavaconv.ir.npz import read_npz

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SPLIT_SEED = 0
MAX_LABEL = 2**31 - 1
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_INSTALL_HINT = "install Debian's dataset-fashion-mnist or give fashion-mnist:DIR"


@dataclass
class Dataset:
    """Evaluation and calibration items: x float32 (N, C, H, W), y int64 (N,)."""

    name: str
    x_eval: np.ndarray
    y_eval: np.ndarray
    x_calib: np.ndarray
    y_calib: np.ndarray


def batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray,
                                                                                np.ndarray]]:
    """Consecutive ``(x, y)`` slices of at most ``batch_size`` items."""
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size], y[start:start + batch_size]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (plain or gzip), as in LeCun's MNIST format."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise LavaconvError(f"{path}: cannot read IDX file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise LavaconvError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise LavaconvError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise LavaconvError(f"{path}: truncated or padded IDX data ({len(raw) - header} bytes, "
                            f"shape {shape} needs {expected})")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _real(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)


def _check(where: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (N, C, H, W) real, finite (integers kept as they are: :func:`load_dataset` makes
    float32 only the items it keeps) and ``y`` as int64 (N,), or a one-line error."""
    if x.ndim != 4:
        raise LavaconvError(f"{where}: images must have shape (N, C, H, W), got {x.shape}")
    if y.ndim != 1:
        raise LavaconvError(f"{where}: labels must have shape (N,), got {y.shape}")
    if len(x) != len(y):
        raise LavaconvError(f"{where}: {len(x)} items but {len(y)} labels")
    if not _real(x):
        raise LavaconvError(f"{where}: images have non-numeric dtype {x.dtype}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise LavaconvError(f"{where}: images contain NaN or inf")
    if not _real(y) or not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
        raise LavaconvError(f"{where}: labels are not integers")
    outside = (y < 0) | (y > MAX_LABEL)
    if outside.any():
        i = int(np.argmax(outside))
        raise LavaconvError(f"{where}: label {y[i]} of item {i} is not a class index in "
                            f"[0, {MAX_LABEL}]")
    return x, y.astype(np.int64)


def _split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (evaluation, calibration) index split, one third for calibration."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    return order[n // 3:], order[:n // 3]


def _digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    ev, cal = _split(len(x))
    return x[ev], d.target[ev], x[cal], d.target[cal]


def _idx(directory: Path, stem: str) -> tuple[Path, np.ndarray]:
    for path in (directory / stem, directory / (stem + ".gz")):
        if path.exists():
            return path, read_idx(path)
    raise LavaconvError(f"{directory}: missing {stem}[.gz] ({_INSTALL_HINT})")


def _fashion(directory: Path) -> tuple[np.ndarray, ...]:
    if not directory.is_dir():
        raise LavaconvError(f"{directory}: no such directory ({_INSTALL_HINT})")
    parts = []
    for split in ("t10k", "train"):
        x_path, x = _idx(directory, f"{split}-images-idx3-ubyte")
        y_path, y = _idx(directory, f"{split}-labels-idx1-ubyte")
        if x.ndim != 3:
            raise LavaconvError(f"{x_path}: images must have shape (N, H, W), got {x.shape}")
        parts += _check(f"{x_path.name} + {y_path.name}", x[:, None], y)  # bytes: x / 255
    return tuple(parts)


def _npz(path: Path) -> tuple[np.ndarray, ...]:
    arrays = read_npz(path)
    for key in ("x", "y"):
        if key not in arrays:
            raise LavaconvError(f"{path}: missing key {key!r} (needs x, y; optional x_calib, "
                                "y_calib)")
    if ("x_calib" in arrays) != ("y_calib" in arrays):
        raise LavaconvError(f"{path}: x_calib and y_calib must come together")
    x, y = _check(f"{path} (x, y)", arrays["x"], arrays["y"])
    if "x_calib" in arrays:
        return x, y, *_check(f"{path} (x_calib, y_calib)", arrays["x_calib"], arrays["y_calib"])
    ev, cal = _split(len(x))
    return x[ev], y[ev], x[cal], y[cal]


def _subset(x: np.ndarray, y: np.ndarray, n: int | None,
            seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` items, or (with a seed) ``n`` items drawn without replacement."""
    if n is None or n >= len(x):
        return x, y
    if seed is None:
        return x[:n], y[:n]
    idx = np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))
    return x[idx], y[idx]


def load_dataset(spec: str, *, n_eval: int | None = None, n_calib: int | None = None,
                 seed: int = 0) -> Dataset:
    """The first ``n_eval`` evaluation items and ``n_calib`` calibration items drawn with ``seed``.

    ``spec``: ``digits`` (scikit-learn 8x8, x/16), ``fashion-mnist[:DIR]`` (IDX files, x/255;
    evaluation = t10k in order, calibration = training set) or a ``.npz`` with ``x``, ``y`` and
    optionally ``x_calib``, ``y_calib`` (already preprocessed).
    """
    for field, n in (("n_eval", n_eval), ("n_calib", n_calib)):
        if n is not None and n < 1:
            raise LavaconvError(f"{spec}: {field} = {n}, must be at least 1")
    if spec == "digits":
        x_eval, y_eval, x_cal, y_cal = _digits()
    elif spec == "fashion-mnist" or spec.startswith("fashion-mnist:"):
        x_eval, y_eval, x_cal, y_cal = _fashion(Path(spec.partition(":")[2] or FASHION_MNIST_DIR))
    elif spec.endswith(".npz"):
        x_eval, y_eval, x_cal, y_cal = _npz(Path(spec))
    else:
        raise LavaconvError(f"--data {spec!r}: expected digits, fashion-mnist[:DIR] or a .npz file")
    if x_eval.shape[1:] != x_cal.shape[1:]:
        raise LavaconvError(f"{spec}: calibration items {x_cal.shape[1:]} and evaluation items "
                            f"{x_eval.shape[1:]} differ in shape")
    for what, part in (("evaluation", x_eval), ("calibration", x_cal)):
        if len(part) == 0:
            raise LavaconvError(f"{spec}: empty {what} set (give more items, or x_calib/y_calib "
                                "in an npz)")
    x_eval, y_eval = _subset(x_eval, y_eval, n_eval, None)
    x_cal, y_cal = _subset(x_cal, y_cal, n_calib, seed)
    scale = 255.0 if spec.startswith("fashion-mnist") else 1.0
    return Dataset(spec, _float(x_eval, scale), y_eval, _float(x_cal, scale), y_cal)


def _float(x: np.ndarray, scale: float) -> np.ndarray:
    """Images as float32, divided by ``scale`` (once the items are chosen: converting all
    60,000 training images first costs more than the rest of loading)."""
    x = x.astype(np.float32, copy=False)
    return x / np.float32(scale) if scale != 1.0 else x
