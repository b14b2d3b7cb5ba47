"""cnorm.torch in half precision: bfloat16 / float16 layers and inputs, torch's mixed
precision (a half input into a float32 layer), CPU autocast, transformers models in
bfloat16 and torch.compile of a half model, all on the cnorm half kernels.

Accuracy: no worse than torch's own half result against the float64 truth of the same
half inputs and parameters (plus one half ulp of the output's scale)."""

import copy
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ml_dtypes")
nn = torch.nn

import torch_half_table as table
from test_torch_reach import data  # (x, dy) of a shape, dtype and layout

import cnorm.torch as ct

F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
HALF_NAMES = ["bfloat16", "float16", "mixed-bf16", "mixed-f16"]


def norm_ops(fn):
    """The aten ops with "norm" in their name that fn() runs (torch's norm kernels)."""
    with torch.profiler.profile() as prof:
        fn()
    return sorted({e.name for e in prof.events() if e.name.startswith("aten::") and "norm" in e.name})


def make_pair(cls, args, kwargs, p_dtype):
    """(converted layer, torch's) of p_dtype, equal random parameters and buffers."""
    ref = getattr(nn, cls)(*args, **kwargs)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + 1)
        if getattr(ref, "running_var", None) is not None:
            ref.running_mean.copy_(torch.randn(ref.running_mean.shape, generator=g))
            ref.running_var.uniform_(0.5, 2.0, generator=g)
    ref = ref.to(p_dtype)
    return ct.convert(copy.deepcopy(ref)), ref


def run(module, x, dy):
    """(output, input grad, parameter grads, buffers) of one forward+backward."""
    x = x.detach().clone().requires_grad_()
    y = module(x)
    y.backward(dy.to(y.dtype))
    grads = [p.grad for p in module.parameters()]
    return [y, x.grad, *grads, *[b for b in module.buffers() if b.is_floating_point()]]


def max_err(a, truth):
    return (a.detach().to(F64) - truth).abs().max().item() if a.numel() else 0.0


def assert_no_worse_than_torch(ours, theirs, truth, what):
    """Every tensor of ours as close to the float64 truth as torch's, plus one ulp of the
    tensor's dtype at its scale (a different rounding of one value)."""
    assert len(ours) == len(theirs) == len(truth)
    for i, (a, b, t) in enumerate(zip(ours, theirs, truth)):
        assert a.dtype == b.dtype and a.shape == b.shape, (what, i, a.dtype, b.dtype)
        assert a.stride() == b.stride() or a.dim() < 2, (what, i, a.stride(), b.stride())
        t = t.detach().to(F64)
        ulp = torch.finfo(a.dtype).eps * max(t.abs().max().item(), 1e-30)
        assert max_err(a, t) <= max_err(b, t) + ulp, (what, i, max_err(a, t), max_err(b, t), ulp)


SMALL = {  # small shapes (the fixture drops the size threshold): CI time
    "BatchNorm1d": (6, 16, 5),
    "BatchNorm2d": (3, 16, 5, 6),
    "BatchNorm3d": (2, 16, 3, 4, 5),
    "LayerNorm": (6, 64),
    "GroupNorm": (3, 16, 5, 4),
    "InstanceNorm1d": (6, 16, 7),
    "InstanceNorm2d": (3, 16, 5, 4),
    "InstanceNorm3d": (2, 16, 3, 4, 5),
    "RMSNorm": (6, 64),
}
TRAIN_EVAL = ("BatchNorm", "InstanceNorm")
PARITY = [
    pytest.param(
        cls, args, kwargs, layout, dtype, train, id=f"{cls}-{layout}-{dtype}-{'train' if train else 'eval'}"
    )
    for cls, args, kwargs, shape in table.CLASSES
    for layout in table.layouts(shape)
    for dtype in HALF_NAMES
    for train in ((True, False) if cls.startswith(TRAIN_EVAL) else (True,))
]


