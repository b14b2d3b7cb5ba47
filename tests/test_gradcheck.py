"""Finite-difference checks (float64, central differences) of every backward formula.

The scalar loss is L = sum(y * R) for a fixed random R, so dL/dy = R.
Both the compiled backward (functional and module) and the NumPy reference are checked.
"""

import numpy as np
import pytest

import cnorm
import cnorm.functional as F
from cnorm import slow

from conftest import bn_class

EPS = 1e-3  # a larger eps keeps the finite differences well conditioned
H = 1e-6
RTOL, ATOL = 1e-6, 1e-7


def numeric_grad(f, a, h=H):
    """Central-difference gradient of the scalar f() with respect to array a (perturbed in place)."""
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + h
        fp = f()
        a[i] = old - h
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


def check(analytic, numeric, what):
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL, err_msg=what)


BN_SHAPES = [(6, 3), (4, 3, 5), (2, 2, 3, 3), (2, 2, 1, 2, 3), (3, 1, 2)]


def bn_setup(rng, shape):
    C = shape[1]
    x = rng.normal(0.5, 1.5, shape)
    w = rng.normal(1.0, 0.5, C)
    b = rng.normal(0.0, 0.5, C)
    rm = rng.normal(0.0, 1.0, C)
    rv = rng.uniform(0.5, 2.0, C)
    R = rng.normal(size=shape)
    return x, w, b, rm, rv, R


@pytest.mark.parametrize("impl", ["cnorm", "slow"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batch_norm_gradients(rng, shape, training, impl):
    x, w, b, rm, rv, R = bn_setup(rng, shape)

    if impl == "cnorm":
        def forward():
            # running stats are copied so that a training forward cannot drift them
            return F.native_batch_norm(x, w, b, rm.copy(), rv.copy(), training, 0.1, EPS)[0]

        _, mean, invstd = F.native_batch_norm(x, w, b, rm.copy(), rv.copy(), training, 0.1, EPS)
        dx, dw, db = F.batch_norm_backward(R, x, w, mean, invstd, training)
    else:
        def forward():
            return slow.batch_norm_forward(x, w, b, rm, rv, training, 0.1, EPS)[0]

        if training:
            mean, var = slow.batch_norm_stats(x)
        else:
            mean, var = rm, rv
        dx, dw, db = slow.batch_norm_backward(R, x, w, mean, 1 / np.sqrt(var + EPS), training)

    def loss():
        return float(np.sum(forward() * R))

    check(dx, numeric_grad(loss, x), "dx")
    check(dw, numeric_grad(loss, w), "dweight")
    check(db, numeric_grad(loss, b), "dbias")


@pytest.mark.parametrize("mode", ["train", "eval", "eval_notrack"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batch_norm_module_gradients(rng, shape, mode):
    """Module backward vs finite differences of the module forward (running stats frozen)."""
    x, w, b, rm, rv, R = bn_setup(rng, shape)
    C = shape[1]
    track = mode != "eval_notrack"
    m = bn_class(len(shape))(C, eps=EPS, dtype=np.float64, track_running_stats=track)
    sd = {"weight": w, "bias": b}
    if track:
        sd.update(running_mean=rm, running_var=rv, num_batches_tracked=np.array(3))
    m.load_state_dict(sd)
    m.train(mode == "train")

    def loss():
        # sd holds w and b themselves (perturbed in place) and the frozen running stats
        m.load_state_dict(sd)
        return float(np.sum(m(x) * R))

    num_dx = numeric_grad(loss, x)
    num_dw = numeric_grad(loss, w)
    num_db = numeric_grad(loss, b)
    m.load_state_dict(sd)
    m.zero_grad()
    m(x)
    dx = m.backward(R)
    check(dx, num_dx, "dx")
    check(m.weight_grad, num_dw, "weight_grad")
    check(m.bias_grad, num_db, "bias_grad")


LN_CASES = [((3, 5), (5,)), ((2, 3, 4), (3, 4)), ((4, 2), (2,)), ((7,), (7,)), ((2, 2, 3), (3,))]


@pytest.mark.parametrize("impl", ["cnorm", "slow", "module"])
@pytest.mark.parametrize("case", LN_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_layer_norm_gradients(rng, case, impl):
    shape, ns = case
    x = rng.normal(0.5, 1.5, shape)
    w = rng.normal(1.0, 0.5, ns)
    b = rng.normal(0.0, 0.5, ns)
    R = rng.normal(size=shape)

    if impl == "cnorm":
        def forward():
            return F.layer_norm(x, ns, w, b, EPS)

        _, mean, rstd = F.native_layer_norm(x, ns, w, b, EPS)
        dx, dw, db = F.layer_norm_backward(R, x, ns, mean, rstd, w)
    elif impl == "slow":
        def forward():
            return slow.layer_norm_forward(x, ns, w, b, EPS)[0]

        dx, dw, db = slow.layer_norm_backward(R, x, ns, w, EPS)
    else:
        m = cnorm.LayerNorm(ns, eps=EPS, dtype=np.float64)

        def forward():
            m.load_state_dict({"weight": w, "bias": b})
            return m(x)

        forward()
        dx = m.backward(R)
        dw, db = m.weight_grad, m.bias_grad

    def loss():
        return float(np.sum(forward() * R))

    check(dx, numeric_grad(loss, x), "dx")
    check(dw, numeric_grad(loss, w), "dweight")
    check(db, numeric_grad(loss, b), "dbias")
