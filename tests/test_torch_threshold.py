"""cnorm.torch.TORCH_BELOW: inputs below the size threshold run torch's ATen op directly
(results, gradients and state bit-identical to torch.nn); the calibration's arithmetic."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import cnorm.torch as ct
from cnorm.benchmarks.calibrate import threshold_from_ratios


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize(
    "name,args,shape",
    [("BatchNorm2d", (3,), (2, 3, 4, 4)), ("BatchNorm1d", (3,), (5, 3)), ("LayerNorm", (4,), (3, 4))],
)
def test_below_threshold_is_torch_bit_for_bit(monkeypatch, name, args, shape, grad):
    for norm in ct.TORCH_BELOW:
        monkeypatch.setitem(ct.TORCH_BELOW, norm, (10**9, 10**9))
    ours, ref = getattr(ct, name)(*args), getattr(nn, name)(*args)
    x = torch.randn(shape, dtype=torch.float64 if grad else torch.float32)
    ours.to(x.dtype), ref.to(x.dtype)
    for mode in (True, False):
        ours.train(mode)
        ref.train(mode)
        xa, xb = x.clone().requires_grad_(grad), x.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            ya, yb = ours(xa), ref(xb)
        assert torch.equal(ya, yb)
        assert type(ya.grad_fn) is type(yb.grad_fn)
        if grad:
            ya.pow(2).sum().backward()
            yb.pow(2).sum().backward()
            assert torch.equal(xa.grad, xb.grad)
    for a, b in zip(ours.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


def test_threshold_from_ratios():
    sizes = [10, 100, 1000, 10000]
    assert threshold_from_ratios(sizes, [1.5, 1.2, 0.9, 0.8]) == 1000
    assert threshold_from_ratios(sizes, [0.9, 1.2, 0.9, 0.8]) == 1000  # never slower above
    assert threshold_from_ratios(sizes, [0.9, 0.9, 0.9, 0.8]) == 10
    assert threshold_from_ratios(sizes, [0.9, 0.9, 0.9, 1.1]) == 10001


def test_bench_model_selection():
    from cnorm.benchmarks import cli

    assert cli._models(None) == ["resnet18", "encoder", "convnext", "llama", "diffusion"]
    assert cli._models("bn2d_tiny,ln_token") == []
    assert cli._models("resnet18,ln_token") == ["resnet18"]
    assert cli._case_spec("resnet18,ln_token") == "ln_token"
    assert cli._case_spec("llama") == ""


@pytest.mark.slow
def test_bench_models_run_both_impls():
    """Every end-to-end step runs, converted and plain (seconds per model)."""
    from cnorm.benchmarks import models as M

    for name, step in M.model_rows():
        for impl in ("cnorm.torch", "torch.nn"):
            M.build_model_step(name, step, impl)()
    f = M.build_model_step("resnet18", "infer", "torch.nn")
    assert 0 < M.norm_share(f, f.model, steps=1) < 100
