"""End-to-end benchmarks: real architectures, plain torch.nn vs after ``cnorm.torch.convert``.

Shared by ``python -m cnorm bench --dropin`` (the model rows, :func:`run_models`) and
``bench/test_bench_models.py``. Imports torch lazily (importing this module needs neither
torch nor the compiled core); torchvision cannot be installed next to torch 2.13 here, so
the models are written out, small but of the real shapes:

``resnet18``    ResNet-18 (BasicBlocks 2-2-2-2, BatchNorm2d) on CIFAR-sized (32, 3, 32, 32)
``encoder``     a pre-norm Transformer encoder layer (d=512, 8 heads, MLP 2048, LayerNorm)
                on (8, 128, 512), attention by ``F.scaled_dot_product_attention``
``convnext``    3 ConvNeXt blocks (7x7 depthwise conv, LayerNorm over channels in NHWC,
                MLP 4x, GELU) on (16, 96, 28, 28)
``llama``       a Llama block (RMSNorm, attention, SwiGLU MLP; d=512) on (8, 128, 512)
``diffusion``   a conv stem and two GroupNorm(32) + SiLU ResBlocks, channels_last, (8, 128, 32, 32)

Steps: ``train`` (zero_grad, forward, ``out.square().mean()``, backward, SGD step) for
every model, ``infer`` (eval, ``torch.no_grad()``) for resnet18 and encoder. The norm
share (:func:`norm_share`) is the CPU time of the norms in torch's profiler over a few
steps of the plain torch model, in % of the step's total.
"""

from __future__ import annotations

import copy
import itertools
import sys
from collections.abc import Sequence
from typing import Callable

from .timing import SameThreads, TimingSettings, measure_interleaved

__all__ = ["MODELS", "MODEL_STEPS", "build_model_step", "norm_share", "run_models"]

MODELS = ("resnet18", "encoder", "convnext", "llama", "diffusion")
MODEL_STEPS = {"resnet18": ("train", "infer"), "encoder": ("train", "infer")}


def _nn():
    import torch

    return torch, torch.nn, torch.nn.functional


def _resnet18():
    torch, nn, F = _nn()

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)), inplace=True)
            out = self.bn2(self.conv2(out))
            out += x if self.down is None else self.down(x)
            return F.relu(out, inplace=True)

    layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)]
    return nn.Sequential(*layers), (32, 3, 32, 32)


def _attention(nn, F, d, heads):
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(d, 3 * d)
            self.out = nn.Linear(d, d)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v)
            return self.out(y.transpose(1, 2).reshape(b, t, d))

    return Attention()


