"""Issue 14, "the whole float64 range": every norm, forward and backward, on float64 data of
magnitude 2**996 (~1e300), 2**664 (~1e200), 2**512 (~1e154), down to 2**-996 (~1e-300),
2**-1022 (half of the values subnormal) and 2**-1040 (all subnormal).

The reference cannot overflow: the data are ``x = u * 2**k`` with ``u`` of order one
(``u`` is recovered exactly as ``x * 2**-k``, also from subnormals), and the norms are
scale-invariant when eps scales with the variance. With ``eps_x = eps_u * 4**k``:

    y(x; eps_x) = y(u; eps_u)                 (output, also after weight/bias/ReLU)
    mean_x = mean_u * 2**k, rstd_x = rstd_u * 2**-k   (returned statistics)
    dx(x, dy) = dx(u, dy) * 2**-k, dweight and dbias unchanged
    running_mean: * 2**k, running_var: * 4**k (checked where representable)

and a gradient ``dy * 2**j`` scales dx, dweight and dbias by ``2**j`` (used below 2**-1000
to keep dx finite). The reference is a plain float64 NumPy computation on ``u``.
eps: 1e-5 for the big magnitudes (``eps_u`` = 1e-5 * 4**-k, negligible or 0); 0 for the
tiny ones (BatchNorm in training needs eps > 0: the smallest subnormal, 5e-324), and two
cases where eps matters: 2**500 with eps = 2**999 and 2**-500 with eps = 2**-1001
(``eps_u`` = 0.5).

At the top of the range: statistics at 2**1018, x - mean beyond DBL_MAX (2**1023), the
backward at 2**1018 (its sums of dy * (x - mean) overflow); and rows the cheap check
flags that keep their plain results (zeros, constants, NaN, Inf).
"""

import math

import numpy as np
import pytest

import cnorm
import cnorm.functional as F

TINY = 5e-324  # the smallest positive float64


class Scale:
    def __init__(self, name, k, eps_x=None, forward_only=False):
        self.name, self.k, self.forward_only = name, k, forward_only
        self.eps_x = eps_x  # None: 1e-5 for k > 0, 0 (BN training: TINY) for k < 0
        self.j = -16 if k < -1000 else 0  # dy = dy_u * 2**j keeps dx finite

    def eps(self, needs_positive=False):
        if self.eps_x is not None:
            return self.eps_x
        if self.k > 0:
            return 1e-5
        return TINY if needs_positive else 0.0

    def __repr__(self):
        return self.name


SCALES = [
    Scale("2^996", 996),
    Scale("2^664", 664),
    Scale("2^512", 512),
    Scale("2^500_eps2^999", 500, eps_x=math.ldexp(0.5, 1000)),
    Scale("2^-500_eps2^-1001", -500, eps_x=math.ldexp(0.5, -1000)),
    Scale("2^-512", -512),
    Scale("2^-996", -996),
    Scale("2^-1022_half_subnormal", -1022),
    Scale("2^-1040_subnormal", -1040, forward_only=True),
]
EVAL_SCALES = [s for s in SCALES if abs(s.k) <= 500]  # running_var * 4**k representable


def scaled(u, k):
    """(x, u_exact): x = u * 2**k rounded to float64 (subnormals lose bits), and the u that
    x represents exactly."""
    x = np.ldexp(u, k)
    with np.errstate(over="raise"):
        return x, np.ldexp(x, -k)


def eps_unit(eps_x, k):
    """eps_u = eps_x * 4**-k (exact; 0 when it underflows, where it is negligible)."""
    return math.ldexp(eps_x, -2 * k) if eps_x else 0.0


# ---------------------------------------------------------------------------------------
# float64 reference on unit-scale data: rows of values normalized together
# ---------------------------------------------------------------------------------------


def _rows_fwd(rows, eps, rms=False):
    mean = np.zeros(rows.shape[0]) if rms else rows.mean(axis=1)
    c = rows - mean[:, None]
    ms = (c * c).mean(axis=1)
    rstd = 1.0 / np.sqrt(ms + eps)
    return c * rstd[:, None], mean, rstd, ms


