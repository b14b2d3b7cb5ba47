"""Helpers of the tests against torch (test_torch_*.py); importing this skips the importing
module when torch is not installed."""

import numpy as np
import pytest
from conftest import assert_close

torch = pytest.importorskip("torch")
nn = torch.nn
TF = torch.nn.functional

TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}

BN_INPUTS = {
    "1d_NC": ("BatchNorm1d", (6, 5)),
    "1d_NCL": ("BatchNorm1d", (4, 5, 7)),
    "2d": ("BatchNorm2d", (3, 5, 4, 6)),
    "3d": ("BatchNorm3d", (2, 5, 3, 2, 4)),
}

BN_CONFIGS = {
    "default": {},
    "momentum_none": {"momentum": None},
    "momentum_0.3": {"momentum": 0.3},
    "eps_1e-2": {"eps": 1e-2},
    "noaffine": {"affine": False},
    "nobias": {"bias": False},
    "notrack": {"track_running_stats": False},
    "notrack_momentum_none": {"track_running_stats": False, "momentum": None},
    "noaffine_notrack": {"affine": False, "track_running_stats": False},
}

LN_CONFIGS = {
    "default": {},
    "nobias": {"bias": False},
    "noaffine": {"elementwise_affine": False},
    "noaffine_nobias": {"elementwise_affine": False, "bias": False},
    "eps_1e-2": {"eps": 1e-2},
}


def to_np(t):
    return None if t is None else t.detach().numpy()


def tt(a, grad=False):
    t = torch.from_numpy(np.array(a))
    return t.requires_grad_(grad)


def torch_bn(name, C, dtype, **kw):
    return getattr(torch.nn, name)(C, dtype=TORCH_DTYPE[np.dtype(dtype)], **kw)


def torch_twin(norm, case, dtype, **kw):
    """(the torch.nn module computing what ``norm``'s module computes, the one of its
    parameters and buffers): BatchNormReLU is BatchNorm then ReLU, AddLayerNorm a LayerNorm
    of the sum (see torch_forward)."""
    kw["dtype"] = TORCH_DTYPE[np.dtype(dtype)]
    if norm.family == "group":
        tm = nn.GroupNorm(case.arg, case.shape[1], **kw)
    elif case.arg is not None:
        tm = getattr(nn, norm.torch_twin)(case.arg, **kw)
    else:
        tm = getattr(nn, norm.torch_twin)(case.shape[1], **kw)
    return (nn.Sequential(tm, nn.ReLU()) if norm.family == "batch_relu" else tm), tm


def torch_forward(norm, tm, xt, rt=None):
    return tm(xt + rt) if norm.family == "add_layer" else tm(xt)


def randomize_params(tm, rng):
    with torch.no_grad():
        if tm.weight is not None:
            tm.weight.copy_(torch.from_numpy(rng.normal(1.0, 0.5, tm.weight.shape)))
        if tm.bias is not None:
            tm.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.5, tm.bias.shape)))


