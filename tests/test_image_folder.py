"""--data DIR: a folder with one subfolder of images per class, decoded with Pillow and cached."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from xpconv import cli
from xpconv.datasets import folder as folder_module, load_dataset, load_evaluation_data, load_image_folder

Image = pytest.importorskip("PIL.Image", reason="image folders need Pillow (pip install 'xpconv[images]')")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("XPCONV_DATA", str(tmp_path / "cache"))


def _write(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return array


def make_folder(root, classes=("cat", "dog"), per_class=5, size=(6, 7), rgb=False, seed=0):
    """PNGs of random pixels; returns {relative path: (array, label)}."""
    rng = np.random.default_rng(seed)
    written = {}
    for label, name in enumerate(classes):
        for i in range(per_class):
            shape = (*size, 3) if rgb else size
            a = rng.integers(0, 256, size=shape, dtype=np.uint8)
            written[f"{name}/{i:03d}.png"] = (_write(root / name / f"{i:03d}.png", a), label)
    return written


def _match(x, t, written, gray=True):
    """Every loaded image is one of the written ones, with its label and scaled by 1/255."""
    lookup = {a.tobytes(): label for a, label in written.values()}
    for img, label in zip(x, t):
        raw = np.rint(img * 255).astype(np.uint8)
        raw = raw[0] if gray else raw.transpose(1, 2, 0)
        assert lookup[raw.tobytes()] == label


def test_folder_layout_labels_and_scaling(tmp_path):
    root = tmp_path / "pets"
    written = make_folder(root, classes=("zebra", "ant", "cat"), per_class=5)
    (root / "notes.txt").write_text("not an image")          # a file in the root: skipped
    (root / "ant" / "README.md").write_text("skipped")      # not an image extension
    (root / ".hidden").mkdir()                              # hidden folder: not a class
    data = load_image_folder(root)
    (x, t), (xv, tv) = data
    assert data.classes == ("ant", "cat", "zebra")          # sorted by name, labels 0..K-1
    assert x.shape == (12, 1, 6, 7) and xv.shape == (3, 1, 6, 7) and x.dtype == np.float32
    assert np.bincount(tv).tolist() == [1, 1, 1]
    relabel = {"zebra": 2, "ant": 0, "cat": 1}
    written = {k: (a, relabel[k.split("/")[0]]) for k, (a, _) in written.items()}
    _match(np.concatenate([x, xv]), np.concatenate([t, tv]), written)
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_rgb_and_mixed_folders_become_rgb(tmp_path):
    root = tmp_path / "mixed"
    written = make_folder(root, per_class=3, rgb=True)
    gray = np.arange(42, dtype=np.uint8).reshape(6, 7)
    _write(root / "cat" / "gray.png", gray)
    (x, t), (xv, tv) = load_dataset(root, val_fraction=0.25)
    allx, allt = np.concatenate([x, xv]), np.concatenate([t, tv])
    assert allx.shape == (7, 3, 6, 7)
    is_gray = [np.array_equal(np.rint(img * 255).astype(np.uint8), np.stack([gray] * 3)) for img in allx]
    assert sum(is_gray) == 1 and allt[is_gray.index(True)] == 0     # gray copied into R, G and B
    rest = [i for i, g in enumerate(is_gray) if not g]
    _match(allx[rest], allt[rest], written, gray=False)


def test_alpha_is_dropped_and_palette_converted(tmp_path):
    root = tmp_path / "alpha"
    rgba = np.full((5, 5, 4), 200, np.uint8)
    _write(root / "a" / "1.png", rgba)
    _write(root / "a" / "2.png", rgba)
    (root / "b").mkdir()
    Image.fromarray(np.full((5, 5, 3), 9, np.uint8)).convert("P").save(root / "b" / "1.png")
    _write(root / "b" / "2.png", np.full((5, 5, 3), 9, np.uint8))
    x, t, classes = load_evaluation_data(root)
    assert x.shape == (4, 3, 5, 5) and classes == ("a", "b") and t.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(x[:2], 200 / 255, rtol=1e-6)


def test_images_of_different_sizes_name_two_files_or_resize(tmp_path):
    root = tmp_path / "sizes"
    make_folder(root, per_class=3, size=(6, 7))
    _write(root / "dog" / "big.png", np.zeros((9, 4), np.uint8))
    with pytest.raises(ValueError, match=r"cat/000.png is 7x6 \(WxH\) but dog/big.png is 4x9") as info:
        load_image_folder(root)
    assert "size=(H, W)" in str(info.value)
    (x, _), (xv, _) = load_image_folder(root, size=(8, 8))
    assert x.shape[1:] == (1, 8, 8) and len(x) + len(xv) == 7
    with pytest.raises(ValueError, match="size=\\(H, W\\)"):
        load_image_folder(root, size=(0, 8))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_image_is_one_clear_error_naming_it(tmp_path, damage):
    root = tmp_path / "bad"
    make_folder(root, per_class=3, size=(40, 40))
    bad = root / "dog" / "001.png"
    data = bad.read_bytes()
    bad.write_bytes(b"this is not a png" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ValueError) as info:
        load_image_folder(root, cache=False)
    msg = str(info.value)
    assert msg.startswith("load_image_folder: ") and str(bad) in msg and "\n" not in msg
    assert cli.main(["train", "--data", str(root), "--epochs", "1", "--quiet", "--device", "cpu"]) == 1


def test_sixteen_bit_images_are_refused(tmp_path):
    root = tmp_path / "deep"
    make_folder(root, per_class=2)
    Image.fromarray(np.full((6, 7), 40000, np.uint16)).save(root / "cat" / "wide.png")
    with pytest.raises(ValueError, match=r"wide.png: a 'I;16'|wide.png: a 'I'"):
        load_image_folder(root)


@pytest.mark.parametrize("layout, match", [
    ("missing", "expected a folder"),
    ("flat", "found no subfolders"),
    ("empty-class", "class folder 'empty' holds no images"),
])
def test_folder_layout_errors(tmp_path, layout, match):
    root = tmp_path / "d"
    if layout == "flat":
        _write(root / "1.png", np.zeros((5, 5), np.uint8))
    elif layout == "empty-class":
        make_folder(root, per_class=2)
        (root / "empty").mkdir()
    with pytest.raises(ValueError, match=match):
        load_image_folder(root)


def test_nested_subfolders_belong_to_their_class(tmp_path):
    root = tmp_path / "nested"
    make_folder(root, per_class=2)
    _write(root / "dog" / "more" / "x.png", np.zeros((6, 7), np.uint8))
    x, t, _ = load_evaluation_data(root)
    assert len(x) == 5 and t.tolist() == [0, 0, 1, 1, 1]


def test_cache_is_used_and_follows_changes(tmp_path, monkeypatch):
    root = tmp_path / "cached"
    make_folder(root, per_class=4)
    first = load_image_folder(root)
    files = list((tmp_path / "cache" / "image-folders").glob("*.npz"))
    assert len(files) == 1 and not [p for p in files[0].parent.iterdir() if "tmp" in p.name]

    calls = []
    real = folder_module.read_image_folder
    monkeypatch.setattr(folder_module, "read_image_folder", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = load_image_folder(root)
    assert calls == []                                            # read from the cache
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert again.classes == first.classes

    img = root / "dog" / "000.png"
    _write(img, np.full((6, 7), 7, np.uint8))
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    changed = load_image_folder(root)
    assert calls == [1]                                           # a changed image: read again
    assert any(np.allclose(v, 7 / 255) for v in np.concatenate([changed[0][0], changed[1][0]]))

    files = sorted((tmp_path / "cache" / "image-folders").glob("*.npz"), key=lambda p: p.stat().st_mtime_ns)
    files[-1].write_bytes(b"PK\x03\x04 damaged")                  # a damaged cache is ignored and rewritten
    load_image_folder(root)
    assert calls == [1, 1]
    load_image_folder(root)
    assert calls == [1, 1]


def test_pillow_missing_is_a_clear_error(tmp_path, monkeypatch):
    root = tmp_path / "p"
    make_folder(root, per_class=2)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"xpconv\[images\]"):
        load_image_folder(root, cache=False)


def test_train_on_a_folder_from_the_cli(tmp_path, capsys):
    root = tmp_path / "shapes"
    rng = np.random.default_rng(1)
    for label, name in enumerate(["dark", "light"]):
        for i in range(15):
            base = 40 if label == 0 else 200
            _write(root / name / f"{i}.png", (base + rng.integers(0, 30, size=(10, 10))).astype(np.uint8))
    code = cli.main(["train", "--data", str(root), "--epochs", "3", "--batch-size", "8", "--device", "cpu",
                     "--quiet", "--val-fraction", "0.2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "24 train / 6 test images (1, 10, 10)" in out
