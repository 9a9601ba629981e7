"""The book's chapter 7 scripts as a reader runs them on xpconv, with only the imports changed.

Each test does with the API what one script of *Deep Learning from Scratch*
(``oreilly-japan/deep-learning-from-scratch``, ``ch07/``) does, without the book's code:
relative file names in the working folder, the book's constructor arguments, the
parameters read back as host arrays and indexed like NumPy's.

Covered elsewhere, not repeated here:

* ``gradient_check.py``: tests/test_gradcheck.py::test_books_gradient_check_is_meaningful_on_a_float32_model
  (float32 model, (1, 1) label column, the mean absolute differences it prints);
* a book-style pickle of SimpleConvNet's parameters, protocols 2-5, NumPy 1 and 2:
  tests/test_book_pickle.py::test_book_pickle_loads_into_the_network;
* ``Convolution(w, 0)``: tests/test_conv_constant_bias.py;
* the offline loader's arguments (``normalize``, ``flatten``, ``one_hot_label``): tests/test_datasets.py.

With a checkout of the book's repository, ``XPCONV_BOOK_DIR=/path/to/deep-learning-from-scratch``
also runs the four scripts themselves (imports rewritten, nothing else but a shorter
training) and compares the test accuracy of the book's two ``.pkl`` files under
xpconv with the book's own code.
"""
from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xpconv
from tests.naive import conv2d_naive
from xpconv import DeepConvNet, SimpleConvNet, Trainer
from xpconv.datasets import load_bundled_mnist
from xpconv.layers import Convolution

