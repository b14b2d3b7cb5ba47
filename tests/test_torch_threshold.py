"""cnorm.torch.TORCH_BELOW: inputs below the size threshold run torch's ATen op directly
(results, gradients and state bit-identical to torch.nn); the calibration's arithmetic."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import cnorm.torch as ct
from cnorm.benchmarks.calibrate import threshold_from_ratios


@pytest.fixture
def all_below(monkeypatch):
    for norm in ct.TORCH_BELOW:
        monkeypatch.setitem(ct.TORCH_BELOW, norm, (10**9, 10**9))


def assert_torch_bit_for_bit(ours, ref, x, grad):
    """Outputs (and their strides), autograd nodes, input gradients and the state in
    training and eval mode: equal to torch.nn's."""
    ours.to(x.dtype), ref.to(x.dtype)
    for mode in (True, False):
        ours.train(mode)
        ref.train(mode)
        xa, xb = (x.clone(memory_format=torch.preserve_format).requires_grad_(grad) for _ in range(2))
        with torch.set_grad_enabled(grad):
            ya, yb = ours(xa), ref(xb)
        assert torch.equal(ya, yb)
        assert ya.stride() == yb.stride()
        assert type(ya.grad_fn) is type(yb.grad_fn)
        if grad:
            ya.pow(2).sum().backward()
            yb.pow(2).sum().backward()
            assert torch.equal(xa.grad, xb.grad)
            for pa, pb in zip(ours.parameters(), ref.parameters()):
                assert torch.equal(pa.grad, pb.grad)
    for a, b in zip(ours.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


def data(shape, grad, memory_format=None):
    x = torch.randn(shape, dtype=torch.float64 if grad else torch.float32)
    return x if memory_format is None else x.contiguous(memory_format=memory_format)


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize(
    "name,args,shape",
    [("BatchNorm2d", (3,), (2, 3, 4, 4)), ("BatchNorm1d", (3,), (5, 3)), ("LayerNorm", (4,), (3, 4))],
)
def test_below_threshold_is_torch_bit_for_bit(all_below, name, args, shape, grad):
    assert_torch_bit_for_bit(getattr(ct, name)(*args), getattr(nn, name)(*args), data(shape, grad), grad)


CL = torch.channels_last


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize(
    "name,args,kwargs,shape,memory_format",
    [
        ("GroupNorm", (2, 4), {}, (3, 4, 5), None),
        ("GroupNorm", (2, 4), {}, (2, 4, 3, 3), CL),
        ("InstanceNorm1d", (4,), {"affine": True}, (4, 5), None),  # unbatched
        ("InstanceNorm2d", (4,), {"affine": True, "track_running_stats": True}, (2, 4, 3, 3), CL),
        ("InstanceNorm3d", (4,), {"track_running_stats": True, "momentum": None}, (2, 4, 2, 3, 2), None),
        ("RMSNorm", ((2, 4),), {}, (3, 2, 4), None),
        ("RMSNorm", (4,), {"eps": 1e-3, "elementwise_affine": False}, (3, 4), None),
        ("BatchNorm2d", (4,), {}, (2, 4, 3, 3), CL),
    ],
)
def test_new_norms_below_threshold_are_torch_bit_for_bit(
    all_below, name, args, kwargs, shape, memory_format, grad
):
    """GroupNorm, InstanceNorm, RMSNorm and channels_last below the threshold: torch's ATen
    op as torch's forward calls it."""
    ours, ref = getattr(ct, name)(*args, **kwargs), getattr(nn, name)(*args, **kwargs)
    assert_torch_bit_for_bit(ours, ref, data(shape, grad, memory_format), grad)


def test_calibration_sweeps_every_threshold():
    from cnorm.benchmarks.calibrate import SWEEPS, build_sweep_op

    assert set(SWEEPS) == set(ct.TORCH_BELOW)
    for cls, args, shapes, train, dtypes in SWEEPS.values():  # each runs (smallest shape)
        for grad in (False, True):
            for dtype in dtypes:
                build_sweep_op(ct, cls, args, shapes[0], grad, train, dtype)()


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_follow_the_half_thresholds(monkeypatch, dtype, grad):
    """A half input below its ``<norm>_half`` threshold runs torch's kernel (bit for bit),
    a float32 one above its ``<norm>`` threshold runs cnorm's, and the other way round."""
    pytest.importorskip("ml_dtypes") if dtype is torch.bfloat16 else None
    ours, ref = ct.LayerNorm(8), nn.LayerNorm(8)
    x = torch.randn(3, 8)
    for half_limit, float_limit in ((10**9, 0), (0, 10**9)):
        monkeypatch.setitem(ct.TORCH_BELOW, "layer_norm_half", (half_limit, half_limit))
        monkeypatch.setitem(ct.TORCH_BELOW, "layer_norm", (float_limit, float_limit))
        for t, torch_runs in ((x.to(dtype), bool(half_limit)), (x, bool(float_limit))):
            ours.to(t.dtype), ref.to(t.dtype)
            with torch.set_grad_enabled(grad), torch.profiler.profile() as prof:
                ya = ours(t.requires_grad_(grad))
            yb = ref(t)
            ran_aten = any(e.name == "aten::native_layer_norm" for e in prof.events())
            assert ran_aten == torch_runs
            if torch_runs:
                assert torch.equal(ya, yb)
            t.requires_grad_(False)


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
