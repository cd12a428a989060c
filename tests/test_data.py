"""Data loaders and their one-line errors."""

import gzip
import os

import numpy as np
import pytest
from sklearn.datasets import load_digits

from lavaconv.ann.data import FASHION_MNIST_DIR, batches, load_dataset, read_idx
from lavaconv.errors import LavaconvError


def write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def fake_fashion(directory, n_test=6, n_train=9, gz=True):
    """IDX files in Fashion-MNIST's layout; returns (directory, {name: array})."""
    directory.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("t10k", n_test), ("train", n_train)):
        arrays[f"{split}-images"] = rng.integers(0, 256, (n, 28, 28))
        arrays[f"{split}-labels"] = rng.integers(0, 10, n)
        for kind in ("images", "labels"):
            name = f"{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
            write_idx(directory / (name + (".gz" if gz else "")), arrays[f"{split}-{kind}"], gz)
    return directory, arrays


def rows(x: np.ndarray) -> list[bytes]:
    return [r.tobytes() for r in x.reshape(len(x), -1)]


def test_digits_is_a_fixed_partition_of_sklearn_digits():
    d = load_dataset("digits")
    ref = load_digits()
    assert d.x_eval.shape[1:] == (1, 8, 8) and d.x_eval.dtype == np.float32
    assert d.y_eval.dtype == np.int64
    pairs = sorted(zip(rows(np.concatenate([d.x_eval, d.x_calib]) * 16),
                       np.concatenate([d.y_eval, d.y_calib]).tolist(), strict=True))
    expected = sorted(zip(rows(ref.images.astype(np.float32)), ref.target.tolist(), strict=True))
    assert pairs == expected
    assert len(d.x_calib) == 1797 // 3
    other = load_dataset("digits", n_calib=50, seed=3)
    np.testing.assert_array_equal(other.x_eval, d.x_eval)  # evaluation items do not move
    assert set(rows(other.x_calib)) <= set(rows(d.x_calib)) and len(other.x_calib) == 50


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_dir(tmp_path, gz):
    directory, arrays = fake_fashion(tmp_path / "f", gz=gz)
    d = load_dataset(f"fashion-mnist:{directory}", n_eval=4, n_calib=5, seed=1)
    np.testing.assert_allclose(d.x_eval[:, 0], arrays["t10k-images"][:4] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(d.y_eval, arrays["t10k-labels"][:4])
    train = {r: int(label) for r, label in zip(rows((arrays["train-images"] / 255.0)
                                                     .astype(np.float32)),
                                                arrays["train-labels"], strict=True)}
    assert [train[r] for r in rows(d.x_calib[:, 0])] == d.y_calib.tolist()
    assert len(set(rows(d.x_calib))) == 5
    again = load_dataset(f"fashion-mnist:{directory}", n_eval=4, n_calib=5, seed=1)
    np.testing.assert_array_equal(again.x_calib, d.x_calib)


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason="no Fashion-MNIST")
def test_real_fashion_mnist():
    d = load_dataset("fashion-mnist", n_calib=100)
    assert d.x_eval.shape == (10000, 1, 28, 28) and d.x_calib.shape == (100, 1, 28, 28)
    assert 0.0 <= d.x_eval.min() and d.x_eval.max() <= 1.0
    assert np.bincount(d.y_eval).tolist() == [1000] * 10  # the test set is balanced


def test_npz_with_and_without_calibration(tmp_path):
    x = np.random.default_rng(1).random((30, 3, 4, 4), dtype=np.float32)
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(30) % 3)
    d = load_dataset(str(tmp_path / "a.npz"))
    assert len(d.x_eval) == 20 and len(d.x_calib) == 10
    assert not set(rows(d.x_eval)) & set(rows(d.x_calib))
    assert set(rows(d.x_eval)) | set(rows(d.x_calib)) == set(rows(x))
    np.savez(tmp_path / "b.npz", x=x, y=np.arange(30) % 3, x_calib=x[:5], y_calib=np.zeros(5))
    d = load_dataset(str(tmp_path / "b.npz"), n_eval=7)
    np.testing.assert_array_equal(d.x_eval, x[:7])
    np.testing.assert_array_equal(d.x_calib, x[:5])
    assert d.y_calib.dtype == np.int64


def test_batches_cover_everything_in_order():
    x, y = np.arange(10 * 4).reshape(10, 1, 2, 2), np.arange(10)
    parts = list(batches(x, y, 4))
    assert [len(b) for b, _ in parts] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b for b, _ in parts]), x)
    np.testing.assert_array_equal(np.concatenate([c for _, c in parts]), y)


