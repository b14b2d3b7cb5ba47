"""Synchronized batch norm: the engine-free flow with simulated ranks (NumPy, threads),
and cnorm.torch.SyncBatchNorm on torch.distributed's gloo backend with 2 and 3
processes on 127.0.0.1, against a single-process BatchNorm on the concatenated batch."""

import datetime
import importlib.util
import os
import pathlib
import socket
import sys

import numpy as np
import pytest

import cnorm
from cnorm import functional as F

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOL = 1e-10


def _load_example():
    """examples/sync_bn_mpi4py.py as a module; it imports its folder's _common (which a
    script run finds next to it), so that folder goes on sys.path for the import."""
    spec = importlib.util.spec_from_file_location("sync_bn_mpi4py", ROOT / "examples" / "sync_bn_mpi4py.py")
    mod = importlib.util.module_from_spec(spec)
    folder = str(ROOT / "examples")
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(mod)
    finally:
        if added:
            sys.path.remove(folder)
    return mod


def assert_close(a, b, what=""):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL, err_msg=what)


# --------------------------------------------------------------------------- NumPy blocks


@pytest.mark.parametrize("sizes", [(3, 1, 0), (5, 5), (0, 4, 2, 1), (2,)], ids=str)
def test_blocks_simulated_ranks_match_concatenated_batch(sizes):
    """The building blocks, one rank after the other: stats -> merge -> elemt, and
    backward_reduce -> sum -> backward_elemt."""
    rng = np.random.default_rng(len(sizes))
    c = 3
    shards = [rng.normal(2.0, 3.0, (n, c, 4)) for n in sizes]
    dys = [rng.normal(size=(n, c, 4)) for n in sizes]
    w, b = rng.normal(1, 0.3, c), rng.normal(0, 0.3, c)
    eps = 1e-5
    stats = [F.batch_norm_stats(x) for x in shards]
    count, mean, m2 = F.merge_stats(*zip(*stats))
    invstd = 1 / np.sqrt(m2 / count + eps)
    ys = [F.batch_norm_elemt(x, mean, invstd, w, b) for x in shards]
    sums = [F.batch_norm_backward_reduce(dy, x, mean, invstd) for dy, x in zip(dys, shards)]
    sum_dy = np.sum([s[0] for s in sums], axis=0)
    sum_dy_xhat = np.sum([s[1] for s in sums], axis=0)
    dxs = [
        F.batch_norm_backward_elemt(dy, x, mean, invstd, w, sum_dy, sum_dy_xhat, count)
        for dy, x in zip(dys, shards)
    ]

    x_all, dy_all = np.concatenate(shards), np.concatenate(dys)
    rm, rv = np.zeros(c), np.ones(c)
    y_ref, mean_ref, invstd_ref = F.native_batch_norm(x_all, w, b, rm, rv, True, 0.1, eps)
    dx_ref, dw_ref, db_ref = F.batch_norm_backward(dy_all, x_all, w, mean_ref, invstd_ref, True)
    assert count == x_all.shape[0] * 4
    assert_close(mean, mean_ref, "mean")
    assert_close(invstd, invstd_ref, "invstd")
    assert_close(np.concatenate(ys), y_ref, "y")
    assert_close(np.concatenate(dxs), dx_ref, "dx")
    assert_close(sum_dy_xhat, dw_ref, "dweight")
    assert_close(sum_dy, db_ref, "dbias")
    # the unbiased variance of the union for the running statistics
    assert_close(0.9 + 0.1 * m2 / (count - 1), rv, "running_var")


@pytest.mark.parametrize("ranks", [1, 2, 3, 5])
def test_mpi4py_example_with_simulated_ranks(ranks):
    """examples/sync_bn_mpi4py.py, ranks as threads sharing a fake communicator."""
    ex = _load_example()
    worst = ex.run_simulated(ranks, lambda comm: ex.demo(comm, steps=2, shape=(7, 4, 3, 3)))
    assert worst[0] <= TOL


def test_mpi4py_example_uneven_and_empty_shards():
    ex = _load_example()
    rng = np.random.default_rng(0)
    x, dy = rng.normal(1, 2, (4, 3, 5)), rng.normal(size=(4, 3, 5))
    bounds = [0, 3, 4, 4]  # shards of 3, 1 and 0 samples

    def rank_fn(comm):
        sl = slice(bounds[comm.rank], bounds[comm.rank + 1])
        bn = ex.SyncBatchNorm(comm, 3, momentum=None, dtype=np.float64)
        y = bn(x[sl])
        return y, bn.backward(dy[sl]), bn.weight_grad, bn.running_var

    res = ex.run_simulated(3, rank_fn)
    ref = cnorm.BatchNorm1d(3, momentum=None, dtype=np.float64)
    assert_close(np.concatenate([r[0] for r in res]), ref(x), "y")
    assert_close(np.concatenate([r[1] for r in res]), ref.backward(dy), "dx")
    assert_close(np.sum([r[2] for r in res], axis=0), ref.weight_grad, "dweight")
    for r in res:
        assert_close(r[3], ref.running_var, "running_var")


