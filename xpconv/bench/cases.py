"""The benchmark cases: what runs (SimpleConvNet, convolutions, a max pool) at which shapes.

Every case exists in two modes, ``train`` (forward + backward) and ``infer`` (forward
only), except the training-step cases (kind ``"step"``: forward + backward + an Adam
update), which exist in ``train`` mode only:

* ``step-b100``, ``step-b1``: SimpleConvNet's training step with Adam (lr 0.001) at batch
  100 and 1 (at batch 1 on a CPU the time still holds the arithmetic, mostly Adam's over
  the 434k parameters);
* ``step-host``: the host-cost proxy: the same layers 1 wide (``filter_num=1``,
  ``hidden_size=1``) at batch 1, the same op sequence with a few microseconds of
  arithmetic, so that its time is the host's (Python and dispatch).

``--quick`` keeps the SimpleConvNet batches and shrinks the batch of the large layer cases
(the labels show the shapes).  Inputs are float32, the same for every contender
(:func:`case_inputs`).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np


def conv_out(size: int, k: int, stride: int, pad: int) -> int:
    """Output length of a convolution/pooling window along one axis: (size + 2 pad - k) // stride + 1."""
    return (size + 2 * pad - k) // stride + 1


@dataclass(frozen=True)
class Case:
    """One benchmark case: what to run (kind + shapes) and in which mode.

    Args:
        base: name shared by both modes, e.g. ``"conv3x3"``.
        kind: ``"net"`` (SimpleConvNet), ``"step"`` (SimpleConvNet's step with Adam),
            ``"conv"`` or ``"pool"``.
        train: forward + backward (True) or forward only (False).
        params: shapes: ``N`` for a net; ``N, filter_num, hidden_size`` for a step;
            ``N, C, H, W, FN, K, stride, pad`` for a convolution; ``N, C, H, W, size,
            stride`` for a pool.
        quick: built by ``--quick`` (reduced batch).
    """

    base: str
    kind: str
    train: bool
    params: dict = field(default_factory=dict)
    quick: bool = False

    @property
    def mode(self) -> str:
        return "train" if self.train else "infer"

    @property
    def id(self) -> str:
        return f"{self.base}/{self.mode}"

    @property
    def host_cost(self) -> bool:
        """A step case whose layers are 1 wide: its time is the host's (Python and dispatch)."""
        return self.kind == "step" and all(self.params[k] == w for k, w in HOST_PROXY_WIDTHS.items())

    @property
    def label(self) -> str:
        p = self.params
        mode = "fwd+bwd" if self.train else "fwd"
        if self.kind == "net":
            what = "train step" if self.train else "predict"
            return f"SimpleConvNet {what}, batch {p['N']}"
        if self.kind == "step":
            if self.host_cost:
                return f"host cost: SimpleConvNet at width 1, train step + Adam, batch {p['N']}"
            return f"SimpleConvNet train step + Adam, batch {p['N']}"
        if self.kind == "conv":
            return (f"conv {p['K']}x{p['K']} {p['C']}->{p['FN']} s{p['stride']} p{p['pad']}, "
                    f"N={p['N']} {p['H']}x{p['W']}, {mode}")
        return (f"maxpool {p['size']}x{p['size']} s{p['stride']} on "
                f"({p['N']}, {p['C']}, {p['H']}, {p['W']}), {mode}")

    def out_hw(self) -> tuple[int, int]:
        """(OH, OW) of a convolution or pooling case."""
        p = self.params
        if self.kind == "conv":
            k, stride, pad = p["K"], p["stride"], p["pad"]
        else:
            k, stride, pad = p["size"], p["stride"], 0
        return conv_out(p["H"], k, stride, pad), conv_out(p["W"], k, stride, pad)

    def flops(self) -> int | None:
        """Analytic FLOPs (2 per multiply-add) of the work the case needs, or None.

        Convolutions: forward ``2 N OH OW FN C K K``, plus dW and dx when training
        (3x).  SimpleConvNet: conv forward (+ dW), both affines forward (+ dW, dx);
        the input image needs no gradient, so dx of the first conv is not counted
        (the textbook computes it anyway, uncredited).  Steps: the same gradient's
        FLOPs; Adam's update is not counted (about 10 memory-bound elementwise ops per
        parameter, a rate in bytes, not FLOPs); None for the host-cost proxy, whose
        arithmetic is not the point.  Pooling: None.
        """
        p = self.params
        if self.kind == "conv":
            oh, ow = self.out_hw()
            fwd = 2 * p["N"] * oh * ow * p["FN"] * p["C"] * p["K"] * p["K"]
            return 3 * fwd if self.train else fwd
        if self.kind == "net":
            return simple_convnet_flops(p["N"], BOOK_WIDTHS["filter_num"], BOOK_WIDTHS["hidden_size"], self.train)
        if self.kind == "step" and not self.host_cost:
            return simple_convnet_flops(p["N"], p["filter_num"], p["hidden_size"], train=True)
        return None

    def bytes_moved(self) -> int | None:
        """Minimal float32 traffic of the pooling case (read x, write y; and back), else None."""
        if self.kind != "pool":
            return None
        p = self.params
        oh, ow = self.out_hw()
        once = 4 * p["N"] * p["C"] * (p["H"] * p["W"] + oh * ow)
        return 2 * once if self.train else once


