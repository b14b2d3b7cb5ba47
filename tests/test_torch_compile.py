"""cnorm.torch under torch.compile and torch.export: the cnorm:: custom ops, no graph break,
results, gradients and running statistics as in eager (small models: CI time)."""

import copy

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from torch_support import REACH_OPS, ReachModel

import cnorm.torch as ct
from cnorm.torch import _library

F32, F64 = torch.float32, torch.float64


@pytest.fixture(autouse=True)
def no_size_threshold(monkeypatch):
    """The tiny eager inputs run on cnorm too (what the compiled model is compared with)."""
    for norm in ct.TORCH_BELOW:
        monkeypatch.setitem(ct.TORCH_BELOW, norm, (0, 0))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def small_model(dtype=F32, momentum=0.1, track=True):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, dtype=dtype),
        nn.BatchNorm2d(4, momentum=momentum, track_running_stats=track, dtype=dtype),
        nn.ReLU(),
        nn.Flatten(2),  # (N, 4, 64)
        nn.LayerNorm(64, dtype=dtype),
        nn.Flatten(1),
        nn.BatchNorm1d(256, dtype=dtype),
    )


def data(dtype=F32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((4, 3, 8, 8), generator=g, dtype=dtype)


def cnorm_ops(graph_module):
    return sorted(
        str(n.target)
        for n in graph_module.graph.nodes
        if n.op == "call_function" and str(n.target).startswith("cnorm.")
    )


def step(model, x):
    """(output, input grad, parameter grads) of one training step."""
    x = x.clone().requires_grad_()
    y = model(x)
    y.pow(2).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return y.detach(), x.grad, grads


def assert_close_all(a, b, dtype):
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == F32 else {"rtol": 1e-10, "atol": 1e-10}
    for u, v in zip(a, b):
        if isinstance(u, list):
            assert_close_all(u, v, dtype)
        else:
            torch.testing.assert_close(u, v, **tol)


SMALL_OPS = ["cnorm.batch_norm.default", "cnorm.batch_norm.default", "cnorm.layer_norm.default"]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "make, ops", [(small_model, SMALL_OPS), (ReachModel, REACH_OPS)], ids=["bn_ln", "reach"]
)
def test_explain_no_graph_break_with_cnorm_ops(make, ops, train):
    """BatchNorm/LayerNorm, and GroupNorm, InstanceNorm, RMSNorm, channels_last (ReachModel)."""
    model = ct.convert(make()).train(train)
    explanation = torch._dynamo.explain(model)(data())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert len(explanation.graphs) == 1
    assert cnorm_ops(explanation.graphs[0]) == ops