BOOK_CONV = {"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1}

#: The book's DeepConvNet parameters (ch08/deep_convnet.py), as its save_params pickles them.
BOOK_DEEP_SHAPES = {
    "W1": (16, 1, 3, 3), "W2": (16, 16, 3, 3), "W3": (32, 16, 3, 3), "W4": (32, 32, 3, 3),
    "W5": (64, 32, 3, 3), "W6": (64, 64, 3, 3), "W7": (64 * 4 * 4, 50), "W8": (50, 10),
    "b1": (16,), "b2": (16,), "b3": (32,), "b4": (32,), "b5": (64,), "b6": (64,), "b7": (50,), "b8": (10,),
}
BOOK_DEEP_PADS = (1, 1, 1, 2, 1, 1)


def book_pickle(path: Path, shapes: dict, seed: int, scale: float = 0.1) -> dict:
    """Write what the book's ``save_params`` writes: ``pickle.dump`` of a dict of float64 arrays."""
    rng = np.random.default_rng(seed)
    params = {k: scale * rng.standard_normal(s) for k, s in shapes.items()}
    with open(path, "wb") as f:
        pickle.dump(params, f)
    return params


# ------------------------------------------------------------------ visualize_filter.py

def test_visualize_filter(tmp_path, monkeypatch):
    """SimpleConvNet() with the book's defaults; its W1 shown filter by filter; then
    ``load_params("params.pkl")`` from the working folder (here an xpconv save under
    that name, as train_convnet.py leaves it)."""
    monkeypatch.chdir(tmp_path)
    SimpleConvNet(seed=1).save_params("params.pkl")        # what train_convnet.py leaves behind
    trained = SimpleConvNet(seed=1)

    network = SimpleConvNet(seed=0)
    filters = network.params["W1"]
    assert filters.shape == (30, 1, 5, 5)                   # FN, C, FH, FW = filters.shape
    assert isinstance(filters[0, 0], np.ndarray) and filters[0, 0].shape == (5, 5)
    before = np.array(filters)
    network.load_params("params.pkl")
    after = network.params["W1"]
    assert not np.array_equal(after, before)
    for key in ("W1", "b1", "W2", "b2", "W3", "b3"):
        np.testing.assert_array_equal(network.params[key], trained.params[key])

    figure = pytest.importorskip("matplotlib.figure", reason="matplotlib draws the filters")
    fig = figure.Figure()
    for i in range(after.shape[0]):                          # filter_show: one imshow per filter
        ax = fig.add_subplot(4, 8, i + 1, xticks=[], yticks=[])
        ax.imshow(after[i, 0], cmap="gray_r", interpolation="nearest")
    np.testing.assert_array_equal(np.asarray(fig.axes[3].images[0].get_array()), after[3, 0])


# ---------------------------------------------------------------------- apply_filter.py

def test_apply_filter(tmp_path, monkeypatch):
    """The book's params.pkl (a pickle of float64 arrays) into the default float32
    SimpleConvNet; each of 16 filters of W1 as ``Convolution(w, 0)`` on a grayscale
    image of shape (1, 1, H, W), float32 as matplotlib's imread gives a PNG."""
    monkeypatch.chdir(tmp_path)
    shapes = {"W1": (30, 1, 5, 5), "b1": (30,), "W2": (30 * 12 * 12, 100), "b2": (100,),
              "W3": (100, 10), "b3": (10,)}
    saved = book_pickle(tmp_path / "params.pkl", shapes, seed=3)
    network = SimpleConvNet(input_dim=(1, 28, 28), conv_param=BOOK_CONV, hidden_size=100,
                            output_size=10, weight_init_std=0.01, seed=0)
    network.load_params("params.pkl")
    img = np.random.default_rng(4).random((9, 11), dtype=np.float32)
    img = img.reshape(1, 1, *img.shape)

    for i in range(16):
        w = network.params["W1"][i]
        b = 0
        w = w.reshape(1, *w.shape)
        conv_layer = Convolution(w, b)
        out = conv_layer.forward(img)
        out = out.reshape(out.shape[2], out.shape[3])
        assert out.shape == (5, 7) and out.dtype == np.float32
        expected = conv2d_naive(img, saved["W1"][i:i + 1])[0, 0]   # the file's float64 filter
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------- train_convnet.py

def test_train_convnet(tmp_path, monkeypatch):
    """The book's Trainer call on the offline loader (``load_bundled_mnist`` has the book's
    ``load_mnist`` arguments), one accuracy per epoch for the plot, then
    ``save_params("params.pkl")`` that the other scripts read back."""
    monkeypatch.chdir(tmp_path)
    (x_train, t_train), (x_test, t_test) = load_bundled_mnist(flatten=False)
    x_train, t_train = x_train[:500], t_train[:500]          # the script's own "reduce the data" lines
    x_test, t_test = x_test[:200], t_test[:200]
    max_epochs = 2
    network = SimpleConvNet(input_dim=(1, 28, 28), conv_param=BOOK_CONV, hidden_size=100,
                            output_size=10, weight_init_std=0.01, seed=0)
    trainer = Trainer(network, x_train, t_train, x_test, t_test,
                      epochs=max_epochs, mini_batch_size=100,
                      optimizer="Adam", optimizer_param={"lr": 0.001},
                      evaluate_sample_num_per_epoch=1000, verbose=False, seed=0)
    trainer.train()
    network.save_params("params.pkl")

    x = np.arange(max_epochs)                                  # plt.plot(x, trainer.train_acc_list)
    assert len(trainer.train_acc_list) == len(trainer.test_acc_list) == len(x)
    assert all(isinstance(a, float) and 0.0 <= a <= 1.0 for a in trainer.train_acc_list + trainer.test_acc_list)
    assert len(trainer.train_loss_list) == max_epochs * 5
    assert np.mean(trainer.train_loss_list[-3:]) < np.mean(trainer.train_loss_list[:3])

    again = SimpleConvNet(seed=5).load_params("params.pkl")
    np.testing.assert_array_equal(again.predict(x_test[:10]), network.predict(x_test[:10]))


# ------------------------------------------------------- ch08/deep_convnet_params.pkl

def _reference_deep_predict(p: dict, x: np.ndarray) -> np.ndarray:
    """The book's DeepConvNet at test time, in float64 NumPy (no xpconv): conv-relu-conv-relu-pool
    x3, affine-relu, dropout (x 0.5), affine, dropout (x 0.5)."""
    def conv(x, w, b, pad):
        xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        win = np.lib.stride_tricks.sliding_window_view(xp, w.shape[2:], axis=(2, 3))  # N, C, OH, OW, FH, FW
        return np.einsum("ncijkl,fckl->nfij", win, w) + b[:, None, None]

    def pool(x):
        n, c, h, w = x.shape
        return x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))

    for i in range(6):
        x = np.maximum(conv(x, p[f"W{i + 1}"], p[f"b{i + 1}"], BOOK_DEEP_PADS[i]), 0)
        if i % 2:
            x = pool(x)
    x = np.maximum(x.reshape(len(x), -1) @ p["W7"] + p["b7"], 0) * 0.5
    return (x @ p["W8"] + p["b8"]) * 0.5


def test_books_deep_convnet_pickle(tmp_path):
    """A pickle of the book's DeepConvNet parameters loads into DeepConvNet and predicts the
    book's test-time scores (the book's dropout scales by 1 - ratio at test time)."""
    saved = book_pickle(tmp_path / "deep_convnet_params.pkl", BOOK_DEEP_SHAPES, seed=6, scale=0.2)
    network = DeepConvNet(dtype="float64", seed=0).load_params(tmp_path / "deep_convnet_params.pkl")
    x = np.random.default_rng(7).random((3, 1, 28, 28))
    scores = network.predict(x, train_flg=False)
    np.testing.assert_allclose(scores, _reference_deep_predict(saved, x), rtol=1e-10, atol=1e-12)
    t = np.argmax(_reference_deep_predict(saved, x), axis=1)
    assert network.accuracy(x, t) == 1.0


# ------------------------------------------------- opt-in: the book's own scripts and files

BOOK_DIR = os.environ.get("XPCONV_BOOK_DIR")
needs_book = pytest.mark.skipif(
    not BOOK_DIR, reason="set XPCONV_BOOK_DIR to a checkout of oreilly-japan/deep-learning-from-scratch")

