"""cnorm.torch: drop-in torch.nn BatchNorm/LayerNorm on the cnorm kernels, and convert()."""

import copy
import inspect
import io
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from _internals import bench_main, dropin_entry_points, saved_stats, torch_bench_cases

import cnorm
import cnorm.torch as ct

F32, F64 = torch.float32, torch.float64
TOL = {F32: {"rtol": 2e-5, "atol": 2e-5}, F64: {"rtol": 1e-12, "atol": 1e-12}}

BN_SHAPES = [
    ("BatchNorm1d", (6, 3)),
    ("BatchNorm1d", (4, 3, 7)),
    ("BatchNorm2d", (3, 3, 4, 5)),
    ("BatchNorm3d", (2, 3, 2, 3, 4)),
]


def close(a, b, dtype, what=""):
    a = a.detach() if isinstance(a, torch.Tensor) else torch.as_tensor(a)
    b = b.detach() if isinstance(b, torch.Tensor) else torch.as_tensor(b)
    torch.testing.assert_close(a.to(F64), b.to(F64), msg=lambda m: f"{what}: {m}", **TOL[dtype])


@pytest.fixture(autouse=True)
def no_size_threshold(monkeypatch):
    """The tiny test inputs run on cnorm (no size threshold to torch's kernels)."""
    for norm in ct.TORCH_BELOW:
        monkeypatch.setitem(ct.TORCH_BELOW, norm, (0, 0))


@pytest.fixture
def kernel_calls(monkeypatch):
    """Count the cnorm kernel entry points called (to tell the cnorm path from torch's)."""
    calls = {"bn": 0, "bn_bwd": 0, "ln": 0, "ln_bwd": 0, "inputs": []}

    def wrap(key, owner, name, input_pos):
        orig = getattr(owner, name)

        def f(*args, **kwargs):
            calls[key] += 1
            calls["inputs"].append(args[input_pos])
            return orig(*args, **kwargs)

        monkeypatch.setattr(owner, name, f)

    for key, (owner, name, input_pos) in dropin_entry_points().items():
        wrap(key, owner, name, input_pos)
    return calls


def make_pair(name, *args, **kwargs):
    """(cnorm.torch module, torch.nn module) with equal random parameters and buffers."""
    ours = getattr(ct, name)(*args, **kwargs)
    ref = getattr(nn, name)(*args, **kwargs)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5 + 1)
        if getattr(ours, "running_var", None) is not None:
            ours.running_mean.copy_(torch.randn(ours.running_mean.shape, generator=g))
            ours.running_var.uniform_(0.5, 2.0, generator=g)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def data(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=F64) * 2 + 0.5).to(dtype)
    dy = torch.randn(shape, generator=g, dtype=F64).to(dtype)
    return x, dy


def run_steps(m, xs, dy):
    """Forward/backward of each x; returns outputs, input grads, and the final grads."""
    ys, dxs = [], []
    for x in xs:
        x = x.clone().requires_grad_(True)
        y = m(x)
        y.backward(dy)
        ys.append(y.detach())
        dxs.append(x.grad)
    grads = [None if p.grad is None else p.grad.clone() for p in m.parameters()]
    return ys, dxs, grads


def assert_same_state(ours, ref, dtype):
    sd_o, sd_r = ours.state_dict(), ref.state_dict()
    assert list(sd_o) == list(sd_r)
    for k in sd_r:
        if k == "num_batches_tracked":
            assert sd_o[k].item() == sd_r[k].item()
            assert sd_o[k].dtype == torch.long
        else:
            close(sd_o[k], sd_r[k], dtype, k)


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("name", ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm"])
def test_subclass_and_signature(name):
    ours, theirs = getattr(ct, name), getattr(nn, name)
    assert issubclass(ours, theirs) and ours.__name__ == theirs.__name__
    assert inspect.signature(ours) == inspect.signature(theirs)
    m, r = ours(4), theirs(4)
    assert isinstance(m, theirs)
    assert repr(m) == repr(r)
    assert list(m.state_dict()) == list(r.state_dict())
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in r.named_parameters()]
    assert [n for n, _ in m.named_buffers()] == [n for n, _ in r.named_buffers()]
    m.load_state_dict(r.state_dict())
    r.load_state_dict(m.state_dict())