def _rows_bwd(g, xhat, rstd, rms=False):
    mg = 0.0 if rms else g.mean(axis=1, keepdims=True)
    return rstd[:, None] * (g - mg - xhat * (g * xhat).mean(axis=1, keepdims=True))


def ref_layer_norm(x, dy, eps, w, b, rms=False):
    """x (M, D), w/b (D,)."""
    xhat, mean, rstd, _ = _rows_fwd(x, eps, rms)
    y = xhat * w + (0.0 if b is None else b)
    dx = _rows_bwd(dy * w, xhat, rstd, rms)
    return {"y": y, "mean": mean, "rstd": rstd, "dx": dx, "dw": (dy * xhat).sum(0), "db": dy.sum(0)}


def _per_channel(y, dx, dy, xhat, **stats):
    """The outputs of a norm with per-channel weight over (N, C, S): y, dx, dw, db, stats."""
    return {"y": y, "dx": dx, "dw": (dy * xhat).sum((0, 2)), "db": dy.sum((0, 2)), **stats}


def ref_group_norm(x, dy, eps, w, b, groups):
    """x (N, C, S), w/b (C,): rows (N*G, C/G*S)."""
    n, _c, _s = x.shape
    rows = x.reshape(n * groups, -1)
    xhat, mean, rstd, var = _rows_fwd(rows, eps)
    wf = np.broadcast_to(w[None, :, None], x.shape).reshape(rows.shape)
    dx = _rows_bwd(dy.reshape(rows.shape) * wf, xhat, rstd).reshape(x.shape)
    xhat = xhat.reshape(x.shape)
    y = xhat * w[None, :, None] + b[None, :, None]
    return _per_channel(y, dx, dy, xhat, mean=mean, rstd=rstd, var=var)


def ref_batch_norm(x, dy, eps, w, b, relu=False):
    """Training batch norm of x (N, C, S): rows (C, N*S)."""
    n, c, s = x.shape
    rows = x.transpose(1, 0, 2).reshape(c, -1)
    xhat, mean, rstd, var = _rows_fwd(rows, eps)
    xhat = xhat.reshape(c, n, s).transpose(1, 0, 2)
    y = xhat * w[None, :, None] + b[None, :, None]
    if relu:
        dy = dy * (y > 0)
        y = np.maximum(y, 0.0)
    g = (dy * w[None, :, None]).transpose(1, 0, 2).reshape(c, -1)
    dx = _rows_bwd(g, xhat.transpose(1, 0, 2).reshape(c, -1), rstd)
    dx = dx.reshape(c, n, s).transpose(1, 0, 2)
    return _per_channel(y, dx, dy, xhat, mean=mean, rstd=rstd, var=var, count=n * s)


def ref_batch_norm_eval(x, dy, eps, w, b, rm, rv, relu=False):
    invstd = 1.0 / np.sqrt(rv + eps)
    xhat = (x - rm[None, :, None]) * invstd[None, :, None]
    y = xhat * w[None, :, None] + b[None, :, None]
    if relu:
        dy = dy * (y > 0)
        y = np.maximum(y, 0.0)
    return _per_channel(y, dy * (w * invstd)[None, :, None], dy, xhat)


# ---------------------------------------------------------------------------------------
# the cases: cnorm call on x, reference on u, the power of 2**k of every output
# ---------------------------------------------------------------------------------------


