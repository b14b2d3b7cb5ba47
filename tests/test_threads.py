"""Threads: the thread-count controls, 1 vs 2 OpenMP threads for every norm (inputs big
enough to be split), bitwise repeatable results, and modules called from 4 Python
threads at once giving the results of serial calls."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import DTYPES, assert_nested_equal, assert_threads_agree, threads
from norms import BY_NAME, NORMS, norm_cases

import cnorm
import cnorm.functional as F

f32 = np.float32


# --------------------------------------------------------------------------- controls


def test_openmp_enabled_is_bool():
    assert isinstance(cnorm.openmp_enabled(), bool)


def test_get_num_threads_positive_int():
    n = cnorm.get_num_threads()
    assert isinstance(n, int) and n >= 1


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_set_get_round_trip(restore_threads, n):
    cnorm.set_num_threads(n)
    if cnorm.openmp_enabled():
        assert cnorm.get_num_threads() == n
    else:
        assert cnorm.get_num_threads() == 1


def test_set_num_threads_one_always_one(restore_threads):
    cnorm.set_num_threads(1)
    assert cnorm.get_num_threads() == 1


@pytest.mark.parametrize("bad", [0, -1])
def test_set_num_threads_rejects_non_positive(restore_threads, bad):
    with pytest.raises(ValueError):
        cnorm.set_num_threads(bad)


def test_threadpoolctl_limits_apply(restore_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not cnorm.openmp_enabled():
        pytest.skip("serial build")
    cnorm.set_num_threads(2)
    assert cnorm.get_num_threads() == 2
    with threadpoolctl.threadpool_limits(1):
        assert cnorm.get_num_threads() == 1
        # still computes correctly under the limit
        x = np.random.default_rng(0).normal(size=(64, 8, 16, 16)).astype(np.float32)
        y = cnorm.BatchNorm2d(8)(x)
        assert np.isfinite(y).all()
    assert cnorm.get_num_threads() == 2


# --------------------------------------------------------------------------- 1 vs 2 threads


def _all_outputs(norm, case, x, douts, training):
    """Every output of forward and backward, and the running statistics updated in place."""
    p = norm.params(np.random.default_rng(1), case, x.dtype)
    outs, saved = norm.forward(x, case, p, training)
    grads = norm.backward(douts, x, case, p, saved, training)
    return (
        list(outs)
        + list(norm.stats_of(saved))
        + [grads[k] for k in sorted(grads)]
        + [p[k] for k in ("running_mean", "running_var") if p[k] is not None]
    )


@pytest.mark.parametrize("norm, case, dtype, training", norm_cases("big", modes=True, dtypes=DTYPES))
def test_one_vs_two_threads(restore_threads, norm, case, dtype, training):
    """1 and 2 threads agree to 1e-6 (float32) / 1e-13 (float64) relative; repeated calls
    with the same thread count are bitwise identical."""
    rng = np.random.default_rng(3)
    x = rng.normal(0.5, 2.0, case.shape).astype(dtype)
    douts = tuple(rng.normal(size=case.shape).astype(dtype) for _ in range(norm.n_outputs()))
    with threads(1):
        one = _all_outputs(norm, case, x, douts, training)
    with threads(2):
        two = _all_outputs(norm, case, x, douts, training)
        again = _all_outputs(norm, case, x, douts, training)
    assert_threads_agree(one, two, dtype)
    for i, (a, b) in enumerate(zip(two, again)):
        np.testing.assert_array_equal(b, a, err_msg=f"output {i} (repeat)")


def _training_run(norm, seed):
    """A few training steps (forward + backward) on a fresh module; everything it produced."""
    case, kw, dtype = norm.steps
    shape = case.shape
    rng = np.random.default_rng(seed)
    m = norm.make(case, dtype, **kw)
    r = norm.inputs(rng, case, dtype)
    out = []
    for step in range(4):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(m.dtype)
        outs = norm.call(m, x, r)
        dx = norm.module_backward(m, tuple(rng.standard_normal(shape).astype(m.dtype) for _ in outs))
        out += list(outs) + [dx]
    out += [getattr(m, name + "_grad") for name, _ in m.named_parameters()]
    if getattr(m, "running_mean", None) is not None:
        out += [m.running_mean, m.running_var, np.array(m.num_batches_tracked)]
    m.eval()
    out += list(norm.call(m, np.ones(shape, m.dtype), r))
    return out


# every BatchNorm and one norm of each other family (the others share its kernels)
STEP_NORMS = [
    n for i, n in enumerate(NORMS) if n.family == "batch" or n.family not in {m.family for m in NORMS[:i]}
]


@pytest.mark.parametrize("norm", STEP_NORMS, ids=str)
def test_module_steps_one_vs_two_threads(restore_threads, norm):
    """Modules over a few training steps: 1 and 2 threads agree to 1e-6 relative, and each
    thread count repeats its own bits exactly."""
    cnorm.set_num_threads(1)
    one = _training_run(norm, 300)
    cnorm.set_num_threads(2)
    two = _training_run(norm, 300)
    again = _training_run(norm, 300)
    assert_nested_equal(again, two, "repeat with 2 threads")
    cnorm.set_num_threads(1)
    assert_nested_equal(_training_run(norm, 300), one, "repeat with 1 thread")
    for i, (a, b) in enumerate(zip(one, two)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(float(np.abs(a).max(initial=0.0)), 1e-30)
        assert np.abs(a - b).max(initial=0.0) <= 1e-6 * scale, f"output {i}: 1 vs 2 threads"


def _seeded_data(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(0.5, 2.0, shape)).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    return x, dy


def test_module_results_bitwise_repeatable(restore_threads):
    cnorm.set_num_threads(2)
    x, dy = _seeded_data((32, 16, 24, 24), np.float32, 5)
    outs = []
    for _ in range(3):
        m = cnorm.BatchNorm2d(16)
        y = m(x)
        dx = m.backward(dy)
        outs.append((y, dx, m.weight_grad, m.bias_grad, m.running_mean, m.running_var))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- Python threads


def _in_fresh_thread(fn, *args):
    """Run fn in a new Python thread (the same OpenMP defaults as the workers below)."""
    out = {}

    def target():
        out["result"] = fn(*args)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    return out["result"]


def _run_concurrently(fns, n_threads=4):
    """Call fns[i]() in thread i, all released together by a Barrier; return the results
    (the first exception, in the order of fns, is raised)."""
    barrier = threading.Barrier(n_threads)

    def released(fn):
        barrier.wait()
        return fn()

    with ThreadPoolExecutor(n_threads) as pool:
        futures = [pool.submit(released, fns[i]) for i in range(n_threads)]
    return [f.result() for f in futures]


@pytest.mark.parametrize("cap", [1, 2])
def test_same_module_from_four_threads(restore_threads, cap):
    """One eval-mode BatchNorm2d and one LayerNorm shared by 4 threads (forward is
    stateless there apart from the saved input): the results of serial calls."""
    cnorm.set_num_threads(cap)
    rng = np.random.default_rng(10)
    bn = cnorm.BatchNorm2d(8)
    bn(rng.standard_normal((8, 8, 20, 20)).astype(f32))
    bn.eval()
    ln = cnorm.LayerNorm(300)
    ln.weight[...] = rng.uniform(0.5, 1.5, 300)
    inputs = [[rng.standard_normal((16, 8, 24, 24)).astype(f32) for _ in range(5)] for _ in range(4)]
    ln_inputs = [[rng.standard_normal((256, 300)).astype(f32) for _ in range(5)] for _ in range(4)]

    def work(i):
        return (
            [bn(x) for x in inputs[i]]
            + [ln(x) for x in ln_inputs[i]]
            + [F.layer_norm(x, (300,), ln.weight, ln.bias) for x in ln_inputs[i]]
        )

    serial = [_in_fresh_thread(work, i) for i in range(4)]
    for _ in range(3):
        concurrent = _run_concurrently([lambda i=i: work(i) for i in range(4)])
        assert_nested_equal(concurrent, serial, "concurrent vs serial")


# four different norms in four threads at once: every norm is in one group
GROUPS = [NORMS[i : i + 4] for i in range(0, len(NORMS), 4)]
GROUPS[-1] = (GROUPS[-1] + NORMS)[:4]


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: "+".join(n.name for n in g))
@pytest.mark.parametrize("cap", [1, 2])
def test_different_modules_from_four_threads(restore_threads, cap, group):
    cnorm.set_num_threads(cap)
    serial = [_in_fresh_thread(_training_run, n, 100 + i) for i, n in enumerate(group)]
    for _ in range(2):
        concurrent = _run_concurrently(
            [lambda i=i, n=n: _training_run(n, 100 + i) for i, n in enumerate(group)]
        )
        assert_nested_equal(concurrent, serial, "concurrent vs serial")
    # the same kind of module in every thread, different data
    bn2d = BY_NAME["BatchNorm2d"]
    serial = [_in_fresh_thread(_training_run, bn2d, 200 + i) for i in range(4)]
    concurrent = _run_concurrently([lambda i=i: _training_run(bn2d, 200 + i) for i in range(4)])
    assert_nested_equal(concurrent, serial, "bn2d x4")