@pytest.mark.parametrize("name", ["BatchNorm2d", "LayerNorm"])
def test_constructor_arguments(name):
    cls = getattr(ct, name)
    m = cls(5, dtype=F64, device="cpu", bias=False)
    assert m.weight.dtype == F64 and m.bias is None
    assert "bias" not in m.state_dict()
    if name == "BatchNorm2d":
        m = cls(5, 1e-3, None, False, False)
        assert m.weight is None and m.running_mean is None and m.num_batches_tracked is None
        assert m.momentum is None and m.eps == 1e-3
        m = cls(5, device="meta")
        assert m.weight.is_meta
    else:
        m = cls([2, 3], 1e-3, False)
        assert m.normalized_shape == (2, 3) and m.weight is None


# --------------------------------------------------------------------------- batch norm parity


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,shape", BN_SHAPES, ids=[f"{n}-{len(s)}d" for n, s in BN_SHAPES])
def test_batchnorm_matches_torch(name, shape, dtype, kernel_calls):
    ours, ref = make_pair(name, shape[1], dtype=dtype)
    xs = [data(shape, dtype, seed)[0] for seed in range(3)]
    dy = data(shape, dtype, 9)[1]
    for mode in ("train", "eval"):
        ours.train(mode == "train")
        ref.train(mode == "train")
        y_o, dx_o, g_o = run_steps(ours, xs, dy)
        y_r, dx_r, g_r = run_steps(ref, xs, dy)
        for a, b in zip(y_o + dx_o + g_o, y_r + dx_r + g_r):
            close(a, b, dtype, mode)
        assert_same_state(ours, ref, dtype)
    assert kernel_calls["bn"] == 6 and kernel_calls["bn_bwd"] == 6
    # zero-copy: the kernels saw views of the torch tensors
    assert all(isinstance(a, np.ndarray) for a in kernel_calls["inputs"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"momentum": None},
        {"affine": False},
        {"bias": False},
        {"track_running_stats": False},
        {"momentum": 0.3, "eps": 1e-3},
        {"affine": False, "track_running_stats": False},
    ],
    ids=repr,
)
def test_batchnorm_options_match_torch(kwargs, kernel_calls):
    dtype = F64
    ours, ref = make_pair("BatchNorm2d", 3, dtype=dtype, **kwargs)
    shape = (4, 3, 3, 3)
    xs = [data(shape, dtype, seed)[0] for seed in range(3)]
    dy = data(shape, dtype, 9)[1]
    for mode in ("train", "eval", "train"):
        ours.train(mode == "train")
        ref.train(mode == "train")
        flat_ours = [a for part in run_steps(ours, xs, dy) for a in part]
        flat_ref = [b for part in run_steps(ref, xs, dy) for b in part]
        for a, b in zip(flat_ours, flat_ref):
            close(a, b, dtype, f"{kwargs} {mode}")
        assert_same_state(ours, ref, dtype)
    assert kernel_calls["bn"] == 9


def test_batchnorm_momentum_none_cumulative_average():
    m = ct.BatchNorm1d(2, momentum=None, dtype=F64)
    xs = [data((5, 2), F64, s)[0] for s in range(4)]
    with torch.no_grad():
        for x in xs:
            m(x)
    assert m.num_batches_tracked.item() == 4
    close(m.running_mean, torch.stack([x.mean(0) for x in xs]).mean(0), F64)
    close(m.running_var, torch.stack([x.var(0) for x in xs]).mean(0), F64)


def test_batchnorm_running_stats_updated_in_place():
    m = ct.BatchNorm2d(3)
    rm, rv, nbt = m.running_mean, m.running_var, m.num_batches_tracked
    ptrs = (rm.data_ptr(), rv.data_ptr())
    m(data((4, 3, 2, 2), F32)[0])
    assert m.running_mean is rm and m.running_var is rv and m.num_batches_tracked is nbt
    assert (rm.data_ptr(), rv.data_ptr()) == ptrs
    assert nbt.item() == 1 and not torch.equal(rm, torch.zeros(3))


