"""cnorm.torch with TorchScript (script runs torch's kernels), torch.jit.trace, torch.func,
inference_mode, deepcopy and pickle of converted models."""

import copy
import io
import pickle

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from torch_support import ReachModel

import cnorm.torch as ct

F64 = torch.float64


@pytest.fixture(autouse=True)
def no_size_threshold(monkeypatch):
    for norm in ct.TORCH_BELOW:
        monkeypatch.setitem(ct.TORCH_BELOW, norm, (0, 0))


def small_model(**bn):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, dtype=F64),
        nn.BatchNorm2d(4, dtype=F64, **bn),
        nn.ReLU(),
        nn.Flatten(2),
        nn.LayerNorm(16, dtype=F64),
        nn.Flatten(1),
        nn.BatchNorm1d(64, dtype=F64, **bn),
    )


def data(seed=0):
    return torch.randn((3, 3, 4, 4), generator=torch.Generator().manual_seed(seed), dtype=F64)


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("bn", [{}, {"momentum": None}, {"track_running_stats": False}, {"affine": False}])
def test_script_converted_model(bn):
    ref = small_model(**bn)
    model = ct.convert(copy.deepcopy(ref))
    scripted = torch.jit.script(model)
    for mode in (True, False):
        scripted.train(mode)
        ref.train(mode)
        for seed in range(2):
            close(scripted(data(seed)), ref(data(seed)))
    for a, b in zip(scripted.state_dict().values(), ref.state_dict().values()):
        close(a, b)
    # the scripted module shares the converted model's parameters and buffers
    if ref[1].num_batches_tracked is not None:
        assert model[1].num_batches_tracked.item() == ref[1].num_batches_tracked.item() == 2
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    close(torch.jit.load(buffer)(data()), ref(data()))


def test_script_reach_model():
    """GroupNorm, InstanceNorm (running statistics, unbatched-capable forward), RMSNorm and
    channels_last BatchNorm script too, and run torch's kernels."""
    ref = ReachModel(F64)
    model = ct.convert(copy.deepcopy(ref))
    assert type(model.rms) is ct.RMSNorm and type(model.inorm_last) is ct.InstanceNorm2d
    scripted = torch.jit.script(model)
    x = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=F64)
    for mode in (True, False):
        scripted.train(mode)
        ref.train(mode)
        for _ in range(2):
            close(scripted(x), ref(x))
    for a, b in zip(scripted.state_dict().values(), ref.state_dict().values()):
        close(a, b)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    close(torch.jit.load(buffer)(x), ref(x))
    unbatched = torch.jit.script(ct.InstanceNorm1d(3, affine=True, dtype=F64))
    y = torch.randn(3, 5, dtype=F64)
    close(unbatched(y), nn.InstanceNorm1d(3, affine=True, dtype=F64)(y))
    with pytest.raises(torch.jit.Error, match="to match num_features"):  # torch's ValueError, scripted
        unbatched(torch.randn(4, 5, dtype=F64))


def test_script_sync_batchnorm_runs_local_batch_norm():
    ref = nn.BatchNorm1d(3, dtype=F64)
    scripted = torch.jit.script(ct.SyncBatchNorm(3, dtype=F64))
    x = torch.randn(5, 3, dtype=F64)
    close(scripted(x), ref(x))
    scripted.eval()
    ref.eval()
    close(scripted(x), ref(x))


@pytest.mark.filterwarnings("ignore:.*trace")
def test_trace_converted_model():
    ref = small_model().eval()
    traced = torch.jit.trace(ct.convert(copy.deepcopy(ref)), data())
    close(traced(data(1)), ref(data(1)))


def test_func_transforms():
    ref = small_model().eval()
    model = ct.convert(copy.deepcopy(ref))
    x = data()
    close(torch.func.vmap(model)(x[:, None]), torch.func.vmap(ref)(x[:, None]))
    params = dict(model.named_parameters())

    def loss(m):
        return lambda p, x: torch.func.functional_call(m, p, (x,)).pow(2).sum()

    grads = torch.func.grad(loss(model))(params, x)
    expected = torch.func.grad(loss(ref))(params, x)
    for k in params:
        close(grads[k], expected[k])


def test_inference_mode_and_no_grad():
    ref = small_model().eval()
    model = ct.convert(copy.deepcopy(ref))
    with torch.inference_mode():
        close(model(data()), ref(data()))
    with torch.no_grad():
        y = model(data())
    assert not y.requires_grad
    close(y, ref(data()).detach())


def test_deepcopy_and_pickle_after_compile_and_script():
    model = ct.convert(small_model())
    torch.jit.script(model)
    torch._dynamo.explain(model)(data())
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(clone[1]) is ct.BatchNorm2d
        clone.eval()
        model.eval()
        close(clone(data()), model(data()))
        model.train()