@pytest.mark.usefixtures("no_size_threshold")
@pytest.mark.parametrize("cls, args, kwargs, layout, dtype, train", PARITY)
def test_parity_with_torch(cls, args, kwargs, layout, dtype, train):
    """Outputs, input/weight/bias gradients and running statistics (updated in float32
    for float32 buffers) against torch's, output dtypes and memory formats as torch's,
    and the cnorm kernels ran (the profiler shows no aten norm op)."""
    x_dtype, p_dtype = table.dtypes(dtype)
    ours, ref = make_pair(cls, args, kwargs, p_dtype)
    truth_module = copy.deepcopy(ref).to(F64)
    for m in (ours, ref, truth_module):
        m.train(train)
    x, dy = data(SMALL[cls], x_dtype, layout)
    out = {}
    ops = norm_ops(lambda: out.setdefault("ours", run(ours, x, dy)))
    theirs = run(ref, x, dy)
    truth = run(truth_module, x.to(F64), dy.to(F64))
    assert_no_worse_than_torch(out["ours"], theirs, truth, (cls, layout, dtype))
    assert all(b.dtype == p_dtype for b in ours.buffers() if b.is_floating_point())
    assert (ops != []) == ((cls, layout, dtype) in table.EXPECTED_TORCH), ops


def test_table_every_class_above_the_threshold():
    """Thresholds capped at the table's 65536-element inputs: every converted layer runs
    the cnorm kernels for every dtype and layout but the documented ones
    (torch_half_table.py)."""
    rows = table.table()
    unexpected = {k: v for k, v in rows.items() if bool(v) != (k in table.EXPECTED_TORCH)}
    assert not unexpected, unexpected


@pytest.mark.usefixtures("no_size_threshold")
@pytest.mark.parametrize("cls", ["BatchNorm2d", "LayerNorm", "RMSNorm"])
def test_half_without_grad_and_eval_on_cnorm(cls):
    """No autograd (torch.no_grad, inference): the bare forward, bfloat16 output."""
    args, kwargs, _ = next((a, k, s) for c, a, k, s in table.CLASSES if c == cls)
    ours, ref = make_pair(cls, args, kwargs, BF16)
    ours.eval(), ref.eval()
    x, _ = data(SMALL[cls], BF16, "contiguous")
    with torch.no_grad():
        assert norm_ops(lambda: ours(x)) == []
        y, t = ours(x), ref(x)
        truth = copy.deepcopy(ref).to(F64)(x.to(F64))
    assert_no_worse_than_torch([y], [t], [truth], cls)


@pytest.mark.usefixtures("no_size_threshold")
def test_other_mixes_go_to_torch_with_its_errors():
    """A half input with float64 or other-half parameters: torch's result or torch's error."""
    ours, ref = make_pair("LayerNorm", (64,), {}, F64)
    x = torch.randn(4, 64).to(BF16)
    with pytest.raises(RuntimeError) as theirs:
        ref(x)
    with pytest.raises(RuntimeError) as mine:
        ours(x)
    assert str(mine.value) == str(theirs.value)
    gn, gn_ref = make_pair("GroupNorm", (4, 16), {}, F16)
    xg = torch.randn(3, 16, 5, 4).to(BF16)
    with pytest.raises(RuntimeError) as theirs:
        gn_ref(xg)
    with pytest.raises(RuntimeError) as mine:
        gn(xg)
    assert str(mine.value) == str(theirs.value)


def test_zero_copy_views():
    """The NumPy views of half tensors share their memory; bfloat16 outputs come back as
    views of the kernel's array."""
    from cnorm.torch._autograd import as_numpy, as_tensor

    for dt in (BF16, F16):
        t = torch.randn(3, 5).to(dt)
        a = as_numpy(t)
        assert a.ctypes.data == t.data_ptr() and a.dtype.itemsize == 2 and a.shape == (3, 5)
        back = as_tensor(a)
        assert back.dtype == dt and back.data_ptr() == t.data_ptr() and torch.equal(back, t)


def test_rms_norm_eps_none_is_the_half_dtypes_eps(no_size_threshold):
    for dt in (BF16, F16):
        ours, ref = make_pair("RMSNorm", (64,), {}, dt)
        x = torch.full((4, 64), 0.03, dtype=dt)  # mean(x^2) ~ the eps of bfloat16 matters
        assert norm_ops(lambda m=ours, x=x: m(x)) == []
        torch.testing.assert_close(ours(x), ref(x))


# ------------------------------------------------------------------------------- autocast
# torch 2.13's CPU autocast policy lists no norm op (neither lower_precision_fp nor fp32):
# under autocast every norm runs in its input's dtype, as without autocast (checked here)