#: What a reader changes: the book's imports -> xpconv's, and the loader -> the offline one.
IMPORTS = {
    "from dataset.mnist import load_mnist": "from xpconv.datasets import load_bundled_mnist as load_mnist",
    "from simple_convnet import SimpleConvNet": "from xpconv import SimpleConvNet",
    "from common.trainer import Trainer": "from xpconv import Trainer",
    "from common.layers import Convolution": "from xpconv.layers import Convolution",
}


def _run(script: Path, cwd: Path, pythonpath: str):
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": pythonpath}
    return subprocess.run([sys.executable, script.name], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


@needs_book
def test_the_books_chapter7_scripts_run_with_only_their_imports_changed(tmp_path):
    book = Path(BOOK_DIR)
    work = tmp_path / "ch07"                                  # ../dataset/lena_gray.png from here
    work.mkdir()
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "lena_gray.png").write_bytes((book / "dataset" / "lena_gray.png").read_bytes())
    (work / "params.pkl").write_bytes((book / "ch07" / "params.pkl").read_bytes())
    xpconv_root = str(Path(xpconv.__file__).resolve().parents[1])
    for name in ("gradient_check.py", "visualize_filter.py", "apply_filter.py", "train_convnet.py"):
        source = (book / "ch07" / name).read_text(encoding="utf-8")
        changed = [line for line in source.splitlines() if line.strip() in IMPORTS]
        for old, new in IMPORTS.items():
            source = re.sub(rf"^{re.escape(old)}$", new, source, flags=re.M)
        assert changed and not re.search(r"^from (simple_convnet|common|dataset)", source, re.M), name
        if name == "train_convnet.py":                        # 1 of the 20 epochs keeps this short
            source = source.replace("max_epochs = 20", "max_epochs = 1")
        (work / name).write_text(source, encoding="utf-8")
        result = _run(work / name, work, xpconv_root)
        assert result.returncode == 0, (name, result.stderr[-3000:])
        if name == "gradient_check.py":                       # "W1 1.9e-11" ... one line per key
            diffs = dict(line.split() for line in result.stdout.splitlines())
            assert sorted(diffs) == ["W1", "W2", "W3", "b1", "b2", "b3"]
            assert all(float(v) < 1e-2 for v in diffs.values()), diffs
    SimpleConvNet(seed=0).load_params(work / "params.pkl")          # train_convnet.py saved it


_BOOK_ACCURACY = """
import sys, numpy as np
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/ch07", sys.argv[1] + "/ch08"]
from simple_convnet import SimpleConvNet
from deep_convnet import DeepConvNet
x, t = np.load(sys.argv[2])["x"], np.load(sys.argv[2])["t"]
for net, f in ((SimpleConvNet(), "/ch07/params.pkl"), (DeepConvNet(), "/ch08/deep_convnet_params.pkl")):
    net.load_params(sys.argv[1] + f)
    print(net.accuracy(x, t))
"""


@needs_book
def test_the_books_pkl_files_give_the_books_test_accuracy(tmp_path):
    """The official MNIST test set (the bundled one, both splits) through the book's two
    files, with xpconv (float64 and float32) and with the book's own code."""
    book = Path(BOOK_DIR)
    (x_a, t_a), (x_b, t_b) = load_bundled_mnist(flatten=False)
    x, t = np.concatenate([x_a, x_b]), np.concatenate([t_a, t_b])
    assert len(x) == 10000
    np.savez(tmp_path / "test.npz", x=x, t=t)
    result = subprocess.run([sys.executable, "-c", _BOOK_ACCURACY, str(book), str(tmp_path / "test.npz")],
                            capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    book_simple, book_deep = (float(v) for v in result.stdout.split())
    for dtype in ("float64", "float32"):
        simple = SimpleConvNet(dtype=dtype, seed=0).load_params(book / "ch07" / "params.pkl")
        deep = DeepConvNet(dtype=dtype, seed=0).load_params(book / "ch08" / "deep_convnet_params.pkl")
        tol = 0 if dtype == "float64" else 5e-4                 # float32: a few images may flip
        assert abs(simple.accuracy(x, t) - book_simple) <= tol, (dtype, simple.accuracy(x, t), book_simple)
        assert abs(deep.accuracy(x, t) - book_deep) <= tol, (dtype, deep.accuracy(x, t), book_deep)


def test_save_and_load_params_default_to_the_books_file_name(tmp_path, monkeypatch):
    """The book's ``save_params()`` / ``load_params()`` take ``file_name="params.pkl"``."""
    monkeypatch.chdir(tmp_path)
    net = xpconv.SimpleConvNet(input_dim=(1, 8, 8), hidden_size=4, seed=0)
    net.save_params()
    assert (tmp_path / "params.pkl").is_file()
    other = xpconv.SimpleConvNet(input_dim=(1, 8, 8), hidden_size=4, seed=1).load_params()
    for key in net.params:
        np.testing.assert_array_equal(xpconv.to_numpy(other.params[key]), xpconv.to_numpy(net.params[key]))