def test_batchnorm_saves_input_and_weight_only():
    m = ct.BatchNorm2d(3)
    x = data((4, 3, 2, 2), F32)[0].requires_grad_()
    y = m(x)
    saved = y.grad_fn.saved_tensors
    assert len(saved) == 2
    assert saved[0].data_ptr() == x.data_ptr() and saved[1] is m.weight
    assert type(y.grad_fn).__name__ == "BatchNormFunctionBackward"
    # mean / invstd: float64 arrays of shape (C,), as cnorm.functional returns them
    mean, invstd, training = saved_stats(y.grad_fn)
    assert mean.dtype == np.float64 and invstd.shape == (3,) and training


def test_batchnorm_no_grad_and_inference_mode(kernel_calls):
    ours, ref = make_pair("BatchNorm2d", 3)
    x = data((4, 3, 2, 2), F32)[0].requires_grad_()
    with torch.no_grad():
        y = ours(x)
        close(y, ref(x), F32)
    assert y.grad_fn is None and not y.requires_grad
    ours.eval()
    ref.eval()
    with torch.inference_mode():
        close(ours(x), ref(x), F32)
    assert_same_state(ours, ref, F32)
    assert kernel_calls["bn"] == 2 and kernel_calls["bn_bwd"] == 0


def test_only_input_requires_grad():
    ours, ref = make_pair("BatchNorm1d", 3, dtype=F64)
    ours.requires_grad_(False)
    ref.requires_grad_(False)
    x = data((5, 3), F64)[0]
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours(xa).sum().backward()  # grad_output: an expanded (stride-0) tensor
    ref(xb).sum().backward()
    close(xa.grad, xb.grad, F64)
    assert ours.weight.grad is None


def test_only_parameters_require_grad():
    ours, ref = make_pair("BatchNorm1d", 3, dtype=F64)
    x, dy = data((5, 3), F64)
    ours(x).backward(dy)
    ref(x).backward(dy)
    close(ours.weight.grad, ref.weight.grad, F64)
    close(ours.bias.grad, ref.bias.grad, F64)


def test_empty_batch_matches_torch():
    ours, ref = make_pair("BatchNorm2d", 3)
    x = torch.zeros(0, 3, 4, 4)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    assert ya.shape == yb.shape
    ya.sum().backward()
    yb.sum().backward()
    assert xa.grad.shape == xb.grad.shape
    close(ours.weight.grad, ref.weight.grad, F32)
    assert_same_state(ours, ref, F32)


# --------------------------------------------------------------------------- fallbacks


def same_as_torch(ours, ref, x, dtype=F32):
    """Run both; equal results (and state), or the same exception type and message."""
    res = []
    for m in (ours, ref):
        try:
            res.append(m(x.clone()))
        except Exception as exc:  # noqa: BLE001 - compared below
            res.append(exc)
    a, b = res
    if isinstance(b, Exception):
        assert type(a) is type(b) and str(a) == str(b), (a, b)
    else:
        assert not isinstance(a, Exception), a
        close(a.float(), b.float(), dtype)
    assert_same_state(ours, ref, dtype)


@pytest.mark.parametrize("case", ["non_contiguous", "weight_f64_input_f32", "meta"])
def test_batchnorm_fallback_to_torch(case, kernel_calls):
    # channels_last and half precision run cnorm: tests/test_torch_reach.py, test_torch_half.py
    dtype = F64 if case == "weight_f64_input_f32" else F32
    ours, ref = make_pair("BatchNorm2d", 3, dtype=dtype)
    x = data((4, 3, 5, 6), F32)[0]
    if case == "non_contiguous":
        x = x.transpose(2, 3)
    elif case == "meta":
        ours, ref = ours.to("meta"), ref.to("meta")
        assert ours(x.to("meta")).is_meta
        assert kernel_calls["bn"] == 0
        return
    same_as_torch(ours, ref, x, dtype)
    assert kernel_calls["bn"] == 0