AUTOCAST = [
    pytest.param(cls, ac, xdt, pdt, id=f"{cls}-{str(ac)[6:]}-x{str(xdt)[6:]}-p{str(pdt)[6:]}")
    for cls in ("BatchNorm2d", "LayerNorm", "GroupNorm", "InstanceNorm2d", "RMSNorm")
    for ac in (BF16, F16)
    for xdt, pdt in ((F32, F32), (BF16, BF16), (F16, F16), (BF16, F32), (F16, F32))
]


@pytest.mark.usefixtures("no_size_threshold")
@pytest.mark.parametrize("cls, autocast_dtype, x_dtype, p_dtype", AUTOCAST)
def test_autocast_as_torch(cls, autocast_dtype, x_dtype, p_dtype):
    args, kwargs, _ = next((a, k, s) for c, a, k, s in table.CLASSES if c == cls)
    ours, ref = make_pair(cls, args, kwargs, p_dtype)
    plain = copy.deepcopy(ours)
    x, dy = data(SMALL[cls], x_dtype, "contiguous")
    out = {}
    with torch.autocast("cpu", dtype=autocast_dtype):
        ops = norm_ops(lambda: out.setdefault("ours", run(ours, x, dy)))
        theirs = run(ref, x, dy)
    assert ops == []  # the cnorm kernels, as outside autocast
    for a, b, c in zip(out["ours"], theirs, run(plain, x, dy)):
        assert a.dtype == b.dtype
        assert torch.equal(a, c)  # what cnorm computes without autocast
    truth = run(copy.deepcopy(ref).to(F64), x.to(F64), dy.to(F64))
    assert_no_worse_than_torch(out["ours"], theirs, truth, cls)


# --------------------------------------------------------------------------- transformers


@pytest.mark.usefixtures("no_size_threshold")
@pytest.mark.parametrize("name", ["llama", "gemma", "t5", "convnext"])
def test_transformers_bfloat16_models(name):
    """Converted in bfloat16: every norm on cnorm, outputs and gradients as the
    unconverted bfloat16 model's (as close to the float64 model as those)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pytest.importorskip("transformers")
    import test_transformers as tt

    ref, inputs = tt.build(name)
    ref = ref.to(BF16).train()
    if "pixel_values" in inputs:
        inputs = {"pixel_values": inputs["pixel_values"].to(BF16)}
    ours = ct.convert(copy.deepcopy(ref))
    norms = tt.norm_modules(ours)
    assert norms and all(tt.on_cnorm(m) for m in norms), [type(m) for m in norms if not tt.on_cnorm(m)]
    truth_model = copy.deepcopy(ref).to(F64)
    truth_inputs = {k: v.to(F64) if v.is_floating_point() else v for k, v in inputs.items()}
    outs = []
    for model, kw in ((ours, inputs), (ref, inputs), (truth_model, truth_inputs)):
        y = tt.hidden(model(**kw))
        y.float().square().sum().backward()
        outs.append([y, *[p.grad for p in model.parameters() if p.grad is not None]])
    assert [t.shape for t in outs[0]] == [t.shape for t in outs[1]]
    for i, (a, b, t) in enumerate(zip(*outs)):
        scale = t.abs().max().item() + 1e-30
        err_ours, err_torch = max_err(a, t) / scale, max_err(b, t) / scale
        assert err_ours <= 2 * err_torch + 2**-7, (name, i, err_ours, err_torch)  # bfloat16: 2^-8 ulp
    # the norms ran on cnorm (no aten norm op, no rsqrt of an RMS norm's own forward)
    with torch.profiler.profile() as prof:
        tt.hidden(ours(**inputs)).float().sum().backward()
    aten = {
        e.name
        for e in prof.events()
        if e.name.startswith("aten::") and ("norm" in e.name or e.name == "aten::rsqrt")
    }
    assert not aten, aten


# -------------------------------------------------------------------------- torch.compile


class HalfModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm(64)
        self.rms = nn.RMSNorm(64)

    def forward(self, x):
        x = self.gn(self.bn(self.conv(x)))
        return self.rms(self.ln(x.flatten(2)))


@pytest.mark.usefixtures("no_size_threshold")
@pytest.mark.parametrize("mixed", [False, True], ids=["bf16", "mixed"])
def test_compile_half_model(mixed):
    """No graph break, the cnorm:: ops in the graph; compiled (aot_eager) as eager."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ct.convert(HalfModel())
    if mixed:
        model.conv.to(BF16)  # a bfloat16 activation into float32 norms
    else:
        model.to(BF16)
    x = torch.randn(2, 3, 8, 8).to(BF16)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    ops = sorted(
        str(n.target)
        for n in explanation.graphs[0].graph.nodes
        if n.op == "call_function" and str(n.target).startswith("cnorm.")
    )
    assert ops == [f"cnorm.{op}.default" for op in ("batch_norm", "group_norm", "layer_norm", "rms_norm")]
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = compiled(xa), eager(xb)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    ya.float().sum().backward()
    yb.float().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=0)
    for a, b in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    torch.testing.assert_close(model.bn.running_var, eager.bn.running_var, rtol=0, atol=0)
    torch._dynamo.reset()