# --------------------------------------------------------------------------- torch.distributed

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import cnorm.torch as ct

F64 = torch.float64


@pytest.fixture(autouse=True)
def no_size_threshold(monkeypatch):
    """The tiny test inputs run on cnorm (no size threshold to torch's kernels)."""
    for norm in ct.TORCH_BELOW:
        monkeypatch.setitem(ct.TORCH_BELOW, norm, (0, 0))


# (name, world size, per-rank batch sizes, input shape after N, kwargs, group ranks)
SCENARIOS = [
    ("2d_4_2", 2, (4, 2), (3, 2, 2), {}, None),
    ("1d_3_0_mnone", 2, (3, 0), (4,), {"momentum": None}, None),
    ("1d_3_1_0", 3, (3, 1, 0), (4, 5), {}, None),
    ("2d_2_2_2_noaffine", 3, (2, 2, 2), (2, 3, 1), {"affine": False, "momentum": 0.3}, None),
    ("1d_nobias_1_2_3", 3, (1, 2, 3), (3,), {"bias": False}, None),
    ("3d_group01", 3, (2, 1, 3), (2, 2, 1, 2), {}, (0, 1)),
]
STEPS = 2


def _batch(name, step, sizes, tail):
    """The global batch of one step (the same on every process)."""
    rng = np.random.default_rng([sum(map(ord, name)), step])
    n = sum(sizes)
    x = rng.normal(0.5, 2.0, (n,) + tail) + rng.normal(0, 3, (1, tail[0]) + (1,) * (len(tail) - 1))
    return x, rng.normal(size=(n,) + tail)


def _params(c):
    rng = np.random.default_rng(c)
    return rng.normal(1, 0.3, c), rng.normal(0, 0.3, c)


def _set_params(m, c):
    """The parameters of the scenario's module (the same on every process and the reference)."""
    if m.weight is not None:
        wt, bs = _params(c)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(wt))
            if m.bias is not None:
                m.bias.copy_(torch.from_numpy(bs))


def _bn_class(tail):
    return {1: "BatchNorm1d", 2: "BatchNorm1d", 3: "BatchNorm2d", 4: "BatchNorm3d"}[len(tail)]


def _run_module(m, x, dy):
    x = torch.from_numpy(x).requires_grad_(True)
    for p in m.parameters():
        p.grad = None
    y = m(x)
    y.backward(torch.from_numpy(dy))
    out = {"y": y.detach().numpy().copy(), "dx": x.grad.numpy().copy()}
    if m.weight is not None:
        out["dw"] = m.weight.grad.numpy().copy()
    if m.bias is not None:
        out["db"] = m.bias.grad.numpy().copy()
    return out