@pytest.mark.parametrize("case", ["wrong_ndim", "wrong_channels", "one_value", "eps0"])
def test_batchnorm_errors_as_torch(case, kernel_calls):
    kwargs = {"eps": 0.0} if case == "eps0" else {}
    ours, ref = make_pair("BatchNorm2d", 3, **kwargs)
    x = {
        "wrong_ndim": torch.randn(4, 3, 5),
        "wrong_channels": torch.randn(2, 4, 3, 3),
        "one_value": torch.randn(1, 3, 1, 1),
        "eps0": torch.randn(2, 3, 2, 2),
    }[case]
    same_as_torch(ours, ref, x)
    ours.eval()
    ref.eval()
    same_as_torch(ours, ref, x)


def test_use_cnorm_flag_and_torch_fallback(kernel_calls):
    ours, ref = make_pair("BatchNorm2d", 3)
    x = data((4, 3, 2, 2), F32)[0]
    ours.use_cnorm = False
    close(ours(x), ref(x), F32)
    assert kernel_calls["bn"] == 0
    del ours.use_cnorm
    with ct.torch_fallback():
        close(ours(x), ref(x), F32)
        with ct.torch_fallback():
            pass
        close(ours(x), ref(x), F32)
    assert kernel_calls["bn"] == 0
    close(ours(x), ref(x), F32)
    assert kernel_calls["bn"] == 1
    assert_same_state(ours, ref, F32)


def test_double_backward_raises_then_works_with_fallback():
    ours, ref = make_pair("BatchNorm1d", 3, dtype=F64)
    x = data((5, 3), F64)[0].requires_grad_()
    (g,) = torch.autograd.grad(ours(x).pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()
    with ct.torch_fallback():
        (g,) = torch.autograd.grad(ours(x).pow(3).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    x2 = x.detach().clone().requires_grad_()
    ref(x2)  # keep the running statistics in step
    (g2,) = torch.autograd.grad(ref(x2).pow(3).sum(), x2, create_graph=True)
    close(gg, torch.autograd.grad(g2.sum(), x2)[0], F64)


def test_parametrized_weight_falls_back(kernel_calls):
    ours, ref = make_pair("BatchNorm1d", 3, dtype=F64)
    for m in (ours, ref):
        torch.nn.utils.parametrize.register_parametrization(m, "weight", _Double())
    x = data((5, 3), F64)[0]
    close(ours(x), ref(x), F64)
    assert kernel_calls["bn"] == 0


class _Double(nn.Module):
    def forward(self, w):
        return 2 * w


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
def test_functorch_and_jit_fall_back():
    ours, ref = make_pair("LayerNorm", 4, dtype=F64)
    x = data((3, 4), F64)[0]
    close(torch.func.vmap(ours)(x), torch.func.vmap(ref)(x), F64)
    close(
        torch.func.grad(lambda t: ours(t).pow(3).sum())(x),
        torch.func.grad(lambda t: ref(t).pow(3).sum())(x),
        F64,
    )
    traced = torch.jit.trace(ours, x)
    close(traced(x), ref(x), F64)


# --------------------------------------------------------------------------- layer norm

LN_CASES = [
    ((4, 5, 8), 8, {}),
    ((3, 4, 5), (4, 5), {}),
    ((6, 8), 8, {"bias": False}),
    ((2, 3, 8), [8], {"elementwise_affine": False}),
    ((7, 16), 16, {"eps": 1e-2}),
]


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape,ns,kwargs", LN_CASES, ids=[f"{c[1]}-{c[2]}" for c in LN_CASES])
def test_layernorm_matches_torch(shape, ns, kwargs, dtype, kernel_calls):
    ours, ref = make_pair("LayerNorm", ns, dtype=dtype, **kwargs)
    xs = [data(shape, dtype, s)[0] for s in range(2)]
    dy = data(shape, dtype, 9)[1]
    y_o, dx_o, g_o = run_steps(ours, xs, dy)
    y_r, dx_r, g_r = run_steps(ref, xs, dy)
    for a, b in zip(y_o + dx_o + g_o, y_r + dx_r + g_r):
        close(a, b, dtype)
    assert kernel_calls["ln"] == 2 and kernel_calls["ln_bwd"] == 2
    with torch.no_grad():
        close(ours(xs[0]), ref(xs[0]), dtype)
    assert kernel_calls["ln"] == 3


@pytest.mark.parametrize("case", ["non_contiguous", "bad_shape", "weight_f64"])
def test_layernorm_fallback_to_torch(case, kernel_calls):
    dtype = F64 if case == "weight_f64" else F32
    ours, ref = make_pair("LayerNorm", 6, dtype=dtype)
    x = data((3, 6, 4), F32)[0]
    if case == "non_contiguous":
        x = x.transpose(1, 2)
    elif case == "bad_shape":
        pass
    same_as_torch(ours, ref, x, dtype)
    assert kernel_calls["ln"] == 0


# --------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("mode", ["train", "eval", "train_no_affine", "eval_no_stats"])
def test_gradcheck_batchnorm(mode):
    kwargs = {
        "train_no_affine": {"affine": False, "momentum": None},
        "eval_no_stats": {"track_running_stats": False},
    }.get(mode, {})
    m = ct.BatchNorm2d(3, dtype=F64, **kwargs)
    m.train(mode.startswith("train"))
    with torch.no_grad():
        if m.running_var is not None:
            m.running_mean.copy_(torch.tensor([0.5, -1.0, 0.0], dtype=F64))
            m.running_var.copy_(torch.tensor([0.5, 2.0, 1.5], dtype=F64))
    x = data((3, 3, 2, 2), F64)[0].requires_grad_()
    if m.weight is None:
        assert torch.autograd.gradcheck(m, (x,))
        return
    w = torch.tensor([1.5, -0.7, 0.9], dtype=F64, requires_grad=True)
    b = torch.tensor([0.1, 0.2, -0.3], dtype=F64, requires_grad=True)

    def f(x, w, b):
        y = torch.func.functional_call(m, {"weight": w, "bias": b}, (x,))
        assert type(y.grad_fn).__name__ == "BatchNormFunctionBackward"
        return y

    assert torch.autograd.gradcheck(f, (x, w, b))


@pytest.mark.parametrize("ns", [(4,), (2, 4)], ids=str)
def test_gradcheck_layernorm(ns):
    m = ct.LayerNorm(ns, dtype=F64)
    x = data((3, 2, 4), F64)[0].requires_grad_()
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(ns, generator=g, dtype=F64) + 1).requires_grad_()
    b = torch.randn(ns, generator=g, dtype=F64).requires_grad_()

    def f(x, w, b):
        y = torch.func.functional_call(m, {"weight": w, "bias": b}, (x,))
        assert type(y.grad_fn).__name__ == "LayerNormFunctionBackward"
        return y

    assert torch.autograd.gradcheck(f, (x, w, b))


# --------------------------------------------------------------------------- convert


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(4))
        )
        self.flat = nn.Flatten()
        self.head = nn.Sequential(nn.Linear(64, 8), nn.BatchNorm1d(8), nn.LayerNorm(8), nn.Linear(8, 3))
        self.extra = nn.ModuleList([nn.BatchNorm3d(2), MyBN(2), nn.SyncBatchNorm(2)])

    def forward(self, x):
        return self.head(self.flat(self.features(x)))