def test_custom_op_opcheck_half():
    """Schema, fake kernel and autograd of a cnorm:: op on bfloat16 and mixed inputs."""
    from cnorm.torch import _library

    ln = _library.NORM_OPS["layer_norm"].forward
    x = torch.randn(4, 3, 8).to(BF16).requires_grad_()
    for dt in (BF16, F32):
        w = torch.rand(8, dtype=dt, requires_grad=True)
        torch.library.opcheck(ln, (x, w, torch.rand(8, dtype=dt), [8], 1e-5))


@pytest.mark.usefixtures("no_size_threshold")
@pytest.mark.parametrize("name", ["LlamaRMSNorm", "GemmaRMSNorm", "T5LayerNorm", "Olmo2RMSNorm"])
@pytest.mark.parametrize("p_dtype", [BF16, F32], ids=["bf16", "mixed"])
def test_transformers_rms_norms_half_semantics(name, p_dtype):
    """transformers' own classes with a bfloat16 input, weight bfloat16 or float32: the
    class's exact dtype semantics (output dtype, the weight before or after the cast), as
    close to the float64 truth as the class's own forward; T5 with a float32 weight (a
    float32 result, never rounded to bfloat16) runs its own forward."""
    transformers = pytest.importorskip("transformers")
    family = name.replace("RMSNorm", "").replace("LayerNorm", "").lower()
    cls = getattr(getattr(transformers.models, family), f"modeling_{family}").__dict__[name]
    ref = cls(64).to(p_dtype)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(64) * 0.3 + (0 if name.startswith("Gemma") else 1))
    ours = ct.convert(copy.deepcopy(ref))
    assert type(ours) is not cls
    x, dy = data((6, 64), BF16, "contiguous")
    truth = run(copy.deepcopy(ref).to(F64), x.to(F64), dy.to(F64))
    out = {}
    with torch.profiler.profile() as prof:
        out["ours"] = run(ours, x, dy)
    rsqrt = any(e.name == "aten::rsqrt" for e in prof.events())
    assert rsqrt == (name == "T5LayerNorm" and p_dtype == F32)
    assert_no_worse_than_torch(out["ours"], run(ref, x, dy), truth, name)


@pytest.mark.usefixtures("no_size_threshold")
def test_compile_under_autocast():
    """A float32 model under CPU autocast: the bfloat16 activation of a Linear into float32
    norms (mixed precision) compiles to the cnorm:: ops, results as eager."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ct.convert(nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.RMSNorm(32)))
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=BF16):
        explanation = torch._dynamo.explain(model)(x)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        y, eager = compiled(x), model(x)
    assert explanation.graph_break_count == 0
    targets = [str(n.target) for n in explanation.graphs[0].graph.nodes if n.op == "call_function"]
    assert "cnorm.layer_norm.default" in targets and "cnorm.rms_norm.default" in targets
    assert y.dtype == BF16 and torch.equal(y, eager)
    torch._dynamo.reset()


@pytest.mark.usefixtures("no_size_threshold")
@pytest.mark.parametrize("p_dtype", [BF16, F32], ids=["bf16", "mixed"])
def test_sync_batchnorm_local_path(p_dtype):
    """SyncBatchNorm without a process group: the BatchNorm path, on cnorm in half too."""
    ours = ct.SyncBatchNorm(16).to(p_dtype)
    ref = nn.BatchNorm2d(16).to(p_dtype)
    ref.load_state_dict(ours.state_dict())
    x, dy = data((3, 16, 5, 6), BF16, "channels_last")
    out = {}
    assert norm_ops(lambda: out.setdefault("ours", run(ours, x, dy))) == []
    truth = run(copy.deepcopy(ref).to(F64), x.to(F64), dy.to(F64))
    assert_no_worse_than_torch(out["ours"], run(ref, x, dy), truth, "SyncBatchNorm")