def check_compiled_training(make, dtype, steps, tracked):
    """Outputs, input and parameter gradients of ``steps`` training steps, the state
    (running statistics, num_batches_tracked: updated in the compiled graph too), then an
    eval forward: compiled (aot_eager, fullgraph) as in eager."""
    eager = ct.convert(make(dtype))
    compiled_model = ct.convert(make(dtype))
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    for seed in range(steps):
        x = data(dtype, seed)
        assert_close_all(step(compiled, x), step(eager, x), dtype)
    for (k, a), (_, b) in zip(compiled_model.state_dict().items(), eager.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=k)
    assert tracked(compiled_model).num_batches_tracked.item() == steps
    compiled_model.eval()
    eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(data(dtype, 5)), eager(data(dtype, 5)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_compiled_training_matches_eager(dtype):
    check_compiled_training(small_model, dtype, 3, lambda m: m[1])


def test_compiled_falls_back_where_eager_does():
    """momentum=None, untracked statistics: compiled like torch's norms; channels_last
    too compiles with no graph break (on cnorm: test_reach_model_compiles_on_cnorm)."""
    for kwargs in ({"momentum": None}, {"track": False}):
        model = ct.convert(small_model(F64, **kwargs))
        ref = small_model(F64, **kwargs)
        compiled = torch.compile(model, backend="aot_eager")
        for seed in range(2):
            assert_close_all(step(compiled, data(F64, seed)), step(ref, data(F64, seed)), F64)
    model = ct.convert(small_model())
    explanation = torch._dynamo.explain(model)(data().contiguous(memory_format=torch.channels_last))
    assert explanation.graph_break_count == 0


@pytest.mark.parametrize(
    "make, ops", [(small_model, SMALL_OPS), (ReachModel, REACH_OPS)], ids=["bn_ln", "reach"]
)
def test_export_keeps_the_cnorm_ops(make, ops):
    model = ct.convert(make()).eval()
    x = data()
    exported = torch.export.export(model, (x,))
    assert cnorm_ops(exported.graph_module) == ops
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


def test_export_training_mutates_running_stats():
    model = ct.convert(small_model())
    ref = copy.deepcopy(model)
    x = data()
    exported = torch.export.export(model, (x,))
    module = exported.module()
    torch.testing.assert_close(module(x), ref(x))
    torch.testing.assert_close(module.state_dict()["1.running_mean"], ref[1].running_mean)
    torch.testing.assert_close(module.state_dict()["1.num_batches_tracked"], ref[1].num_batches_tracked)


def test_custom_ops_opcheck():
    """Schema, fake kernel, autograd registration and aot dispatch (torch.library.opcheck)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((4, 3, 5), generator=g, dtype=F64)
    w, b = torch.rand(3, dtype=F64), torch.rand(3, dtype=F64)
    rm, rv = torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)
    bn = _library.NORM_OPS["batch_norm"].forward
    torch.library.opcheck(bn, (x, w, b, rm, rv, True, 0.1, 1e-5))
    torch.library.opcheck(bn, (x.requires_grad_(), w, None, rm, rv, False, 0.1, 1e-5))
    torch.library.opcheck(bn, (x, None, None, None, None, True, 0.1, 1e-5))
    ln = _library.NORM_OPS["layer_norm"].forward
    lw = torch.rand(5, dtype=F64, requires_grad=True)
    torch.library.opcheck(ln, (x, lw, torch.rand(5, dtype=F64), [5], 1e-5))
    torch.library.opcheck(ln, (x.detach(), None, None, [3, 5], 1e-5))


def test_custom_ops_gradcheck_and_once_differentiable():
    g = torch.Generator().manual_seed(1)
    x = torch.randn((5, 3, 2), generator=g, dtype=F64, requires_grad=True)
    w = torch.rand(3, dtype=F64, requires_grad=True)
    b = torch.rand(3, dtype=F64, requires_grad=True)
    bn = torch.ops.cnorm.batch_norm
    for training in (True, False):
        rm, rv = torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)
        args = (rm, rv, training, 0.1, 1e-5)
        assert torch.autograd.gradcheck(lambda x, w, b, args=args: bn(x, w, b, *args)[0], (x, w, b))
    ln = torch.ops.cnorm.layer_norm
    lw = torch.rand(2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: ln(x, w, None, [2], 1e-5)[0], (x, lw))
    (gx,) = torch.autograd.grad(ln(x, lw, None, [2], 1e-5)[0].pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()


# ------------------------------------------- GroupNorm, InstanceNorm, RMSNorm, channels_last


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_reach_model_compiled_training_matches_eager(dtype):
    """BatchNorm and InstanceNorm running statistics included."""
    check_compiled_training(ReachModel, dtype, 2, lambda m: m.bn)


def test_reach_ops_opcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, 4, 3, 5), generator=g, dtype=F64)
    last = x.movedim(1, -1).contiguous()  # (N, H, W, C): what the channels_last ops take
    w, b = torch.rand(4, dtype=F64), torch.rand(4, dtype=F64)
    ops = _library.NORM_OPS
    for name, t in (("group_norm", x), ("group_norm_channels_last", last)):
        torch.library.opcheck(ops[name].forward, (t.clone().requires_grad_(), w, b, 2, 1e-5))
        torch.library.opcheck(ops[name].forward, (t, None, None, 4, 1e-5))
    for name, t in (("instance_norm", x), ("instance_norm_channels_last", last)):
        for use_input_stats in (True, False):
            rm, rv = torch.zeros(4, dtype=F64), torch.ones(4, dtype=F64)
            args = (t.clone().requires_grad_(), w, b, rm, rv, use_input_stats, 0.1, 1e-5)
            torch.library.opcheck(ops[name].forward, args)
        torch.library.opcheck(ops[name].forward, (t, None, None, None, None, True, 0.1, 1e-5))
    rw = torch.rand(5, dtype=F64, requires_grad=True)
    torch.library.opcheck(ops["rms_norm"].forward, (x, rw, None, [5], 1e-5))
    torch.library.opcheck(ops["rms_norm"].forward, (x, None, None, [3, 5], 1e-5))


@pytest.mark.slow
def test_inductor_matches_eager():
    """torch.compile with Inductor (C++ codegen: tens of seconds)."""
    eager = ct.convert(small_model())
    compiled_model = ct.convert(small_model())
    compiled = torch.compile(compiled_model)
    for seed in range(2):
        assert_close_all(step(compiled, data(seed=seed)), step(eager, data(seed=seed)), F32)
    torch.testing.assert_close(compiled_model[1].running_var, eager[1].running_var)