class MyBN(nn.BatchNorm1d):
    """A user subclass: not converted (only the exact torch classes are)."""


def test_convert_nested_model_keeps_state():
    torch.manual_seed(0)
    model = Net()
    ref = copy.deepcopy(model)
    model.features[1].register_forward_hook(lambda m, i, o: hooked.append(type(m).__name__))
    hooked = []
    model.eval()
    model.head.train()
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    keys = list(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = ct.convert(model)
    assert out is model
    kinds = {name: type(m) for name, m in model.named_modules()}
    assert kinds["features.1"] is ct.BatchNorm2d and kinds["features.3.0"] is ct.BatchNorm2d
    assert kinds["head.1"] is ct.BatchNorm1d and kinds["head.2"] is ct.LayerNorm
    assert kinds["extra.0"] is ct.BatchNorm3d
    assert kinds["extra.1"] is MyBN and kinds["extra.2"] is nn.SyncBatchNorm
    assert kinds["features.0"] is nn.Conv2d
    for name, p in model.named_parameters():
        assert p is params[name]
    for name, b in model.named_buffers():
        assert b is buffers[name]
    assert list(model.state_dict()) == keys
    assert not model.features[1].training and model.head[1].training
    assert isinstance(model.features[1], nn.BatchNorm2d)
    # same numbers as the unconverted copy, and the optimizer still drives the params
    ref.eval()
    ref.head.train()
    x = torch.randn(5, 1, 4, 4)
    for _ in range(2):
        out_a, out_b = model(x), ref(x)
        close(out_a, out_b, F32)
        out_a.sum().backward()
        opt.step()
        opt.zero_grad()
        out_b.sum().backward()
        with torch.no_grad():
            for p in ref.parameters():
                if p.grad is not None:
                    p -= 0.1 * p.grad
                    p.grad = None
    close(model(x), ref(x), F32)
    assert hooked == ["BatchNorm2d"] * 3
    assert model.head[1].num_batches_tracked.item() == 3


def test_convert_norm_layer_itself_and_shared():
    bn = nn.BatchNorm2d(3)
    new = ct.convert(bn)
    assert type(new) is ct.BatchNorm2d and type(bn) is nn.BatchNorm2d
    assert new.weight is bn.weight and new.running_mean is bn.running_mean
    assert ct.convert(new) is new
    ln = nn.LayerNorm(4)
    shared = nn.Sequential(ln, nn.ReLU(), ln)
    ct.convert(shared)
    assert shared[0] is shared[2] and type(shared[0]) is ct.LayerNorm
    # the new module does not share its registries with the old one
    new.register_buffer("extra", torch.zeros(1))
    assert "extra" not in bn._buffers


def test_converted_model_copy_pickle_state_dict():
    model = ct.convert(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.LayerNorm(4)))
    x = torch.randn(6, 3)
    model(x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(clone[1]) is ct.BatchNorm1d
        assert clone[1].weight is not model[1].weight
        model.eval()
        clone.eval()
        close(clone(x), model(x), F32)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    plain = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.LayerNorm(4)).eval()
    plain.load_state_dict(torch.load(buf))
    close(plain(x), model(x), F32)