def simple_convnet_flops(n: int, filter_num: int, hidden_size: int, train: bool) -> int:
    """FLOPs of SimpleConvNet on (n, 1, 28, 28) images: conv 5x5 -> pool 2 -> affine -> affine (10).

    Forward: ``conv = 2 n 24 24 FN 25``, ``affine = 2 n (FN 12 12) hidden + 2 n hidden 10``;
    training: ``2 conv + 3 affine`` (no dx of the conv, whose input is the image).
    """
    conv = 2 * n * 24 * 24 * filter_num * 1 * 5 * 5
    affine = 2 * n * (filter_num * 12 * 12) * hidden_size + 2 * n * hidden_size * 10
    return 2 * conv + 3 * affine if train else conv + affine


BOOK_WIDTHS = dict(filter_num=30, hidden_size=100)      # SimpleConvNet as the book builds it
HOST_PROXY_WIDTHS = dict(filter_num=1, hidden_size=1)   # the same ops, next to no arithmetic
TRAIN_ONLY_KINDS = ("step",)                            # no infer twin

# (base name, kind, full-size params, batch used by --quick)
BASE_CASES = [
    ("net-b100", "net", dict(N=100), 100),
    ("net-b256", "net", dict(N=256), 256),
    ("conv3x3", "conv", dict(N=64, C=64, H=56, W=56, FN=64, K=3, stride=1, pad=1), 8),
    ("conv1x1", "conv", dict(N=64, C=64, H=56, W=56, FN=128, K=1, stride=1, pad=0), 8),
    ("conv3x3s2", "conv", dict(N=64, C=64, H=56, W=56, FN=128, K=3, stride=2, pad=1), 8),
    ("conv7x7s2", "conv", dict(N=32, C=3, H=224, W=224, FN=64, K=7, stride=2, pad=3), 4),
    ("maxpool", "pool", dict(N=64, C=64, H=56, W=56, size=2, stride=2), 8),
    ("step-b100", "step", dict(N=100, **BOOK_WIDTHS), 100),
    ("step-b1", "step", dict(N=1, **BOOK_WIDTHS), 1),
    ("step-host", "step", dict(N=1, **HOST_PROXY_WIDTHS), 1),
]


def build_cases(quick: bool = False) -> list[Case]:
    """All cases: every base case in train mode, then every one in infer mode (but the steps)."""
    cases = []
    for train in (True, False):
        for base, kind, params, quick_n in BASE_CASES:
            if not train and kind in TRAIN_ONLY_KINDS:
                continue
            p = dict(params, N=quick_n) if quick else dict(params)
            cases.append(Case(base, kind, train, p, quick))
    return cases


def split_patterns(patterns: str | None) -> list[str]:
    """``"a, b,"`` -> ``["a", "b"]``."""
    return [p.strip() for p in (patterns or "").split(",") if p.strip()]


def select_cases(cases: list[Case], patterns: str | None) -> list[Case]:
    """Cases whose id, base name or mode ("train"/"infer") matches a comma-separated pattern."""
    pats = split_patterns(patterns)
    if not pats:
        return list(cases)

    def hit(case):
        return any(fnmatch.fnmatchcase(key, p) for p in pats for key in (case.id, case.base, case.mode))

    chosen = [c for c in cases if hit(c)]
    if not chosen:
        raise SystemExit(f"no case matches {patterns!r}; try --list")
    return chosen


def find_case(case_id: str, quick: bool) -> Case:
    """The case with this id (as built with or without ``--quick``)."""
    return {c.id: c for c in build_cases(quick)}[case_id]


def case_inputs(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
    """Host float32 NumPy inputs of a case, the same for every contender.

    Returns:
        net, step: ``x: (N, 1, 28, 28)``, ``t: (N,)`` int64 labels; conv: ``x: (N, C, H, W)``,
        ``w: (FN, C, K, K)`` (He scale), ``b: (FN,)``, ``dy: (N, FN, OH, OW)``;
        pool: ``x: (N, C, H, W)``, ``dy: (N, C, OH, OW)``.
    """
    rng = np.random.default_rng(seed)
    p = case.params

    def randn(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)

    if case.kind in ("net", "step"):
        return {"x": rng.random((p["N"], 1, 28, 28), dtype=np.float32),
                "t": rng.integers(0, 10, size=p["N"]).astype(np.int64)}
    oh, ow = case.out_hw()
    if case.kind == "conv":
        fan_in = p["C"] * p["K"] * p["K"]
        return {"x": randn(p["N"], p["C"], p["H"], p["W"]),
                "w": randn(p["FN"], p["C"], p["K"], p["K"], scale=(2.0 / fan_in) ** 0.5),
                "b": randn(p["FN"], scale=0.1),
                "dy": randn(p["N"], p["FN"], oh, ow)}
    return {"x": randn(p["N"], p["C"], p["H"], p["W"]), "dy": randn(p["N"], p["C"], oh, ow)}