def _worker(rank, world, port, outdir):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    cnorm.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        results = {}
        for name, w, sizes, tail, kwargs, group_ranks in SCENARIOS:
            if w != world:
                continue
            group = None
            if group_ranks is not None:
                groups = [
                    dist.new_group(list(group_ranks)),
                    dist.new_group([r for r in range(world) if r not in group_ranks]),
                ]
                group = groups[0] if rank in group_ranks else groups[1]
            c = tail[0]
            m = ct.SyncBatchNorm(c, process_group=group, dtype=F64, **kwargs)
            _set_params(m, c)
            lo = sum(sizes[:rank])
            sl = slice(lo, lo + sizes[rank])
            for step in range(STEPS):
                x, dy = _batch(name, step, sizes, tail)
                for k, v in _run_module(m, x[sl], dy[sl]).items():
                    results[f"{name}/{step}/{k}"] = v
                results[f"{name}/{step}/rm"] = m.running_mean.numpy().copy()
                results[f"{name}/{step}/rv"] = m.running_var.numpy().copy()
                results[f"{name}/{step}/nbt"] = np.array(m.num_batches_tracked.item())
            m.eval()  # eval: no communication
            x, dy = _batch(name, 99, sizes, tail)
            for k, v in _run_module(m, x[sl], dy[sl]).items():
                results[f"{name}/eval/{k}"] = v
        # one value per channel over all processes: every rank raises the same error
        m = ct.SyncBatchNorm(2, dtype=F64)
        try:
            m(torch.ones((1 if rank == 0 else 0, 2), dtype=F64))
        except ValueError as exc:
            results["one_value_error"] = np.array(str(exc))
        np.savez(os.path.join(outdir, f"rank{rank}.npz"), **results)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference(name, sizes, tail, kwargs, ranks):
    """Single process: torch.nn BatchNorm on the concatenation of the shards of ``ranks``."""
    c = tail[0]
    m = getattr(torch.nn, _bn_class(tail))(c, dtype=F64, **kwargs)
    _set_params(m, c)
    bounds = np.cumsum((0,) + tuple(sizes))
    idx = np.concatenate([np.arange(bounds[r], bounds[r + 1]) for r in ranks])
    out = {}
    for step in list(range(STEPS)) + ["eval"]:
        if step == "eval":
            m.eval()
        x, dy = _batch(name, 99 if step == "eval" else step, sizes, tail)
        res = _run_module(m, x[idx], dy[idx])
        res["rm"], res["rv"] = m.running_mean.numpy().copy(), m.running_var.numpy().copy()
        res["nbt"] = m.num_batches_tracked.item()
        offsets = np.cumsum([0] + [sizes[r] for r in ranks])
        res["bounds"] = list(zip(offsets[:-1], offsets[1:]))  # of each rank in x[idx]
        out[step] = res
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_sync_batchnorm_gloo(world, tmp_path):
    mp = pytest.importorskip("torch.multiprocessing")
    port = _free_port()
    mp.spawn(_worker, args=(world, port, str(tmp_path)), nprocs=world, join=True)
    got = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(world)]
    checked = 0
    for name, w, sizes, tail, kwargs, group_ranks in SCENARIOS:
        if w != world:
            continue
        groups = (
            [list(range(world))]
            if group_ranks is None
            else [list(group_ranks), [r for r in range(world) if r not in group_ranks]]
        )
        for ranks in groups:
            ref = _reference(name, sizes, tail, kwargs, ranks)
            for step in list(range(STEPS)) + ["eval"]:
                r = ref[step]
                for i, rank in enumerate(ranks):
                    lo, hi = r["bounds"][i]
                    mine = {
                        k.split("/")[-1]: v for k, v in got[rank].items() if k.startswith(f"{name}/{step}/")
                    }
                    what = f"{name} step {step} rank {rank}"
                    assert_close(mine["y"], r["y"][lo:hi], what + " y")
                    assert_close(mine["dx"], r["dx"][lo:hi], what + " dx")
                    if step != "eval":
                        assert_close(mine["rm"], r["rm"], what + " running_mean")
                        assert_close(mine["rv"], r["rv"], what + " running_var")
                        assert int(mine["nbt"]) == r["nbt"], what
                        checked += 1
                for key in ("dw", "db"):
                    if key in r:
                        total = sum(got[rank][f"{name}/{step}/{key}"] for rank in ranks)
                        assert_close(total, r[key], f"{name} step {step} {key} summed")
    assert checked > 0
    for r in range(world):
        assert "Expected more than 1 value per channel" in str(got[r]["one_value_error"])


# --------------------------------------------------------------------------- no process group


def test_sync_batchnorm_without_distributed_is_batchnorm():
    assert not dist.is_initialized()
    m = ct.SyncBatchNorm(3, momentum=None, dtype=F64)
    ref = torch.nn.BatchNorm2d(3, momentum=None, dtype=F64)
    assert isinstance(m, torch.nn.SyncBatchNorm)
    assert list(m.state_dict()) == list(torch.nn.SyncBatchNorm(3).state_dict())
    for step in range(3):
        if step == 2:
            m.eval()
            ref.eval()
        x, dy = _batch("plain", step, (4,), (3, 2, 2))
        a, b = _run_module(m, x, dy), _run_module(ref, x, dy)
        assert type(m(torch.from_numpy(x).requires_grad_()).grad_fn).__name__ == "BatchNormFunctionBackward"
        ref(torch.from_numpy(x))
        for k in b:
            assert_close(a[k], b[k], k)
        assert_close(m.running_var.numpy(), ref.running_var.numpy())
        assert m.num_batches_tracked.item() == ref.num_batches_tracked.item()
    with pytest.raises(ValueError, match="expected at least 2D input"):
        m(torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="number of input channels should be non-zero"):
        ct.SyncBatchNorm(0)(torch.zeros(2, 0))


def test_convert_sync_batchnorm():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3),
        torch.nn.BatchNorm2d(3),
        torch.nn.Sequential(ct.BatchNorm1d(4, bias=False), torch.nn.LayerNorm(4)),
    )
    model[2].eval()
    params = {n: p for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}
    out = ct.convert_sync_batchnorm(model, process_group="pg")
    assert out is model
    assert type(model[1]) is ct.SyncBatchNorm and type(model[2][0]) is ct.SyncBatchNorm
    assert type(model[2][1]) is torch.nn.LayerNorm
    assert model[1].process_group == "pg" and model[2][0].bias is None
    assert model[1].training and not model[2][0].training
    assert dict(model.named_parameters()) == params
    assert all(b is buffers[n] for n, b in model.named_buffers())
    bn = torch.nn.BatchNorm1d(2)
    new = ct.convert_sync_batchnorm(bn)
    assert type(new) is ct.SyncBatchNorm and new.weight is bn.weight
    assert new.running_mean is bn.running_mean and new.num_batches_tracked is bn.num_batches_tracked