GOOD_X, GOOD_Y = np.zeros((3, 1, 2, 2)), np.zeros(3)


@pytest.mark.parametrize("arrays,message", [
    ({"x": GOOD_X}, "missing key 'y'"),
    ({"x": np.zeros((3, 2, 2)), "y": GOOD_Y}, r"shape \(N, C, H, W\)"),
    ({"x": GOOD_X, "y": np.zeros((3, 1))}, r"labels must have shape \(N,\)"),
    ({"x": np.full((3, 1, 2, 2), np.nan), "y": GOOD_Y}, "NaN or inf"),
    ({"x": np.full((3, 1, 2, 2), np.inf), "y": GOOD_Y}, "NaN or inf"),
    ({"x": GOOD_X.astype(str), "y": GOOD_Y}, "non-numeric"),
    ({"x": GOOD_X, "y": np.zeros(2)}, "3 items but 2 labels"),
    ({"x": GOOD_X, "y": np.array([0.5, 1, 2])}, "not integers"),
    ({"x": GOOD_X, "y": np.array(["a", "b", "c"])}, "not integers"),
    ({"x": GOOD_X, "y": GOOD_Y, "x_calib": GOOD_X}, "must come together"),
    ({"x": GOOD_X, "y": GOOD_Y, "x_calib": np.zeros((2, 1, 3, 3)), "y_calib": np.zeros(2)},
     "differ in shape"),
    ({"x": GOOD_X, "y": GOOD_Y, "x_calib": GOOD_X, "y_calib": np.zeros(2)},
     r"\(x_calib, y_calib\): 3 items but 2 labels"),
    ({"x": np.zeros((0, 1, 2, 2)), "y": np.zeros(0)}, "empty evaluation set"),
    ({"x": np.zeros((1, 1, 2, 2)), "y": np.zeros(1)}, "empty calibration set"),
    ({"x": np.array([None] * 3), "y": GOOD_Y}, "cannot read npz"),  # pickled object array
])
def test_npz_errors(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(LavaconvError, match=message) as err:
        load_dataset(str(path))
    assert "\n" not in str(err.value) and "bad.npz" in str(err.value)


def test_file_and_spec_errors(tmp_path):
    (tmp_path / "trunc.npz").write_bytes(b"PK\x03\x04garbage")
    np.save(tmp_path / "array.npy", GOOD_X)
    (tmp_path / "array.npy").rename(tmp_path / "plain.npz")
    cases = {
        str(tmp_path / "trunc.npz"): "trunc.npz: cannot read npz",
        str(tmp_path / "plain.npz"): "plain.npz: cannot read npz",
        str(tmp_path / "none.npz"): "none.npz: no such file",
        f"fashion-mnist:{tmp_path / 'nodir'}": "nodir: no such directory",
        "cifar": "expected digits",
    }
    for spec, message in cases.items():
        with pytest.raises(LavaconvError, match=message):
            load_dataset(spec)
    with pytest.raises(LavaconvError, match="n_eval = 0"):
        load_dataset("digits", n_eval=0)


@pytest.mark.parametrize("damage,message", [
    (lambda raw: raw[:-10], "t10k-images-idx3-ubyte: truncated or padded"),
    (lambda raw: raw[:6], "t10k-images-idx3-ubyte: truncated IDX header"),
    (lambda raw: b"\x01\x02\x03\x04" + raw[4:], "t10k-images-idx3-ubyte: not an IDX"),
    (None, "missing t10k-images-idx3-ubyte"),
])
def test_idx_errors(tmp_path, damage, message):
    directory, _ = fake_fashion(tmp_path / "f", gz=False)
    path = directory / "t10k-images-idx3-ubyte"
    if damage is None:
        path.unlink()
    else:
        path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(LavaconvError, match=message) as err:
        load_dataset(f"fashion-mnist:{directory}")
    assert "\n" not in str(err.value)


def test_idx_gzip_and_shape_errors(tmp_path):
    directory, _ = fake_fashion(tmp_path / "f", gz=True)
    path = directory / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(LavaconvError, match="t10k-images-idx3-ubyte.gz: cannot read IDX"):
        load_dataset(f"fashion-mnist:{directory}")
    write_idx(path, np.zeros((6, 28)), gz=True)
    with pytest.raises(LavaconvError, match=r"t10k-images.*shape \(N, H, W\)"):
        load_dataset(f"fashion-mnist:{directory}")
    write_idx(path, np.zeros((5, 28, 28)), gz=True)
    with pytest.raises(LavaconvError, match="5 items but 6 labels"):
        load_dataset(f"fashion-mnist:{directory}")
    np.testing.assert_array_equal(read_idx(path), np.zeros((5, 28, 28)))