def _params(c, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(1.0, 0.3, c), rng.normal(0.0, 0.3, c)


def _data(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(1.0, 1.0, shape), rng.normal(0.0, 1.0, shape)


# output name -> exponent of 2**k (dx, dw, db additionally get 2**j)
EXP = {
    "y": 0,
    "mean": 1,
    "rstd": -1,
    "dx": -1,
    "dw": 0,
    "db": 0,
    "s": 1,
    "running_mean": 1,
    "running_var": 2,
    "m2": 2,
    "sum_dy": 0,
    "sum_dy_xhat": 0,
    "count": None,
}
GRAD = {"dx", "dw", "db", "sum_dy", "sum_dy_xhat"}


def _rows_case(sc, seed):
    """(64, 48) rows at scale 2**k with gradients at 2**j: u, dyu (unit), x, dy, w, b, eps."""
    u, dyu = _data((64, 48), seed)
    w, b = _params(48, seed)
    x, u = scaled(u, sc.k)
    return u, dyu, x, np.ldexp(dyu, sc.j), w, b, sc.eps()


def case_layer_norm(sc):
    u, dyu, x, dy, w, b, eps = _rows_case(sc, 1)
    y, mean, rstd = F.native_layer_norm(x, (48,), w, b, eps)
    got = {"y": y, "mean": mean, "rstd": rstd}
    if not sc.forward_only:
        got.update(zip(("dx", "dw", "db"), F.layer_norm_backward(dy, x, (48,), mean, rstd, w)))
    return got, ref_layer_norm(u, dyu, eps_unit(eps, sc.k), w, b)


def case_rms_norm(sc):
    u, dyu, x, dy, w, _, eps = _rows_case(sc, 2)
    y, rrms = F.native_rms_norm(x, (48,), w, eps)
    got = {"y": y, "rstd": rrms}
    if not sc.forward_only:
        got.update(zip(("dx", "dw"), F.rms_norm_backward(dy, x, (48,), rrms, w)))
    ref = ref_layer_norm(u, dyu, eps_unit(eps, sc.k), w, None, rms=True)
    del ref["mean"], ref["db"]
    return got, ref


def case_add_layer_norm(sc):
    rng = np.random.default_rng(3)
    xu, ru = rng.normal(0.5, 1.0, (64, 48)), rng.normal(0.5, 1.0, (64, 48))
    dyu, dsu = rng.normal(size=(64, 48)), rng.normal(size=(64, 48))
    w, b = _params(48, 3)
    x, _ = scaled(xu, sc.k)
    r, _ = scaled(ru, sc.k)
    s_exact = x + r  # what the fused sum must be, bit for bit
    su = np.ldexp(s_exact, -sc.k)
    eps = sc.eps()
    y, s, mean, rstd = F.native_add_layer_norm(x, r, (48,), w, b, eps)
    np.testing.assert_array_equal(s, s_exact)
    got = {"y": y, "mean": mean, "rstd": rstd}
    ref = ref_layer_norm(su, dyu, eps_unit(eps, sc.k), w, b)
    if not sc.forward_only:
        dy = np.ldexp(dyu, sc.j)
        dsum = np.ldexp(dsu, sc.j - sc.k)  # the gradient reaching s scales as dx
        got.update(zip(("dx", "dw", "db"), F.add_layer_norm_backward(dy, dsum, s, (48,), mean, rstd, w)))
        ref["dx"] = ref["dx"] + dsu
    return got, ref


def case_group_norm(sc):
    u, dyu = _data((4, 6, 40), 4)
    u += np.arange(6)[None, :, None]  # different group means
    w, b = _params(6, 4)
    x, u = scaled(u, sc.k)
    dy = np.ldexp(dyu, sc.j)
    eps = sc.eps()
    y, mean, rstd = F.native_group_norm(x, 3, w, b, eps)
    got = {"y": y, "mean": mean.reshape(-1), "rstd": rstd.reshape(-1)}
    if not sc.forward_only:
        got.update(zip(("dx", "dw", "db"), F.group_norm_backward(dy, x, 3, mean, rstd, w)))
    ref = ref_group_norm(u, dyu, eps_unit(eps, sc.k), w, b, 3)
    del ref["var"]
    return got, ref


def case_instance_norm(sc):
    u, dyu = _data((4, 3, 40), 5)
    w, b = _params(3, 5)
    rm_u, rv_u = np.array([0.5, -1.0, 2.0]), np.array([1.0, 2.0, 0.5])
    x, u = scaled(u, sc.k)
    rm, rm_u = scaled(rm_u, sc.k)
    track_var = abs(2 * sc.k) <= 1000
    rv = np.ldexp(rv_u, 2 * sc.k) if track_var else np.ones(3)
    dy = np.ldexp(dyu, sc.j)
    eps = sc.eps()
    y, mean, rstd = F.native_instance_norm(x, w, b, rm, rv, True, 0.1, eps)
    got = {"y": y, "mean": mean.reshape(-1), "rstd": rstd.reshape(-1), "running_mean": rm}
    if track_var:
        got["running_var"] = rv
    if not sc.forward_only:
        got.update(zip(("dx", "dw", "db"), F.instance_norm_backward(dy, x, w, mean, rstd, True)))
    ref = ref_group_norm(u, dyu, eps_unit(eps, sc.k), w, b, 3)
    s = u.shape[2]
    ref["running_mean"] = 0.9 * rm_u + 0.1 * ref["mean"].reshape(4, 3).mean(0)
    ref["running_var"] = 0.9 * rv_u + 0.1 * (ref.pop("var").reshape(4, 3) * s / (s - 1)).mean(0)
    return got, ref


def _case_batch_norm(sc, shape, relu, seed):
    u, dyu = _data(shape, seed)
    c = shape[1]
    u += np.linspace(-2, 2, c).reshape((1, c) + (1,) * (len(shape) - 2))
    w, b = _params(c, seed)
    rm_u, rv_u = np.linspace(-1, 1, c), np.linspace(0.5, 2, c)
    x, u = scaled(u, sc.k)
    rm, rm_u = scaled(rm_u, sc.k)
    track_var = abs(2 * sc.k) <= 1000
    rv = np.ldexp(rv_u, 2 * sc.k) if track_var else np.ones(c)
    dy = np.ldexp(dyu, sc.j)
    eps = sc.eps(needs_positive=True)
    fwd = F.native_batch_norm_relu if relu else F.native_batch_norm
    y, mean, invstd = fwd(x, w, b, rm, rv, True, 0.1, eps)
    got = {"y": y, "mean": mean, "rstd": invstd, "running_mean": rm}
    if track_var:
        got["running_var"] = rv
    if not sc.forward_only:
        if relu:
            grads = F.batch_norm_relu_backward(dy, x, w, mean, invstd, True, y)
        else:
            grads = F.batch_norm_backward(dy, x, w, mean, invstd, True)
        got.update(zip(("dx", "dw", "db"), grads))
    n3 = (shape[0], c, -1)
    ref = ref_batch_norm(u.reshape(n3), dyu.reshape(n3), eps_unit(eps, sc.k), w, b, relu)
    for key in ("y", "dx"):
        ref[key] = ref[key].reshape(shape)
    m = ref.pop("count")
    ref["running_mean"] = 0.9 * rm_u + 0.1 * ref["mean"]
    ref["running_var"] = 0.9 * rv_u + 0.1 * ref.pop("var") * m / (m - 1)
    return got, ref


def case_batch_norm_nc(sc):
    return _case_batch_norm(sc, (256, 5), False, 6)


def case_batch_norm_ncs(sc):
    return _case_batch_norm(sc, (4, 3, 6, 6), False, 7)


def case_batch_norm_relu(sc):
    return _case_batch_norm(sc, (4, 3, 6, 6), True, 8)


def case_sync_blocks(sc):
    """batch_norm_stats + merge_stats (two shards), batch_norm_elemt,
    batch_norm_backward_reduce, batch_norm_backward_elemt."""
    u, dyu = _data((6, 3, 20), 9)
    w, b = _params(3, 9)
    x, u = scaled(u, sc.k)
    dy = np.ldexp(dyu, sc.j)
    eps = sc.eps(needs_positive=True)
    ref = ref_batch_norm(u, dyu, eps_unit(eps, sc.k), w, b)
    with np.errstate(over="ignore", invalid="ignore"):  # m2 ~ 4**k: not representable for k > 500
        count, mean, m2 = F.merge_stats(*zip(F.batch_norm_stats(x[:2]), F.batch_norm_stats(x[2:])))
    assert count == ref["count"]
    got = {"mean": mean}
    if abs(2 * sc.k) <= 1000:
        got["m2"] = m2
    ref["m2"] = ref["var"] * ref["count"]
    # the remaining blocks take the exact global statistics (as the reference has them)
    mean_x = np.ldexp(ref["mean"], sc.k)
    invstd_x = np.ldexp(ref["rstd"], -sc.k)
    got["y"] = F.batch_norm_elemt(x, mean_x, invstd_x, w, b)
    if not sc.forward_only:
        sum_dy, sum_dy_xhat = F.batch_norm_backward_reduce(dy, x, mean_x, invstd_x)
        got.update(sum_dy=sum_dy, sum_dy_xhat=sum_dy_xhat)
        got["dx"] = F.batch_norm_backward_elemt(dy, x, mean_x, invstd_x, w, sum_dy, sum_dy_xhat, count)
    ref.update(sum_dy=ref["db"], sum_dy_xhat=ref["dw"])
    return got, ref


CASES = {
    "layer_norm": case_layer_norm,
    "rms_norm": case_rms_norm,
    "add_layer_norm": case_add_layer_norm,
    "group_norm": case_group_norm,
    "instance_norm": case_instance_norm,
    "batch_norm_NC": case_batch_norm_nc,
    "batch_norm_NCHW": case_batch_norm_ncs,
    "batch_norm_relu": case_batch_norm_relu,
    "sync_blocks": case_sync_blocks,
}

RTOL = 1e-9


def compare(got, ref, sc, what=""):
    assert got, "nothing compared"
    for key, value in got.items():
        e = EXP[key]
        power = e * sc.k + (sc.j if key in GRAD else 0)
        value = np.asarray(value, dtype=np.float64)
        expected = np.asarray(ref[key], dtype=np.float64).reshape(value.shape)
        top = np.abs(expected).max(initial=0.0)
        if top > 0 and math.log2(top) + power >= 1024:
            continue  # not representable in float64 (e.g. rstd of subnormal data, eps=0)
        assert np.isfinite(value).all(), (
            f"{what} {key}: {np.count_nonzero(~np.isfinite(value))} non-finite values (2**{power} scale)"
        )
        back = np.ldexp(value, -power)  # to unit scale (exact for normals)
        tol = RTOL * max(1.0, np.abs(expected).max(initial=0.0))
        err = np.abs(back - expected).max(initial=0.0)
        assert err <= tol, (
            f"{what} {key}: max error {err:.3g} > {tol:.3g} at unit scale "
            f"(got e.g. {back.flat[:3]}, expected {expected.flat[:3]})"
        )


@pytest.mark.parametrize("scale", SCALES, ids=repr)
@pytest.mark.parametrize("case", list(CASES))
def test_functional_float64_range(case, scale):
    got, ref = CASES[case](scale)
    compare(got, ref, scale, f"{case} at {scale}")


def test_unit_scale_sanity():
    """The harness itself: at k = 0 every case matches its reference."""
    unit = Scale("2^0", 0, eps_x=1e-5)
    for case, fn in CASES.items():
        got, ref = fn(unit)
        compare(got, ref, unit, case)


# ---------------------------------------------------------------------------------------
# eval with running statistics (representable only for |k| <= 500)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", EVAL_SCALES, ids=repr)
@pytest.mark.parametrize("kind", ["batch_norm", "batch_norm_relu", "instance_norm"])
def test_eval_float64_range(kind, scale):
    u, dyu = _data((4, 3, 30), 10)
    w, b = _params(3, 10)
    rm_u = np.array([0.9, 1.1, 1.0])
    rv_u = np.array([1.0, 0.8, 1.3])
    x, u = scaled(u, scale.k)
    rm, rm_u = scaled(rm_u, scale.k)
    rv = np.ldexp(rv_u, 2 * scale.k)
    eps = math.ldexp(1e-5, 2 * scale.k)
    ref = ref_batch_norm_eval(u, dyu, 1e-5, w, b, rm_u, rv_u, relu=kind == "batch_norm_relu")
    if kind == "instance_norm":
        y, mean, invstd = F.native_instance_norm(x, w, b, rm, rv, False, 0.1, eps)
        grads = F.instance_norm_backward(dyu, x, w, mean, invstd, False)
    else:
        relu = kind == "batch_norm_relu"
        fwd = F.native_batch_norm_relu if relu else F.native_batch_norm
        y, mean, invstd = fwd(x, w, b, rm.copy(), rv.copy(), False, 0.1, eps)
        if relu:
            grads = F.batch_norm_relu_backward(dyu, x, w, mean, invstd, False, y)
        else:
            grads = F.batch_norm_backward(dyu, x, w, mean, invstd, False)
    got = {"y": y, "dx": grads[0], "dw": grads[1], "db": grads[2]}
    compare(got, ref, scale, f"{kind} eval at {scale}")


# ---------------------------------------------------------------------------------------
# the modules (what most users call): forward and backward at the extreme magnitudes
# ---------------------------------------------------------------------------------------


def _module(name, eps):
    f64 = np.float64
    return {
        "LayerNorm": lambda: cnorm.LayerNorm(48, eps=eps, dtype=f64),
        "RMSNorm": lambda: cnorm.RMSNorm(48, eps=eps, dtype=f64),
        "GroupNorm": lambda: cnorm.GroupNorm(3, 6, eps=eps, dtype=f64),
        "InstanceNorm1d": lambda: cnorm.InstanceNorm1d(6, eps=eps, affine=True, dtype=f64),
        "BatchNorm1d": lambda: cnorm.BatchNorm1d(6, eps=eps, dtype=f64),
        "BatchNorm2d": lambda: cnorm.BatchNorm2d(6, eps=eps, dtype=f64),
        "BatchNormReLU2d": lambda: cnorm.BatchNormReLU2d(6, eps=eps, dtype=f64),
        "AddLayerNorm": lambda: cnorm.AddLayerNorm(48, eps=eps, dtype=f64),
    }[name]()


MODULE_SHAPES = {
    "LayerNorm": (16, 48),
    "RMSNorm": (16, 48),
    "AddLayerNorm": (16, 48),
    "GroupNorm": (4, 6, 30),
    "InstanceNorm1d": (4, 6, 30),
    "BatchNorm1d": (4, 6, 30),
    "BatchNorm2d": (4, 6, 5, 6),
    "BatchNormReLU2d": (4, 6, 5, 6),
}
MODULE_SCALES = [s for s in SCALES if s.name in ("2^996", "2^664", "2^512", "2^-996", "2^-512")]


def _module_reference(name, u, dyu, eps_u, m):
    shape = u.shape
    if name in ("LayerNorm", "RMSNorm", "AddLayerNorm"):
        ref = ref_layer_norm(u, dyu, eps_u, m.weight, getattr(m, "bias", None), rms=name == "RMSNorm")
    elif name in ("GroupNorm", "InstanceNorm1d"):
        ref = ref_group_norm(u, dyu, eps_u, m.weight, m.bias, 3 if name == "GroupNorm" else 6)
    else:
        n3 = (shape[0], shape[1], -1)
        ref = ref_batch_norm(
            u.reshape(n3), dyu.reshape(n3), eps_u, m.weight, m.bias, relu=name == "BatchNormReLU2d"
        )
    return {"y": ref["y"].reshape(shape), "dx": ref["dx"].reshape(shape)}


@pytest.mark.parametrize("scale", MODULE_SCALES, ids=repr)
@pytest.mark.parametrize("name", list(MODULE_SHAPES))
def test_module_float64_range(name, scale):
    u, dyu = _data(MODULE_SHAPES[name], 11)
    needs_positive = name.startswith("BatchNorm")
    eps = scale.eps(needs_positive)
    m = _module(name, eps)
    if m.weight is not None:
        w, b = _params(m.weight.size, 11)
        m.weight[...] = w.reshape(m.weight.shape)
        if getattr(m, "bias", None) is not None:
            m.bias[...] = b.reshape(m.bias.shape)
    x, u = scaled(u, scale.k)
    if name == "AddLayerNorm":
        zero = np.zeros_like(x)
        y, _ = m(x, zero)
    else:
        y = m(x)
    dx = m.backward(np.ldexp(dyu, scale.j))
    ref = _module_reference(name, u, dyu, eps_unit(eps, scale.k), m)
    compare({"y": y, "dx": dx}, ref, scale, f"{name} at {scale}")


# ---------------------------------------------------------------------------------------
# near the top of the range: even the plain sum of the row overflows
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["layer_norm", "batch_norm", "rms_norm", "group_norm"])
def test_statistics_near_float64_max(kind):
    """|x| ~ 2**1018 (~3e306) in rows of 256: sum(x) ~ 2**1026 and sum(x**2) overflow; the
    statistics of every finite input are still exact (the issue: 'statistics that stay
    exact for every finite float64 input')."""
    sc = Scale("2^1018", 1018)
    rng = np.random.default_rng(12)
    u = rng.uniform(0.5, 1.5, (4, 256))
    x, u = scaled(u, sc.k)
    if kind == "layer_norm":
        y, mean, rstd = F.native_layer_norm(x, (256,), None, None, 1e-5)
        ref = ref_layer_norm(u, np.zeros_like(u), 0.0, np.ones(256), np.zeros(256))
    elif kind == "rms_norm":
        y, rstd = F.native_rms_norm(x, (256,), None, 1e-5)
        mean = None
        ref = ref_layer_norm(u, np.zeros_like(u), 0.0, np.ones(256), None, rms=True)
    elif kind == "group_norm":
        y, mean, rstd = F.native_group_norm(x.reshape(4, 4, 64), 2, None, None, 1e-5)
        ref = ref_group_norm(u.reshape(4, 4, 64), np.zeros((4, 4, 64)), 0.0, np.ones(4), np.zeros(4), 2)
        y, mean, rstd = y.reshape(4, 256), mean.reshape(-1), rstd.reshape(-1)
        ref["y"] = ref["y"].reshape(4, 256)
    else:
        xt = np.ascontiguousarray(x.T)  # (256, 4): 256 values per channel
        y, mean, rstd = F.native_batch_norm(xt, None, None, None, None, True, 0.1, 1e-5)
        ref = ref_batch_norm(u.T[:, :, None], np.zeros((256, 4, 1)), 0.0, np.ones(4), np.zeros(4))
        y, ref["y"] = y.T, ref["y"][:, :, 0].T
    got = {"y": y, "rstd": rstd} if mean is None else {"y": y, "mean": mean, "rstd": rstd}
    compare(got, ref, sc, f"{kind} at 2^1018")


@pytest.mark.parametrize("kind", ["layer_norm", "batch_norm_NC", "batch_norm_NCS", "group_norm"])
def test_deviations_beyond_float64_max(kind):
    """Values of both signs up to 1.9 * 2**1023: x - mean itself overflows float64 (the
    normalized output is still O(1) and must be right)."""
    rng = np.random.default_rng(13)
    u = rng.uniform(-1.0, 1.0, (4, 300))
    u[:, 0], u[:, 1] = 1.9, -1.9
    x, u = scaled(u, 1023)
    ref = ref_layer_norm(u, np.zeros_like(u), 0.0, np.ones(300), np.zeros(300))["y"]
    eps = TINY
    if kind == "layer_norm":
        y = F.layer_norm(x, (300,), eps=eps)
    elif kind == "group_norm":
        y = F.group_norm(x.reshape(4, 2, 150), 1, eps=eps).reshape(4, 300)
    elif kind == "batch_norm_NC":
        y = F.batch_norm(np.ascontiguousarray(x.T), None, None, training=True, eps=eps).T
    else:  # 40 channels: the by-channel split; each channel = one row of u
        xs = np.ascontiguousarray(np.tile(x, (10, 1)).reshape(1, 40, 300))
        y = F.batch_norm(xs, None, None, training=True, eps=eps).reshape(40, 300)[:4]
    compare({"y": y}, {"y": ref}, Scale("2^1023", 1023), f"{kind} at 2^1023")


@pytest.mark.parametrize("rows", ["zeros", "constant", "nan", "inf"])
def test_plain_results_kept(rows):
    """Rows that look out of range to the cheap check (zero variance, NaN, Inf) keep the
    plain results: zeros and constants give y = bias, rstd = 1/sqrt(eps); a NaN or Inf
    spoils its own row only."""
    rng = np.random.default_rng(14)
    x = rng.standard_normal((3, 700))
    x[1] = {"zeros": 0.0, "constant": 3.0, "nan": 0.5, "inf": 0.5}[rows]
    if rows in ("nan", "inf"):
        x[1, 5] = np.nan if rows == "nan" else np.inf
    b = np.linspace(-1, 1, 700)
    y, mean, rstd = F.native_layer_norm(x, (700,), None, b, 1e-5)
    fine = [0, 2]
    ref = ref_layer_norm(x[fine], np.zeros((2, 700)), 1e-5, np.ones(700), b)
    np.testing.assert_allclose(y[fine], ref["y"], rtol=1e-12, atol=1e-12)
    if rows in ("zeros", "constant"):
        np.testing.assert_array_equal(y[1], b)
        assert mean[1] == x[1, 0] and rstd[1] == 1.0 / math.sqrt(1e-5)
    else:
        assert np.isnan(y[1]).all() and np.isnan(mean[1])


@pytest.mark.parametrize(
    "kind", ["layer_norm", "rms_norm", "group_norm", "batch_norm_NC", "batch_norm_NCS", "batch_norm_relu"]
)
def test_backward_near_float64_max(kind):
    """|x| ~ 2**1018 with dy ~ 100: sum(dy * (x - mean)) overflows float64, the gradients
    (of order dy * rstd) do not."""
    sc = Scale("2^1018", 1018)
    rng = np.random.default_rng(15)
    u = rng.uniform(0.5, 1.5, (4, 4096))
    dy = rng.standard_normal(u.shape) * 100
    x, u = scaled(u, sc.k)
    got, ones, zeros = {}, np.ones(4096), np.zeros(4096)
    if kind == "layer_norm":
        _, mean, rstd = F.native_layer_norm(x, (4096,), None, None, 1e-5)
        got["dx"], got["dw"], got["db"] = F.layer_norm_backward(dy, x, (4096,), mean, rstd, ones)
        ref = ref_layer_norm(u, dy, 0.0, ones, zeros)
    elif kind == "rms_norm":
        _, rrms = F.native_rms_norm(x, (4096,), None, 1e-5)
        got["dx"], got["dw"] = F.rms_norm_backward(dy, x, (4096,), rrms, ones)
        ref = ref_layer_norm(u, dy, 0.0, ones, None, rms=True)
    elif kind == "group_norm":
        x3, d3 = x.reshape(4, 4, 1024), dy.reshape(4, 4, 1024)
        _, mean, rstd = F.native_group_norm(x3, 2, None, None, 1e-5)
        got["dx"], got["dw"], got["db"] = F.group_norm_backward(d3, x3, 2, mean, rstd, np.ones(4))
        ref = ref_group_norm(u.reshape(4, 4, 1024), d3, 0.0, np.ones(4), np.zeros(4), 2)
    else:  # channel c holds row c of u: (4096, 4, 1); (64, 40, 64) split by channel; (1, 4, 4096)

        def to_nchw(a):
            if kind == "batch_norm_NC":
                return np.ascontiguousarray(a.T[:, :, None])
            if kind == "batch_norm_NCS":
                return np.ascontiguousarray(np.tile(a, (10, 1)).reshape(40, 64, 64).transpose(1, 0, 2))
            return a.reshape(1, 4, 4096)

        xb, ub, dyb = to_nchw(x), to_nchw(u), to_nchw(dy)
        c, relu = xb.shape[1], kind == "batch_norm_relu"
        fwd = F.native_batch_norm_relu if relu else F.native_batch_norm
        y, mean, invstd = fwd(xb, None, None, None, None, True, 0.1, 1e-5)
        w = np.ones(c)
        if relu:
            grads = F.batch_norm_relu_backward(dyb, xb, w, mean, invstd, True, y)
        else:
            grads = F.batch_norm_backward(dyb, xb, w, mean, invstd, True)
        got = dict(zip(("dx", "dw", "db"), grads))
        ref = ref_batch_norm(ub, dyb, 0.0, w, np.zeros(c), relu)
    compare(got, ref, sc, f"{kind} backward at 2^1018")
