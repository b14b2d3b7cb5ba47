"""The drop-in's lean eager path: calls without autograd run the cnorm kernels at every
size (no aten norm op, tiny inputs included), and the NumPy views of parameters and
buffers it keeps between calls follow every way torch code changes them."""

import copy
import pickle

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from test_torch_reach import make_pair

import cnorm.torch as ct

pytest.importorskip("ml_dtypes")  # bfloat16 on cnorm
HALF = (torch.bfloat16, torch.float16)

F32, F64 = torch.float32, torch.float64


def norm_ops(fn, *args):
    """The aten ops with "norm" in their name that fn(*args) runs (torch's norm kernels)."""
    with torch.profiler.profile() as prof:
        fn(*args)
    return sorted({e.name for e in prof.events() if e.name.startswith("aten::") and "norm" in e.name})


def pair(cls_name, *args, dtype=F32, **kwargs):
    """(cnorm.torch module, torch.nn module) with the same random parameters and buffers."""
    return make_pair(cls_name, dtype, *args, **kwargs)


# (class, constructor args, kwargs, input shape): all tiny (the per-call cost dominates)
TINY = [
    ("BatchNorm1d", (8,), {}, (2, 8)),
    ("BatchNorm1d", (4,), {}, (2, 4, 3)),
    ("BatchNorm2d", (8,), {}, (1, 8, 2, 2)),
    ("BatchNorm3d", (4,), {}, (2, 4, 1, 2, 2)),
    ("LayerNorm", (16,), {}, (1, 1, 16)),
    ("LayerNorm", ((2, 8),), {"bias": False}, (3, 2, 8)),
    ("GroupNorm", (2, 8), {}, (1, 8, 3)),
    ("InstanceNorm1d", (4,), {"affine": True, "track_running_stats": True}, (2, 4, 5)),
    ("InstanceNorm2d", (4,), {}, (1, 4, 2, 3)),
    ("RMSNorm", (16,), {}, (2, 16)),
    ("RMSNorm", (16,), {"eps": None}, (1, 16)),
]
CL = {4: torch.channels_last, 5: torch.channels_last_3d}


def _tol(dtype):
    return {"rtol": 0, "atol": 0} if dtype in HALF else {"rtol": 1e-5, "atol": 1e-5}


@pytest.mark.parametrize("dtype", [F32, F64, *HALF], ids=str)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls,args,kwargs,shape", TINY, ids=[f"{c}-{s}" for c, _, _, s in TINY])
def test_no_grad_runs_cnorm_with_no_size_threshold(no_size_threshold, cls, args, kwargs, shape, train, dtype):
    """With TORCH_BELOW at 0 a tiny no-grad call runs cnorm's kernels (no ATen norm op),
    with torch.nn's results and state (test_torch_threshold: the calls below it)."""
    ours, ref = pair(cls, *args, dtype=dtype, **kwargs)
    ours.train(train)
    ref.train(train)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=F64).to(dtype)
    layouts = [x] + ([x.contiguous(memory_format=CL[x.dim()])] if x.dim() in CL and dtype not in HALF else [])
    for xi in layouts:
        out = {}
        with torch.no_grad():
            assert norm_ops(lambda: out.setdefault("y", ours(xi))) == []  # noqa: B023
            y_ref = ref(xi)
        if dtype in HALF:  # torch's half result is not the reference: both against float64
            continue
        torch.testing.assert_close(out["y"], y_ref, **_tol(dtype))
        assert out["y"].is_contiguous(memory_format=torch.channels_last) == y_ref.is_contiguous(
            memory_format=torch.channels_last
        )
    for a, b in zip(ours.state_dict().values(), ref.state_dict().values()):
        if dtype not in HALF:
            torch.testing.assert_close(a, b, **_tol(dtype))


def _ln(values=1.0, n=8):
    m = ct.LayerNorm(n)
    with torch.no_grad():
        m.weight.fill_(values)
    return m


def _expect(m, x):
    """torch's LayerNorm of x with m's current parameters."""
    return torch.nn.functional.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)


X = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_views_follow_in_place_changes():
    m = _ln()
    m(X)
    m.weight.mul_(3)
    m.bias.add_(1)
    torch.testing.assert_close(m(X), _expect(m, X))


@torch.no_grad()
def test_views_follow_a_replaced_parameter():
    m = _ln()
    m(X)
    m.weight = nn.Parameter(torch.full((8,), 2.5))
    torch.testing.assert_close(m(X), _expect(m, X))
    m.bias = None
    torch.testing.assert_close(m(X), _expect(m, X))


@torch.no_grad()
def test_views_follow_data_assignment():
    m = _ln()
    m(X)
    m.weight.data = torch.full((8,), -1.5)  # new memory, same Parameter object
    torch.testing.assert_close(m(X), _expect(m, X))


@torch.no_grad()
def test_a_shrunk_parameter_at_the_same_address_raises_torchs_error():
    m = _ln()
    m(X)
    m.weight.data = m.weight.data[:4]  # same address, 4 elements: torch raises
    with pytest.raises(RuntimeError, match="normalized_shape"):
        m(X)


@torch.no_grad()
def test_views_follow_dtype_moves_and_state_dict_loads():
    m = _ln()
    m(X)
    m.to(F64)
    x64 = X.to(F64)
    torch.testing.assert_close(m(x64), _expect(m, x64))
    m.float()
    torch.testing.assert_close(m(X), _expect(m, X))
    m.load_state_dict({"weight": torch.full((8,), 0.25), "bias": torch.full((8,), 4.0)})
    torch.testing.assert_close(m(X), _expect(m, X))
    # a half input with float32 parameters (mixed precision), then bfloat16 parameters
    for dtype in HALF:
        xh = X.to(dtype)
        torch.testing.assert_close(m(xh), _expect(m, xh.float()).to(dtype), atol=2e-2, rtol=2e-2)
        m.to(dtype)
        torch.testing.assert_close(m(xh).float(), _expect(m, xh).float(), atol=5e-2, rtol=5e-2)
        m.float()


def test_copies_and_pickles_do_not_share_views():
    m = _ln(2.0)
    with torch.no_grad():
        m(X)
    for twin in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        with torch.no_grad():
            twin.weight.fill_(-3.0)
            torch.testing.assert_close(twin(X), _expect(twin, X))
            torch.testing.assert_close(m(X), _expect(m, X))  # the original's are its own
        assert float(m.weight.detach()[0]) == 2.0


def test_running_statistics_through_the_views_and_replaced_buffers():
    ours, ref = pair("BatchNorm2d", 4)
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for step in range(3):
            torch.testing.assert_close(ours(x + step), ref(x + step))
        for m in (ours, ref):
            m.running_mean = torch.full((4,), 0.5)  # a new buffer object
            m.reset_parameters()  # running stats reset in place, weight/bias refilled
        for step in range(2):
            torch.testing.assert_close(ours(x * step), ref(x * step))
        ours.eval()
        ref.eval()
        torch.testing.assert_close(ours(x), ref(x))
    for a, b in zip(ours.state_dict().values(), ref.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_gradients_after_parameter_changes(no_size_threshold):
    """With autograd: the weight view in the backward is the one of this call."""
    ours, ref = pair("LayerNorm", 8)
    assert norm_ops(lambda: ours(X.clone().requires_grad_()).sum().backward()) == []
    ours.zero_grad(set_to_none=True)
    for step in range(3):
        xa = (X + step).requires_grad_()  # leaves: X + step is a new tensor
        xb = (X + step).requires_grad_()
        ours(xa).pow(2).sum().backward()
        ref(xb).pow(2).sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad)
        for pa, pb in zip(ours.parameters(), ref.parameters()):
            torch.testing.assert_close(pa.grad, pb.grad)
        with torch.no_grad():  # an optimizer step, in place
            for m in (ours, ref):
                for p in m.parameters():
                    p -= 0.1 * p.grad
                    p.grad = None