def _pre_norm_block(norm, mlp, d):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``: a pre-norm transformer block."""
    torch, nn, F = _nn()

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = norm(), norm()
            self.attn = _attention(nn, F, d, 8)
            self.mlp = mlp

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    return Block()


def _encoder():
    torch, nn, F = _nn()
    d = 512
    mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
    return _pre_norm_block(lambda: nn.LayerNorm(d), mlp, d), (8, 128, d)


def _convnext():
    torch, nn, F = _nn()
    c = 96

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
            self.norm = nn.LayerNorm(c)
            self.mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))

        def forward(self, x):
            y = self.dwconv(x).permute(0, 2, 3, 1).contiguous()  # NHWC: LayerNorm over C
            return x + self.mlp(self.norm(y)).permute(0, 3, 1, 2)

    return nn.Sequential(Block(), Block(), Block()), (16, c, 28, 28)


def _llama():
    torch, nn, F = _nn()
    d, hidden = 512, 1376

    class SwiGLU(nn.Module):  # gate and up projections fused in one matmul
        def __init__(self):
            super().__init__()
            self.gate_up, self.down = nn.Linear(d, 2 * hidden, bias=False), nn.Linear(hidden, d, bias=False)

        def forward(self, h):
            gate, up = self.gate_up(h).chunk(2, dim=-1)
            return self.down(F.silu(gate) * up)

    return _pre_norm_block(lambda: nn.RMSNorm(d, eps=1e-6), SwiGLU(), d), (8, 128, d)


def _diffusion():
    torch, nn, F = _nn()
    c, groups = 128, 32

    class ResBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.GroupNorm(groups, c), nn.GroupNorm(groups, c)
            self.conv1 = nn.Conv2d(c, c, 3, padding=1)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            h = self.conv1(F.silu(self.norm1(x)))
            return x + self.conv2(F.silu(self.norm2(h)))

    # the conv stem (a UNet's conv_in) also keeps torch 2.13 off a crash: GroupNorm's CPU
    # backward segfaults on a channels_last input that does not require grad
    stem = nn.Conv2d(c, c, 3, padding=1)
    model = nn.Sequential(stem, ResBlock(), ResBlock()).to(memory_format=torch.channels_last)
    return model, (8, c, 32, 32)


_BUILDERS = {
    "resnet18": _resnet18,
    "encoder": _encoder,
    "convnext": _convnext,
    "llama": _llama,
    "diffusion": _diffusion,
}


def _model_and_input(name: str, seed: int = 0):
    torch = _nn()[0]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model, shape = _BUILDERS[name]()
        x = torch.randn(shape)
    if name == "diffusion":
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x


def build_model_step(
    name: str, step: str, impl: str, seed: int = 0, compiled: bool = False
) -> Callable[[], object]:
    """A zero-argument callable running one ``step`` (train / infer) of model ``name``
    with ``impl`` ("torch.nn": as built; "cnorm.torch": after ``cnorm.torch.convert``);
    same weights and data for both impls. ``compiled``: the model under
    ``torch.compile`` (Inductor; the first call compiles), the cnorm norms as the
    ``cnorm::`` custom ops in its graph."""
    torch = _nn()[0]
    model, x = _model_and_input(name, seed)
    if impl == "cnorm.torch":
        import cnorm.torch as ct

        model = ct.convert(copy.deepcopy(model))
    elif impl != "torch.nn":
        raise ValueError(f"unknown impl {impl!r}")
    module = model
    if compiled:
        model = torch.compile(model)
    if step == "infer":
        model.eval()
        no_grad = torch.no_grad

        def infer():
            with no_grad():
                return model(x)

        infer.model = module  # type: ignore[attr-defined]
        return infer
    if step != "train":
        raise ValueError(f"unknown step {step!r}")
    model.train()
    opt = torch.optim.SGD(module.parameters(), lr=1e-4)

    def train():
        opt.zero_grad(set_to_none=True)
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        return loss

    train.model = module  # type: ignore[attr-defined]
    return train


def norm_share(fn: Callable[[], object], model=None, steps: int = 3) -> float:
    """% of the CPU time of ``steps`` calls of ``fn`` spent in norms (torch's profiler):
    the forward of every norm module of ``model`` (a ``record_function`` range around
    it, inclusive) plus the backward ops named ``*norm*backward*``. A norm that torch
    composes of elementwise ops (RMSNorm on the CPU) has an unattributed backward: a
    lower bound there."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    label = "cnorm_bench::norm"
    handles, ranges = [], []
    for m in model.modules() if model is not None else ():
        if type(m).__name__.endswith(("Norm", "Norm1d", "Norm2d", "Norm3d")):

            def pre(module, args):
                ranges.append(record_function(label).__enter__())

            def post(module, args, output):
                ranges.pop().__exit__(None, None, None)

            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        fn()  # warm-up outside the profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                fn()
    finally:
        for h in handles:
            h.remove()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events if e.key != label)
    forward = sum(e.cpu_time_total for e in events if e.key == label)
    backward = sum(
        e.self_cpu_time_total for e in events if "norm" in e.key.lower() and "backward" in e.key.lower()
    )
    del torch
    return 100.0 * (forward + backward) / total if total > 0 else 0.0


def model_rows(names: Sequence[str] = MODELS):
    """``(model, step)`` pairs of the end-to-end suite."""
    return [(name, step) for name in names for step in MODEL_STEPS.get(name, ("train",))]


def run_models(
    names: Sequence[str],
    threads: Sequence[int],
    settings: TimingSettings,
    cnorm,
    torch,
    out=None,
    compiled: bool = False,
) -> dict:
    """Time every (model, step) at every thread count; print one row each (min of the
    interleaved reps, the ratio cnorm.torch / torch.nn, torch's norm share); return
    ``{(op, threads): [ratios]}`` for the summary line. ``compiled``: also each step
    under torch.compile, converted vs plain (Inductor's own norm kernels: the anchor)."""
    out = out if out is not None else sys.stdout
    ratios: dict[tuple, list[float]] = {}
    out.write(
        f"{'model':<10} {'step':<13} {'thr':>3} {'cnorm.torch ms':>15} {'torch.nn ms':>12} ratio  norm%\n"
    )
    with SameThreads(cnorm, torch) as thr:
        for n in threads:
            thr.set(n)
            for (name, step), comp in itertools.product(model_rows(names), (False, True)[: 1 + compiled]):
                impls = ("cnorm.torch", "torch.nn")
                if comp:
                    # a fresh dynamo cache per model: recompiling the code the models share
                    # turns on dynamic shapes, where Inductor 2.13 failed on the diffusion
                    # block ("cannot determine truth value of Relational") after four models
                    torch._dynamo.reset()
                fns = {impl: build_model_step(name, step, impl, compiled=comp) for impl in impls}
                meas = measure_interleaved(fns, settings)
                a, b = min(meas.times["cnorm.torch"]), min(meas.times["torch.nn"])
                share = norm_share(fns["torch.nn"], fns["torch.nn"].model)
                step = f"{step}+compile" if comp else step
                ratios.setdefault((f"model_{step}", n), []).append(a / b)
                out.write(
                    f"{name:<10} {step:<13} {n:>3} {a * 1e3:>15.3f} {b * 1e3:>12.3f} {a / b:5.2f} {share:6.1f}\n"
                )
                out.flush()
    return ratios
