"""``python -m cnorm bench --calibrate``: the input sizes below which the cnorm.torch
drop-ins should run torch's kernels (``cnorm.torch.TORCH_BELOW``).

For each norm, with and without a gradient, and at each thread count, a sweep of input
sizes times the drop-in with no threshold (every size on the cnorm kernels) against
``torch.nn`` (interleaved reps, minimum per callable): in float32 for the ``<norm>``
keys, in bfloat16 and float16 (module and input) for the ``<norm>_half`` ones. The
threshold is the smallest size of the sweep from which the drop-in is no slower at every
larger size, thread count and dtype: below it, a Python call (and for a gradient the
node of a Python autograd Function) costs more than the kernel saves. Prints the table and the line that sets the
measured thresholds. Imports torch lazily (like :mod:`cnorm.benchmarks.torch_cases`).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from typing import Callable

from .timing import SameThreads, TimingSettings, measure_interleaved

__all__ = ["SWEEPS", "build_sweep_op", "calibrate", "threshold_from_ratios"]

_ROWS = ((1, 768), (4, 768), (16, 768), (64, 768), (256, 768), (1024, 768))
_BN_SHAPES = (
    (1, 64, 2, 2),
    (1, 64, 4, 4),
    (1, 64, 8, 8),
    (4, 64, 8, 8),
    (4, 64, 16, 16),
    (16, 64, 16, 16),
    (16, 64, 32, 32),
)
_FLOAT = ("float32",)
_HALF = ("bfloat16", "float16")  # a half threshold: never slower in either
# norm -> (module class name, constructor args, input shapes of the sweep (smallest
# first), training mode, dtypes of the module and input); the keys of TORCH_BELOW
SWEEPS: dict[str, tuple[str, tuple, tuple[tuple[int, ...], ...], bool, tuple[str, ...]]] = {
    name + suffix: (cls, args, shapes, train, dtypes)
    for suffix, dtypes in (("", _FLOAT), ("_half", _HALF))
    for name, cls, args, shapes, train in (
        ("batch_norm", "BatchNorm2d", (64,), _BN_SHAPES, True),
        ("batch_norm_eval", "BatchNorm2d", (64,), _BN_SHAPES, False),
        ("layer_norm", "LayerNorm", (768,), _ROWS, True),
        ("group_norm", "GroupNorm", (32, 64), _BN_SHAPES, True),
        ("instance_norm", "InstanceNorm2d", (64,), _BN_SHAPES, True),
        ("rms_norm", "RMSNorm", (768,), _ROWS, True),
    )
}


def build_sweep_op(
    ns, cls: str, args: tuple, shape: tuple, grad: bool, train: bool = True, dtype: str = "float32"
) -> Callable[[], object]:
    """``m(x)`` under no_grad (training mode: BatchNorm updates its statistics), or
    ``m(x).backward(dy)`` with x and the parameters requiring grad (grads reset to None);
    ``train=False``: the module in eval mode. Module and input in ``dtype``."""
    import torch

    g = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    m = getattr(ns, cls)(*args).train(train).to(dt)
    x = torch.randn(shape, generator=g).to(dt)
    if not grad:
        no_grad = torch.no_grad

        def fwd():
            with no_grad():
                return m(x)

        return fwd
    x.requires_grad_(True)
    dy = torch.randn(shape, generator=g).to(dt)
    params = list(m.parameters())

    def fwd_bwd():
        x.grad = None
        for p in params:
            p.grad = None
        m(x).backward(dy)

    return fwd_bwd


def threshold_from_ratios(sizes: Sequence[int], ratios: Sequence[float]) -> int:
    """The smallest ``sizes[i]`` with ``ratios[j] <= 1`` for every ``j >= i`` (sizes
    ascending); one past the largest size (``sizes[-1] + 1``) when the last is above 1."""
    threshold = sizes[-1] + 1
    for size, ratio in zip(reversed(sizes), reversed(ratios)):
        if ratio > 1.0:
            break
        threshold = size
    return threshold


def calibrate(threads: Sequence[int], settings: TimingSettings, cnorm, torch, out=None, dtypes=None) -> dict:
    """Measure the sweeps; print one row per (norm, dtype, grad, shape, threads) and the
    thresholds; return ``{norm: (no-grad threshold, grad threshold)}``. ``dtypes``: only
    these of each sweep (the keys with none of them are left out); None: all."""
    import cnorm.torch as ct

    out = out if out is not None else sys.stdout
    saved = dict(ct.TORCH_BELOW)
    result: dict[str, list[int]] = {}
    out.write("calibration: cnorm.torch (no size threshold) vs torch.nn, min of interleaved reps\n")
    out.write(
        f"{'norm':<20} {'dtype':<8} {'grad':<5} {'shape':<18} {'numel':>8} {'thr':>3} "
        f"{'cnorm us':>9} {'torch us':>9} ratio\n"
    )
    try:
        for norm in ct.TORCH_BELOW:
            ct.TORCH_BELOW[norm] = (0, 0)
        with SameThreads(cnorm, torch) as thr:
            for norm, (cls, args, shapes, train, swept) in SWEEPS.items():
                swept = tuple(d for d in swept if dtypes is None or d in dtypes)
                if not swept:
                    continue
                result[norm] = [0, 0]
                sizes = [_numel(s) for s in shapes]
                for grad in (False, True):
                    worst = [0.0] * len(shapes)  # over dtypes and thread counts
                    for dtype, n in itertools.product(swept, threads):
                        thr.set(n)
                        for i, shape in enumerate(shapes):
                            fns = {
                                impl: build_sweep_op(ns, cls, args, shape, grad, train, dtype)
                                for impl, ns in _impls(torch)
                            }
                            meas = measure_interleaved(fns, settings)
                            a, b = min(meas.times["cnorm.torch"]), min(meas.times["torch.nn"])
                            worst[i] = max(worst[i], a / b)
                            out.write(
                                f"{norm:<20} {dtype:<8} {str(grad):<5} {str(shape):<18} "
                                f"{sizes[i]:>8} {n:>3} {a * 1e6:>9.1f} {b * 1e6:>9.1f} {a / b:5.2f}\n"
                            )
                            out.flush()
                    result[norm][grad] = threshold_from_ratios(sizes, worst)
    finally:
        ct.TORCH_BELOW.update(saved)
    thresholds = {k: (v[0], v[1]) for k, v in result.items()}
    out.write(f"thresholds (numel, (no grad, grad)): {thresholds}\n")
    out.write(f"to use them: cnorm.torch.TORCH_BELOW.update({thresholds})\n")
    return thresholds


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _impls(torch):
    import cnorm.torch as ct

    return (("cnorm.torch", ct), ("torch.nn", torch.nn))
