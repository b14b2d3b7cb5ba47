"""Property-based tests (hypothesis) against the float64 reference (cnorm.slow).

Drawn: shapes (size-1 dims, primes, empty dims, lengths around the 512-element blocks and
big enough for 2 threads), dtype, train/eval, affine / bias / track_running_stats flags,
momentum (incl. None = cumulative average), memory layout, data offset and scale, and the
thread count (1, 2). Every run is reproducible (derandomize=True, no example database).
Example counts add up to EXAMPLES_TOTAL (>= 300); the whole file takes well under 60 s.
"""

import math
import re

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from conftest import assert_close, assert_reduction_close, bn_axes, bn_class
from conftest import threads as _Threads
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from norms import reference as slow
from reference_models import RefBatchNorm

import cnorm
import cnorm.functional as F

# (hypothesis seeds the drawn examples from each test's source: the tests keep the names
# slow and _Threads, so that they draw the examples they always drew)
EXAMPLES = {"bn_module": 160, "ln_module": 110, "bn_functional": 60, "bn_sequence": 40,
            "ln_functional": 40}
EXAMPLES_TOTAL = sum(EXAMPLES.values())
MAX_ELEMENTS = 150_000


def _settings(name):
    return settings(max_examples=EXAMPLES[name], deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# sizes: 1, primes, small composites; lengths around the 512-element exact-sum block
SMALL = st.sampled_from([1, 2, 3, 5, 7, 11, 13])
SPATIAL = st.sampled_from([1, 2, 3, 4, 5, 7, 13, 31, 64, 97, 257, 511, 512, 513, 1031])
BATCH = st.sampled_from([0, 1, 2, 3, 5, 8, 17, 64, 131])
CHANNELS = st.sampled_from([0, 1, 2, 3, 7, 16, 61, 512, 1031])
DTYPES = st.sampled_from([np.float32, np.float64])
MOMENTA = st.sampled_from([None, 0.1, 0.0, 1.0, 0.5, 0.01])
LOCS = st.sampled_from([0.0, 1.0, -3.0, 100.0, 1e4, 1e5])
SCALES = st.sampled_from([1e-3, 0.5, 1.0, 10.0])
LAYOUTS = st.sampled_from(["C", "C", "F", "strided", "negative"])


@st.composite
def bn_shapes(draw):
    kind = draw(st.sampled_from(["1d_NC", "1d_NCL", "2d", "3d"]))
    n, c = draw(BATCH), draw(CHANNELS)
    if kind == "1d_NC":
        shape = (n, c)
    elif kind == "1d_NCL":
        shape = (n, c, draw(SPATIAL))
    elif kind == "2d":
        shape = (n, c, draw(SMALL), draw(SPATIAL))
    else:
        shape = (n, c, draw(SMALL), draw(SMALL), draw(st.sampled_from([1, 2, 3, 5, 8, 13, 64])))
    assume(math.prod(shape) <= MAX_ELEMENTS)
    return shape


@st.composite
def ln_cases(draw):
    """(shape, normalized_shape)."""
    k = draw(st.sampled_from([1, 1, 1, 2]))
    ns = tuple(draw(st.sampled_from([0, 1, 2, 3, 5, 7, 16, 97, 511, 512, 513, 1024, 2053]))
               for _ in range(k))
    lead = tuple(draw(st.lists(st.sampled_from([0, 1, 2, 3, 5, 13, 64]), min_size=0, max_size=2)))
    shape = lead + ns
    assume(math.prod(shape) <= MAX_ELEMENTS)
    return shape, ns


def _data(seed, shape, dtype, loc, scale, per_channel=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * scale + loc
    if per_channel and len(shape) >= 2 and shape[1] > 0:
        x = x + rng.standard_normal(shape[1]).reshape((1, -1) + (1,) * (len(shape) - 2)) * scale
    return x.astype(dtype), rng


def _layout(x, kind):
    if kind == "F":
        return np.asfortranarray(x)
    if kind == "strided" and x.ndim >= 1:
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
        big[..., ::2] = x
        return big[..., ::2]
    if kind == "negative" and x.ndim >= 1:
        return np.flip(np.flip(x, axis=0).copy(), axis=0)
    return x


def _fwd_scale(dtype, loc, scale):
    """Absolute tolerance multiplier for outputs: float64 references are only as accurate as
    the float64 mean of data at offset `loc` (relative error ~ 1e-16 * |loc| / scale)."""
    if np.dtype(dtype) == np.float64:
        return 1.0 + abs(loc) / scale * 1e-3
    return 1.0


def _bn_module(ndim, C, **kw):
    return bn_class(ndim)(C, **kw)


def _grad_terms_bn(x, mean, invstd):
    nd = x.ndim
    view = (1, -1) + (1,) * (nd - 2)
    return (x.astype(np.float64) - np.reshape(mean, view)) * np.reshape(invstd, view)


# ---------------------------------------------------------------------------------------
# BatchNorm modules: one forward + backward in the drawn mode, against RefBatchNorm
# ---------------------------------------------------------------------------------------

@_settings("bn_module")
@given(shape=bn_shapes(), dtype=DTYPES, training=st.booleans(), affine=st.booleans(),
       bias=st.booleans(), track=st.booleans(), momentum=MOMENTA, threads=st.sampled_from([1, 2]),
       loc=LOCS, scale=SCALES, layout=LAYOUTS, seed=st.integers(0, 2 ** 32 - 1))
def test_bn_module_matches_reference(shape, dtype, training, affine, bias, track, momentum,
                                     threads, loc, scale, layout, seed):
    C = shape[1]
    x, rng = _data(seed, shape, dtype, loc, scale)
    dy = rng.standard_normal(shape).astype(dtype)
    m = _bn_module(len(shape), C, momentum=momentum, affine=affine, track_running_stats=track,
                   dtype=dtype, bias=bias)
    w = rng.uniform(0.5, 1.5, C).astype(dtype) if affine else None
    b = rng.uniform(-1, 1, C).astype(dtype) if affine and bias else None
    ref = RefBatchNorm(C, momentum=momentum, affine=affine, track_running_stats=track, bias=bias,
                       weight=w, bias_value=b)
    if affine:
        m.weight[...] = w
        if bias:
            m.bias[...] = b
    if track:                        # non-trivial running statistics
        rm = (rng.standard_normal(C) * scale + loc).astype(dtype)
        rv = (rng.uniform(0.5, 2.0, C) * scale * scale).astype(dtype)
        m.running_mean[...] = rm
        m.running_var[...] = rv
        ref.running_mean, ref.running_var = rm.astype(np.float64), rv.astype(np.float64)
        m.num_batches_tracked = ref.num_batches_tracked = int(rng.integers(0, 5))
    m.train(training)
    ref.training = training
    use_batch = training or not track
    M = x.size // C if C else 0
    with _Threads(threads):
        if use_batch and M == 1:
            with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
                m(_layout(x, layout))
            return
        y = m(_layout(x, layout))
        dx = m.backward(_layout(dy, layout))
    y_ref = ref.forward(x)
    dx_ref = ref.backward(dy)
    fs = _fwd_scale(dtype, loc, scale)
    assert y.shape == shape and y.dtype == np.dtype(dtype) and y.flags.c_contiguous
    assert_close(y, y_ref, dtype, scale=fs * (1 + (np.abs(b).max() if b is not None and b.size else 0)),
                 err_msg="forward")
    dx_scale = fs * max(1.0, float(np.abs(dx_ref).max(initial=0.0)))
    assert_close(dx, dx_ref, dtype, scale=dx_scale, err_msg="dx")
    axes = bn_axes(len(shape))
    if affine:
        terms = dy.astype(np.float64) * _grad_terms_bn(x, *ref._saved[1:3])
        assert_reduction_close(m.weight_grad, ref.weight_grad, terms * fs, axes, dtype, "dweight")
        if bias:
            assert_reduction_close(m.bias_grad, ref.bias_grad, dy, axes, dtype, "dbias")
    if track:
        assert m.num_batches_tracked == ref.num_batches_tracked
        assert_close(m.running_mean, ref.running_mean, dtype, scale=fs * max(abs(loc), scale),
                     err_msg="running_mean")
        assert_close(m.running_var, ref.running_var, dtype, scale=fs * scale * scale,
                     err_msg="running_var")
    else:
        assert m.running_mean is None and m.num_batches_tracked is None


# ---------------------------------------------------------------------------------------
# BatchNorm: a drawn sequence of train / eval steps (state machine)
# ---------------------------------------------------------------------------------------

@_settings("bn_sequence")
@given(shape=bn_shapes(), dtype=DTYPES, modes=st.lists(st.booleans(), min_size=2, max_size=5),
       momentum=MOMENTA, track=st.booleans(), threads=st.sampled_from([1, 2]),
       seed=st.integers(0, 2 ** 32 - 1))
def test_bn_train_eval_sequence(shape, dtype, modes, momentum, track, threads, seed):
    C = shape[1]
    M = shape[0] * math.prod(shape[2:])
    assume(M != 1)
    rng = np.random.default_rng(seed)
    m = _bn_module(len(shape), C, momentum=momentum, track_running_stats=track, dtype=dtype)
    ref = RefBatchNorm(C, momentum=momentum, track_running_stats=track)
    with _Threads(threads):
        for step, training in enumerate(modes):
            x = (rng.standard_normal(shape) * (1 + step) + step).astype(dtype)
            dy = rng.standard_normal(shape).astype(dtype)
            m.train(training)
            ref.training = training
            y, y_ref = m(x), ref.forward(x)
            assert_close(y, y_ref, dtype, scale=1 + step, err_msg=f"step {step} forward")
            dx, dx_ref = m.backward(dy), ref.backward(dy)
            assert_close(dx, dx_ref, dtype, scale=max(1.0, float(np.abs(dx_ref).max(initial=0))),
                         err_msg=f"step {step} dx")
            if track:
                assert m.num_batches_tracked == ref.num_batches_tracked
                assert_close(m.running_mean, ref.running_mean, dtype, scale=1 + step)
                assert_close(m.running_var, ref.running_var, dtype, scale=(1 + step) ** 2)
    # gradients accumulate over the steps (sum of |dy| over every step bounds the error)
    assert m.weight_grad.shape == (C,) and m.bias_grad.shape == (C,)
    assert_close(m.bias_grad, ref.bias_grad, dtype, scale=max(1.0, 4.0 * M * len(modes)))


# ---------------------------------------------------------------------------------------
# LayerNorm module
# ---------------------------------------------------------------------------------------

@_settings("ln_module")
@given(case=ln_cases(), dtype=DTYPES, affine=st.booleans(), bias=st.booleans(),
       training=st.booleans(), threads=st.sampled_from([1, 2]), loc=LOCS, scale=SCALES,
       layout=LAYOUTS, eps=st.sampled_from([1e-5, 1e-3, 1e-12]), seed=st.integers(0, 2 ** 32 - 1))
def test_ln_module_matches_reference(case, dtype, affine, bias, training, threads, loc, scale,
                                     layout, eps, seed):
    shape, ns = case
    x, rng = _data(seed, shape, dtype, loc, scale, per_channel=False)
    dy = rng.standard_normal(shape).astype(dtype)
    m = cnorm.LayerNorm(ns, eps=eps, elementwise_affine=affine, bias=bias, dtype=dtype)
    w = b = None
    if affine:
        m.weight[...] = w = rng.uniform(0.5, 1.5, ns).astype(dtype)
        if bias:
            m.bias[...] = b = rng.uniform(-1, 1, ns).astype(dtype)
    m.train(training)                  # no effect on LayerNorm
    D = math.prod(ns)
    with _Threads(threads):
        y = m(_layout(x, layout))
        dx = m.backward(_layout(dy, layout))
    assert y.shape == shape and y.dtype == np.dtype(dtype) and y.flags.c_contiguous
    if x.size == 0:
        assert dx.shape == shape
        if affine:
            np.testing.assert_array_equal(m.weight_grad, np.zeros(ns, dtype))
        return
    y_ref = slow.layer_norm_forward(x, ns, w, b, eps)[0]
    dx_ref, dw_ref, db_ref = slow.layer_norm_backward(dy, x, ns, w, eps)
    fs = _fwd_scale(dtype, loc, scale)
    # rows of one element: rstd = 1/sqrt(eps), dx ~ ulp * rstd
    rstd_max = 1.0 / math.sqrt(eps) if D == 1 else 1.0
    # with a tiny eps, a row whose float32 values are all equal has var = 0 and rstd ~ 1e6
    assert_close(y, y_ref, dtype, scale=fs * (2 if b is not None else 1), err_msg="forward")
    dx_scale = fs * max(1.0, float(np.abs(dx_ref).max(initial=0.0))) * rstd_max
    assert_close(dx, dx_ref, dtype, scale=dx_scale, err_msg="dx")
    lead = tuple(range(len(shape) - len(ns)))
    if affine:
        axes = tuple(range(x.ndim - len(ns), x.ndim))
        x64 = x.astype(np.float64)
        mu = x64.mean(axis=axes, keepdims=True)
        xhat = (x64 - mu) / np.sqrt(((x64 - mu) ** 2).mean(axis=axes, keepdims=True) + eps)
        assert_reduction_close(m.weight_grad, dw_ref, dy * xhat * fs, lead, dtype, "dweight")
        if bias:
            assert_reduction_close(m.bias_grad, db_ref, dy, lead, dtype, "dbias")


# ---------------------------------------------------------------------------------------
# functional batch norm with explicit running statistics (updated in place)
# ---------------------------------------------------------------------------------------

@_settings("bn_functional")
@given(shape=bn_shapes(), dtype=DTYPES, training=st.booleans(), with_running=st.booleans(),
       affine=st.booleans(), momentum=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
       threads=st.sampled_from([1, 2]), loc=LOCS, scale=SCALES, seed=st.integers(0, 2 ** 32 - 1))
def test_functional_batch_norm_matches_reference(shape, dtype, training, with_running, affine,
                                                 momentum, threads, loc, scale, seed):
    C = shape[1]
    M = shape[0] * math.prod(shape[2:])
    assume(with_running or training)
    assume(not (training and M == 1))
    x, rng = _data(seed, shape, dtype, loc, scale)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.uniform(0.5, 1.5, C).astype(dtype) if affine else None
    b = rng.uniform(-1, 1, C).astype(dtype) if affine else None
    rm = (rng.standard_normal(C) * scale + loc).astype(dtype) if with_running else None
    rv = (rng.uniform(0.5, 2, C) * scale ** 2).astype(dtype) if with_running else None
    rm0 = None if rm is None else rm.copy()
    rv0 = None if rv is None else rv.copy()
    with _Threads(threads):
        y, mean, invstd = F.native_batch_norm(x, w, b, rm, rv, training, momentum, 1e-5)
        dx, dw, db = F.batch_norm_backward(dy, x, w, mean, invstd, training)
    y_ref, rm_ref, rv_ref = slow.batch_norm_forward(x, w, b, rm0, rv0, training, momentum, 1e-5)
    fs = _fwd_scale(dtype, loc, scale)
    assert_close(y, y_ref, dtype, scale=2 * fs, err_msg="forward")
    assert mean.dtype == np.float64 and invstd.shape == (C,)
    if training:
        m_ref, v_ref = slow.batch_norm_stats(x)
    else:
        m_ref, v_ref = rm0.astype(np.float64), rv0.astype(np.float64)
    inv_ref = 1 / np.sqrt(v_ref + 1e-5)
    if M:
        np.testing.assert_allclose(mean, m_ref, rtol=1e-6, atol=1e-6 * scale * fs)
        np.testing.assert_allclose(invstd, inv_ref, rtol=1e-5)
    dx_ref, dw_ref, db_ref = slow.batch_norm_backward(dy, x, w, m_ref, inv_ref, training)
    assert_close(dx, dx_ref, dtype, scale=fs * max(1.0, float(np.abs(dx_ref).max(initial=0))),
                 err_msg="dx")
    axes = bn_axes(len(shape))
    assert_reduction_close(db, db_ref, dy, axes, dtype, "dbias")
    assert_reduction_close(dw, dw_ref, dy * _grad_terms_bn(x, m_ref, inv_ref) * fs, axes, dtype,
                           "dweight")
    if with_running:
        assert_close(rm, rm_ref, dtype, scale=fs * max(abs(loc), scale), err_msg="running_mean")
        assert_close(rv, rv_ref, dtype, scale=fs * scale * scale, err_msg="running_var")


# ---------------------------------------------------------------------------------------
# functional layer norm: the returned statistics
# ---------------------------------------------------------------------------------------

@_settings("ln_functional")
@given(case=ln_cases(), dtype=DTYPES, threads=st.sampled_from([1, 2]), loc=LOCS, scale=SCALES,
       seed=st.integers(0, 2 ** 32 - 1))
def test_functional_layer_norm_stats(case, dtype, threads, loc, scale, seed):
    shape, ns = case
    x, _ = _data(seed, shape, dtype, loc, scale, per_channel=False)
    with _Threads(threads):
        y, mean, rstd = F.native_layer_norm(x, ns, None, None, 1e-5)
    lead = shape[: len(shape) - len(ns)]
    assert mean.shape == lead and rstd.shape == lead and mean.dtype == np.float64
    if x.size == 0:
        return
    y_ref, m_ref, r_ref = slow.layer_norm_forward(x, ns, None, None, 1e-5)
    fs = _fwd_scale(dtype, loc, scale)
    assert_close(y, y_ref, dtype, scale=fs, err_msg="forward")
    np.testing.assert_allclose(mean, m_ref, rtol=1e-7, atol=1e-7 * scale * fs)
    np.testing.assert_allclose(rstd, r_ref, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# no channel (C = 0) in a batch of one (N = 1): expected values, as torch's F.batch_norm
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 0), (1, 0, 1), (1, 0, 5), (1, 0, 2, 3), (1, 0, 1, 1, 1)])
@pytest.mark.parametrize("training", [True, False])
def test_bn_no_channel_batch_of_one(shape, training):
    """torch counts N * prod(spatial) values per channel even without a channel: in training
    one value per channel raises its ValueError; otherwise the output is empty, of the input's
    shape, with empty float64 statistics, and the backward gives an empty dx."""
    per_channel = shape[0] * math.prod(shape[2:])  # not x.size // C: C is 0
    x = np.zeros(shape, np.float32)
    rm, rv = np.zeros(0, np.float32), np.ones(0, np.float32)
    m = bn_class(len(shape))(0)
    m.train(training)
    if training and per_channel == 1:
        msg = f"Expected more than 1 value per channel when training, got input size {shape}"
        with pytest.raises(ValueError, match=re.escape(msg)):
            F.native_batch_norm(x, None, None, rm, rv, True, 0.1, 1e-5)
        with pytest.raises(ValueError, match=re.escape(msg)):
            m(x)
        return
    y, mean, invstd = F.native_batch_norm(x, None, None, rm, rv, training, 0.1, 1e-5)
    assert y.shape == shape and y.dtype == np.float32
    assert mean.shape == invstd.shape == (0,) and mean.dtype == np.float64
    y = m(x)
    dx = m.backward(np.zeros(shape, np.float32))
    assert y.shape == dx.shape == shape and y.dtype == dx.dtype == np.float32
    assert m.weight_grad.shape == m.bias_grad.shape == m.running_mean.shape == (0,)
    assert m.num_batches_tracked == (1 if training else 0)
    try:
        import torch
    except ImportError:
        return
    t = torch.nn.functional.batch_norm(torch.zeros(shape), torch.zeros(0), torch.ones(0),
                                       training=training)
    assert tuple(t.shape) == shape


def test_example_budget():
    """The CI budget of examples (reported in the suite summary)."""
    assert EXAMPLES_TOTAL >= 300