def test_threads_do_not_change_results(restore_threads):
    ours, _ = make_pair("BatchNorm2d", 8, dtype=F64)
    x, dy = data((16, 8, 16, 16), F64)
    outs = []
    for n in (1, 2):
        cnorm.set_num_threads(n)
        xa = x.clone().requires_grad_()
        ours.weight.grad = None
        y = ours(xa)
        y.backward(dy)
        outs.append((y, xa.grad, ours.weight.grad))
    for a, b in zip(*outs):
        close(a, b, F64)


def test_inplace_ops_on_the_output():
    """ResNet patterns: ReLU(inplace=True) and ``out += identity`` on the BN output."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    ours = ct.convert(copy.deepcopy(ref))
    x, dy = data((4, 3, 5, 5), F32)
    outs = []
    for m in (ours, ref):
        xa = x.clone().requires_grad_()
        y = m(xa)
        y += xa
        y = torch.relu_(y)
        y = nn.functional.relu(m[1](y), inplace=True)
        y.backward(dy)
        outs.append((y.detach(), xa.grad, m[1].weight.grad, m[0].weight.grad))
    for a, b in zip(*outs):
        close(a, b, F32)


def test_bench_dropin_runner(capsys, restore_threads):
    """``python -m cnorm bench --dropin`` (quick, two tiny cases and the CNN step)."""
    torch_cases = torch_bench_cases()
    old = torch.get_num_threads()
    try:
        rc = bench_main(
            [
                "--dropin",
                "--quick",
                "--cases",
                "bn2d_tiny,ln_token",
                "--ops",
                "fwd_bwd",
                "--threads",
                "1",
                "--reps",
                "2",
                "--min-rep-ms",
                "0",
            ]
        )
    finally:
        torch.set_num_threads(old)
    out = capsys.readouterr().out
    assert rc == 0
    assert "bn2d_tiny" in out and "ln_token" in out and "cnn" in out and "summary:" in out
    assert "infer" not in out
    case = torch_cases.C.CASES_BY_NAME["bn1d_mlp"]
    for impl in torch_cases.DROPIN_IMPLS:
        assert torch_cases.build_dropin(case, "infer", impl, "float64")().dtype == F64