def sync_params(m, tm, rng):
    """Random parameters, the same in the cnorm module m and the torch module tm."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            p = getattr(tm, name, None)
            if p is not None:
                v = rng.normal(1.0 if name == "weight" else 0.0, 0.5, p.shape)
                p.copy_(torch.from_numpy(v))
                getattr(m, name)[...] = v


def numpy_state(tm):
    return {k: v.detach().numpy().copy() for k, v in tm.state_dict().items()}


def compare_buffers(m, tm, dtype, msg=""):
    for name in ("running_mean", "running_var"):
        tv = getattr(tm, name, None)
        if tv is None:
            assert getattr(m, name) is None, (msg, name)
        else:
            assert_close(getattr(m, name), to_np(tv), dtype, err_msg=f"{name} {msg}")


def compare_state(m, tm, dtype, msg=""):
    """Running statistics and num_batches_tracked."""
    compare_buffers(m, tm, dtype, msg)
    if tm.num_batches_tracked is None:
        assert m.num_batches_tracked is None
    else:
        assert m.num_batches_tracked == int(tm.num_batches_tracked), msg


def compare_both_modes(m, tm, x):
    """Eval then training forward of the cnorm module m and the torch module tm on the float32
    x: the same output and the same running statistics afterwards."""
    for mode in (False, True):
        m.train(mode)
        tm.train(mode)
        assert_close(m(x), to_np(tm(torch.from_numpy(x))), np.float32, err_msg=f"training={mode}")
        compare_state(m, tm, np.float32)


def compare_grads(m, tm, dtype, scale, msg):
    """The parameter gradients of the cnorm module m against those of the torch module tm."""
    for name in ("weight", "bias"):
        p = getattr(tm, name, None)
        grad = getattr(m, name + "_grad", None)
        if p is None:
            assert getattr(m, name, None) is None and grad is None, (msg, name)
            continue
        assert grad.dtype == dtype and grad.shape == tuple(p.shape), (msg, name)
        assert_close(
            getattr(m, name + "_grad"), to_np(p.grad), dtype, scale=scale, err_msg=f"{msg} {name}_grad"
        )


def torch_step(tm, x, dy):
    """Forward + backward through torch; returns (y, dx) as NumPy."""
    xt = tt(x, True)
    for p in tm.parameters():
        p.grad = None
    y = tm(xt)
    y.backward(tt(dy))
    return to_np(y), to_np(xt.grad)


def run_parity_steps(rng, m, tm, steps, shape, dtype, red, factor, holder=None, buffers=False):
    """Train / eval steps of the cnorm module m and the torch module tm on the same data:
    outputs, input gradients, parameter gradients (to ``factor`` * sum |dy| over ``red``)
    and, with ``buffers``, the running statistics and the count of the torch module
    ``holder`` (tm by default) that holds the parameters and buffers."""
    holder = tm if holder is None else holder
    for step in steps:
        m.train(step == "train")
        tm.train(step == "train")
        x = rng.normal(rng.normal(), rng.uniform(0.5, 3), shape).astype(dtype)
        dy = rng.normal(size=shape).astype(dtype)
        m.zero_grad()
        y = m(x)
        dx = m.backward(dy)
        ty, tdx = torch_step(tm, x, dy)
        assert_close(y, ty, dtype, err_msg=f"{step} y")
        assert_close(dx, tdx, dtype, scale=np.abs(tdx).max(), err_msg=f"{step} dx")
        compare_grads(m, holder, dtype, np.abs(dy).sum(axis=red) * factor, step)
        if buffers:
            compare_buffers(m, holder, dtype, step)
            if m.num_batches_tracked is not None:
                assert m.num_batches_tracked == int(holder.num_batches_tracked)
    assert list(m.state_dict()) == list(holder.state_dict())


class ReachModel(nn.Module):
    """Every norm spec the drop-in added beyond BatchNorm/LayerNorm, each layout once:
    BatchNorm2d and GroupNorm on channels_last, InstanceNorm2d (running statistics) on
    channels_last, GroupNorm and InstanceNorm1d contiguous, RMSNorm (torch.compile,
    torch.export and TorchScript tests)."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1, dtype=dtype)
        self.bn = nn.BatchNorm2d(8, dtype=dtype)
        self.gn_last = nn.GroupNorm(2, 8, dtype=dtype)
        self.inorm_last = nn.InstanceNorm2d(8, affine=True, track_running_stats=True, dtype=dtype)
        self.gn = nn.GroupNorm(4, 8, dtype=dtype)
        self.inorm = nn.InstanceNorm1d(8, affine=True, dtype=dtype)
        self.rms = nn.RMSNorm(64, dtype=dtype)

    def forward(self, x):
        x = self.conv(x).contiguous(memory_format=torch.channels_last)
        x = self.gn_last(self.bn(x)).relu()  # channels_last in and out
        x = self.gn(self.inorm_last(x))  # InstanceNorm's output is contiguous, as torch's
        return self.rms(self.inorm(x.flatten(2)))  # (N, 8, 64)


#: the cnorm:: ops a converted ReachModel's graph holds (sorted)
REACH_OPS = [
    "cnorm.batch_norm.default",
    "cnorm.group_norm.default",
    "cnorm.group_norm_channels_last.default",
    "cnorm.instance_norm.default",
    "cnorm.instance_norm_channels_last.default",
    "cnorm.rms_norm.default",
]
