"""Errors: every error of the API spec, with its exact message (torch's wording where torch
has one), and a rejected call loses no state."""

import re

import numpy as np
import pytest
from _internals import unsupported_dtype_message
from conftest import dtype_id, raises
from norms import NORMS, ONE_VALUE_PER_CHANNEL

import cnorm
import cnorm.functional as F
import cnorm.reference

f32 = np.float32


@pytest.mark.parametrize("shape", [(2,), (2, 3, 4, 5), (2, 3, 4, 5, 6), ()], ids=str)
def test_batch_norm1d_wrong_ndim(shape):
    m = cnorm.BatchNorm1d(3)
    with raises(ValueError, f"expected 2D or 3D input (got {len(shape)}D input)"):
        m(np.zeros(shape, np.float32))


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4), (2, 3, 4, 5, 6)], ids=str)
def test_batch_norm2d_wrong_ndim(shape):
    m = cnorm.BatchNorm2d(3)
    with raises(ValueError, f"expected 4D input (got {len(shape)}D input)"):
        m(np.zeros(shape, np.float32))


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4, 5), (2, 3, 4, 5, 6, 7)], ids=str)
def test_batch_norm3d_wrong_ndim(shape):
    m = cnorm.BatchNorm3d(3)
    with raises(ValueError, f"expected 5D input (got {len(shape)}D input)"):
        m(np.zeros(shape, np.float32))


def test_exact_spec_messages_ndim():
    with raises(ValueError, "expected 2D or 3D input (got 4D input)"):
        cnorm.BatchNorm1d(3)(np.zeros((2, 3, 4, 5), np.float32))
    with raises(ValueError, "expected 4D input (got 3D input)"):
        cnorm.BatchNorm2d(3)(np.zeros((2, 3, 4), np.float32))
    with raises(ValueError, "expected 5D input (got 4D input)"):
        cnorm.BatchNorm3d(3)(np.zeros((2, 3, 4, 5), np.float32))


@pytest.mark.parametrize("cls,shape", ONE_VALUE_PER_CHANNEL)
def test_one_value_per_channel_in_training(cls, shape):
    m = getattr(cnorm, cls)(3)
    msg = f"Expected more than 1 value per channel when training, got input size {shape}"
    with raises(ValueError, msg):
        m(np.ones(shape, np.float32))
    m.eval()
    assert m(np.ones(shape, np.float32)).shape == shape  # eval with running stats is fine


def test_one_value_per_channel_exact_spec_message():
    with raises(ValueError, "Expected more than 1 value per channel when training, got input size (1, 3)"):
        cnorm.BatchNorm1d(3)(np.ones((1, 3), np.float32))


def test_one_value_per_channel_eval_without_running_stats():
    """Eval without running stats normalizes with batch statistics: torch raises too."""
    m = cnorm.BatchNorm1d(3, track_running_stats=False).eval()
    with raises(ValueError, "Expected more than 1 value per channel when training, got input size (1, 3)"):
        m(np.ones((1, 3), np.float32))


@pytest.mark.parametrize(
    "cls,C,shape",
    [
        ("BatchNorm2d", 4, (2, 3, 5, 5)),
        ("BatchNorm1d", 4, (2, 3)),
        ("BatchNorm1d", 2, (2, 3, 7)),
        ("BatchNorm3d", 1, (2, 3, 1, 1, 1)),
        ("BatchNorm2d", 0, (2, 3, 5, 5)),
        ("BatchNorm2d", 3, (2, 0, 5, 5)),
    ],
)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_wrong_channel_count(cls, C, shape, training):
    m = getattr(cnorm, cls)(C).train(training)
    with raises(ValueError, f"expected input with {C} channels (num_features), got input of shape {shape}"):
        m(np.ones(shape, np.float32))


def test_wrong_channel_count_exact_spec_message():
    with raises(ValueError, "expected input with 4 channels (num_features), got input of shape (2, 3, 5, 5)"):
        cnorm.BatchNorm2d(4)(np.ones((2, 3, 5, 5), np.float32))


@pytest.mark.parametrize(
    "ns,shape,msg",
    [
        (
            768,
            (2, 3, 5),
            "Given normalized_shape=[768], expected input with shape [*, 768], but got input of size[2, 3, 5]",
        ),
        (
            (3, 4),
            (2, 3, 5),
            "Given normalized_shape=[3, 4], expected input with shape [*, 3, 4], but got input of size[2, 3, 5]",
        ),
        (
            [3, 4],
            (4,),
            "Given normalized_shape=[3, 4], expected input with shape [*, 3, 4], but got input of size[4]",
        ),
        (
            4,
            (2, 0),
            "Given normalized_shape=[4], expected input with shape [*, 4], but got input of size[2, 0]",
        ),
        (
            5,
            (5, 4),
            "Given normalized_shape=[5], expected input with shape [*, 5], but got input of size[5, 4]",
        ),
    ],
)
def test_layer_norm_wrong_shape(ns, shape, msg):
    m = cnorm.LayerNorm(ns)
    with raises(ValueError, msg):
        m(np.ones(shape, np.float32))
    with raises(ValueError, msg):
        F.layer_norm(np.ones(shape, np.float32), (ns,) if isinstance(ns, int) else ns)


# --------------------------------------------------------------------------- input types / dtypes

MODULES = {
    "bn1d": (lambda **kw: cnorm.BatchNorm1d(3, **kw), (4, 3)),
    "bn2d": (lambda **kw: cnorm.BatchNorm2d(3, **kw), (2, 3, 2, 2)),
    "bn3d": (lambda **kw: cnorm.BatchNorm3d(3, **kw), (2, 3, 2, 2, 2)),
    "ln": (lambda **kw: cnorm.LayerNorm(3, **kw), (4, 3)),
}


@pytest.mark.parametrize("mod", list(MODULES))
def test_not_an_ndarray_list(mod):
    make, shape = MODULES[mod]
    with raises(TypeError, "expected a NumPy array, got list"):
        make()(np.ones(shape, np.float32).tolist())


@pytest.mark.parametrize("obj,name", [(None, "NoneType"), ((1.0, 2.0, 3.0), "tuple"), (3.0, "float")])
@pytest.mark.parametrize("mod", list(MODULES))
def test_not_an_ndarray_other(mod, obj, name):
    make, _ = MODULES[mod]
    with raises(TypeError, f"expected a NumPy array, got {name}"):
        make()(obj)


@pytest.mark.parametrize("mod", list(MODULES))
def test_torch_tensor_is_rejected(mod):
    torch = pytest.importorskip("torch")
    make, shape = MODULES[mod]
    with pytest.raises(TypeError, match=re.escape("expected a NumPy array, got ")):
        make()(torch.ones(shape))


def test_ndarray_subclass_is_accepted():
    """np.ndarray subclasses are NumPy arrays."""

    class Sub(np.ndarray):
        pass

    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    y = cnorm.BatchNorm1d(3)(x.view(Sub))
    np.testing.assert_allclose(y, cnorm.BatchNorm1d(3)(x), rtol=0, atol=0)


UNSUPPORTED = [
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint32,
    np.uint64,
    np.bool_,
    np.complex64,
    np.complex128,
    object,
]


@pytest.mark.parametrize("dtype", UNSUPPORTED, ids=dtype_id)
@pytest.mark.parametrize("mod", list(MODULES))
def test_unsupported_dtype(mod, dtype):
    make, shape = MODULES[mod]
    x = np.ones(shape, dtype=dtype)
    with raises(
        TypeError,
        unsupported_dtype_message(dtype),
    ):
        make()(x)
    with raises(
        TypeError,
        unsupported_dtype_message(dtype),
    ):
        make(dtype=np.float64)(x)


@pytest.mark.parametrize("mod", list(MODULES))
def test_unsupported_dtype_str(mod):
    make, shape = MODULES[mod]
    with pytest.raises(TypeError, match=re.escape("unsupported dtype ")):
        make()(np.full(shape, "abc"))


def test_unsupported_dtype_exact_spec_message():
    with raises(TypeError, unsupported_dtype_message(np.int64)):
        cnorm.BatchNorm2d(3)(np.ones((2, 3, 2, 2), np.int64))


@pytest.mark.parametrize("mod", list(MODULES))
def test_dtype_mismatch_with_module(mod):
    make, shape = MODULES[mod]
    with raises(TypeError, "input dtype float64 does not match the module dtype float32"):
        make()(np.ones(shape, np.float64))
    with raises(TypeError, "input dtype float32 does not match the module dtype float64"):
        make(dtype=np.float64)(np.ones(shape, np.float32))


def test_non_native_byte_order_float_is_not_a_crash():
    """A big-endian float64 array: either works like the native one or raises TypeError."""
    x = np.random.default_rng(1).normal(size=(4, 3))
    xb = x.astype(">f8")
    m = cnorm.BatchNorm1d(3, dtype=np.float64)
    try:
        y = m(xb)
    except TypeError:
        return
    np.testing.assert_allclose(y, cnorm.BatchNorm1d(3, dtype=np.float64)(x), rtol=1e-15, atol=1e-15)


# --------------------------------------------------------------------------- eps / num_features


@pytest.mark.parametrize("eps,shown", [(0.0, "0.0"), (-1.0, "-1.0"), (-1e-05, "-1e-05")])
@pytest.mark.parametrize(
    "cls,shape", [("BatchNorm1d", (4, 3)), ("BatchNorm2d", (2, 3, 2, 2)), ("BatchNorm3d", (2, 3, 1, 2, 2))]
)
def test_batch_norm_eps_must_be_positive_in_training(cls, shape, eps, shown):
    msg = f"batch_norm eps must be positive during training, but got {shown}"
    m = getattr(cnorm, cls)(3, eps=eps)
    with raises(ValueError, msg):
        m(np.ones(shape, np.float32))
    # no running stats: batch statistics are used in eval too
    m = getattr(cnorm, cls)(3, eps=eps, track_running_stats=False).eval()
    with raises(ValueError, msg):
        m(np.ones(shape, np.float32))


def test_batch_norm_eps_zero_allowed_in_eval_with_running_stats():
    m = cnorm.BatchNorm2d(3, eps=0.0).eval()
    x = np.random.default_rng(2).normal(size=(2, 3, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(m(x), x)  # running stats are 0 / 1


def test_batch_norm_eps_exact_spec_message():
    with raises(ValueError, "batch_norm eps must be positive during training, but got 0.0"):
        cnorm.BatchNorm2d(3, eps=0.0)(np.ones((2, 3, 2, 2), np.float32))


def test_functional_eps_must_be_positive_in_training():
    x = np.ones((4, 3), np.float32)
    with raises(ValueError, "batch_norm eps must be positive during training, but got 0.0"):
        F.batch_norm(x, None, None, training=True, eps=0.0)
    with raises(ValueError, "batch_norm eps must be positive during training, but got 0.0"):
        F.native_batch_norm(x, None, None, None, None, True, 0.1, 0.0)


@pytest.mark.parametrize("cls", ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"])
@pytest.mark.parametrize("n", [-1, -5])
def test_num_features_negative(cls, n):
    with raises(ValueError, f"num_features must be a non-negative integer, got {n}"):
        getattr(cnorm, cls)(n)


def test_layer_norm_eps_not_checked():
    y = cnorm.LayerNorm(4, eps=0.0)(np.random.default_rng(3).normal(size=(2, 4)).astype(np.float32))
    assert np.isfinite(y).all()
    cnorm.LayerNorm(4, eps=-1e-9)  # constructing does not raise


# --------------------------------------------------------------------------- backward protocol


@pytest.mark.parametrize("mod", list(MODULES))
def test_backward_before_forward(mod):
    make, shape = MODULES[mod]
    with raises(RuntimeError, "backward() called before forward()"):
        make().backward(np.ones(shape, np.float32))


@pytest.mark.parametrize("mod", list(MODULES))
def test_backward_twice(mod):
    make, shape = MODULES[mod]
    m = make()
    x = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    m(x)
    m.backward(np.ones(shape, np.float32))
    with raises(
        RuntimeError,
        "Trying to backward through the graph a second time: call forward() again before backward()",
    ):
        m.backward(np.ones(shape, np.float32))
    m(x)
    m.backward(np.ones(shape, np.float32))  # a new forward allows a new backward


@pytest.mark.parametrize("mod", list(MODULES))
def test_grad_output_wrong_shape(mod):
    make, shape = MODULES[mod]
    m = make()
    m(np.random.default_rng(5).normal(size=shape).astype(np.float32))
    bad = shape[:-1] + (shape[-1] + 1,)
    with raises(ValueError, f"grad_output has shape {bad} but the input of forward() had shape {shape}"):
        m.backward(np.ones(bad, np.float32))
    # the failed call did not consume the graph
    assert m.backward(np.ones(shape, np.float32)).shape == shape


def test_grad_output_wrong_shape_exact_spec_message():
    m = cnorm.BatchNorm1d(3)
    m(np.random.default_rng(6).normal(size=(2, 3)).astype(np.float32))
    with raises(ValueError, "grad_output has shape (2, 4) but the input of forward() had shape (2, 3)"):
        m.backward(np.ones((2, 4), np.float32))


@pytest.mark.parametrize("mod", list(MODULES))
def test_grad_output_wrong_dtype(mod):
    make, shape = MODULES[mod]
    m = make()
    m(np.random.default_rng(7).normal(size=shape).astype(np.float32))
    with raises(TypeError, "grad_output dtype float64 does not match the input dtype float32"):
        m.backward(np.ones(shape, np.float64))
    m = make(dtype=np.float64)
    m(np.random.default_rng(7).normal(size=shape))
    with raises(TypeError, "grad_output dtype float32 does not match the input dtype float64"):
        m.backward(np.ones(shape, np.float32))


@pytest.mark.parametrize("norm", NORMS, ids=str)
def test_bad_backward_call_loses_nothing(norm):
    """A rejected backward call keeps the saved forward: a correct one still works."""
    rng = np.random.default_rng(4)
    case = norm.small
    shape = case.shape
    m = norm.make(case)
    x = rng.standard_normal(shape).astype(f32)
    dy = rng.standard_normal(shape).astype(f32)
    norm.call(m, x)
    for bad in (np.ones(shape, np.float64), np.ones(shape[:-1], f32), [1.0], None):
        with pytest.raises((TypeError, ValueError)):
            m.backward(bad)
    assert m.weight_grad is None
    dx = m.backward(dy)
    ref = norm.make(case)
    norm.call(ref, x)
    np.testing.assert_array_equal(dx, ref.backward(dy))


def test_failed_forward_changes_no_state():
    """A forward that raises leaves running stats, num_batches_tracked and the saved input."""
    rng = np.random.default_rng(5)
    m = cnorm.BatchNorm2d(3)
    x = rng.standard_normal((4, 3, 5, 5)).astype(f32)
    m(x)
    state = {k: np.array(v, copy=True) for k, v in m.state_dict().items()}
    for bad in (
        np.ones((4, 4, 5, 5), f32),
        np.ones((1, 3, 1, 1), f32),
        np.ones((4, 3, 5, 5), np.int32),
        np.ones((4, 3, 5), f32),
        [1.0],
    ):
        with pytest.raises((TypeError, ValueError)):
            m(bad)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    dx = m.backward(np.ones_like(x))  # still the gradient of the good forward
    assert dx.shape == x.shape


# --------------------------------------------------------------------------- functional argument checks


def test_functional_batch_norm_eval_needs_running_stats():
    x = np.ones((4, 3), np.float32)
    with raises(ValueError, "running_mean and running_var must be given when training=False"):
        F.batch_norm(x, None, None, training=False)


@pytest.mark.parametrize("api", [F, cnorm.reference], ids=["functional", "reference"])
def test_eval_without_running_stats_same_error_in_the_reference_twin(api):
    # torch: RuntimeError "running_mean must be defined in evaluation mode"; cnorm's
    # functional layer says ValueError, and its float64 twin must say the same
    x = np.ones((4, 3), np.float32)
    ones = np.ones(3, np.float32)
    msg = "running_mean and running_var must be given when training=False"
    with raises(ValueError, msg):
        api.native_batch_norm(x, None, None, None, None, False, 0.1, 1e-5)
    with raises(ValueError, msg):
        api.native_batch_norm_relu(x, None, None, ones, None, False, 0.1, 1e-5)
    with raises(ValueError, msg):
        api.batch_norm(x, None, ones)


@pytest.mark.parametrize("which", ["weight", "bias", "running_mean", "running_var"])
def test_functional_batch_norm_param_checks(which):
    x = np.ones((4, 3, 2), np.float32)
    good = {
        "running_mean": np.zeros(3, np.float32),
        "running_var": np.ones(3, np.float32),
        "weight": np.ones(3, np.float32),
        "bias": np.zeros(3, np.float32),
    }
    with pytest.raises(ValueError):
        F.batch_norm(x, **dict(good, **{which: np.ones(4, np.float32)}), training=True)
    with pytest.raises(ValueError):
        F.batch_norm(x, **dict(good, **{which: np.ones((3, 1), np.float32)}), training=True)
    with pytest.raises(TypeError):
        F.batch_norm(x, **dict(good, **{which: np.ones(3, np.float64)}), training=True)
    with pytest.raises(TypeError):
        F.batch_norm(x, **dict(good, **{which: [1.0, 1.0, 1.0]}), training=True)


@pytest.mark.parametrize("which", ["weight", "bias"])
def test_functional_layer_norm_param_checks(which):
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError):
        F.layer_norm(x, (3,), **{which: np.ones(4, np.float32)})
    with pytest.raises(TypeError):
        F.layer_norm(x, (3,), **{which: np.ones(3, np.float64)})


def test_functional_type_checks():
    with raises(TypeError, "expected a NumPy array, got list"):
        F.batch_norm([[1.0, 2.0], [3.0, 4.0]], None, None, training=True)
    with raises(TypeError, "expected a NumPy array, got list"):
        F.layer_norm([[1.0, 2.0]], (2,))
    with raises(TypeError, unsupported_dtype_message(np.int64)):
        F.batch_norm(np.ones((4, 3), np.int64), None, None, training=True)
    with raises(TypeError, unsupported_dtype_message(np.int32)):
        F.layer_norm(np.ones((4, 3), np.int32), (3,))


# --------------------------------------------------------------------------- GroupNorm, InstanceNorm, RMSNorm, fused


def test_group_norm_errors():
    x = np.zeros((2, 4, 3), np.float32)
    with raises(ValueError, "num_channels (4) must be divisible by num_groups (3)"):
        cnorm.GroupNorm(3, 4)
    with raises(ValueError, "Expected num groups to be greater than 0, got 0"):
        cnorm.GroupNorm(0, 4)
    with raises(ValueError, "Expected num groups to be greater than 0, got -2"):
        F.group_norm(x, -2)
    with raises(TypeError, "group_norm(): argument 'num_groups' (position 2) must be int, not float"):
        F.group_norm(x, 2.0)
    with raises(ValueError, "num_channels must be a non-negative integer, got -1"):
        cnorm.GroupNorm(1, -1)
    with raises(
        ValueError,
        "Expected number of channels in input to be divisible by num_groups, "
        "but got input of shape [2, 4, 3] and num_groups=3",
    ):
        F.group_norm(x, 3)
    with raises(ValueError, "Expected at least 2 dimensions for input tensor but received 1"):
        F.group_norm(np.zeros(4, np.float32), 2)
    with raises(ValueError, "Expected more than 1 value per channel when training, got input size [1, 2]"):
        F.group_norm(np.zeros((1, 2), np.float32), 2)
    with raises(ValueError, "Expected more than 1 value per channel when training, got input size [1, 2, 1]"):
        cnorm.GroupNorm(2, 2)(np.zeros((1, 2, 1), np.float32))
    F.group_norm(np.zeros((1, 4, 1), np.float32), 2)  # (N*C/G)*S = 2: fine, as in torch
    with raises(
        ValueError,
        "Expected weight to be a vector of size equal to the number of channels "
        "in input, but got weight of shape [3] and input of shape [2, 4, 3]",
    ):
        F.group_norm(x, 2, np.ones(3, np.float32))
    with raises(
        ValueError,
        "Expected bias to be a vector of size equal to the number of channels "
        "in input, but got bias of shape [5] and input of shape [2, 4, 3]",
    ):
        F.group_norm(x, 2, None, np.ones(5, np.float32))
    with raises(TypeError, "weight has dtype float64 but the input has dtype float32"):
        F.group_norm(x, 2, np.ones(4))
    with raises(ValueError, "mean must have shape (4,), got (3,)"):
        F.group_norm_backward(x, x, 2, np.zeros(3), np.ones(4), None)
    with raises(TypeError, "input dtype float64 does not match the module dtype float32"):
        cnorm.GroupNorm(2, 4)(x.astype(np.float64))
    with raises(TypeError, "expected a NumPy array, got list"):
        cnorm.GroupNorm(2, 4)(x.tolist())
    with raises(TypeError, "unsupported dtype int64"):
        F.group_norm(x.astype(np.int64), 2)


@pytest.mark.parametrize("name,nb", [("InstanceNorm1d", 2), ("InstanceNorm2d", 3), ("InstanceNorm3d", 4)])
def test_instance_norm_errors(name, nb):
    m = getattr(cnorm, name)(3)
    for nd in (nb - 1, nb + 2):
        with raises(ValueError, f"expected {nb}D or {nb + 1}D input (got {nd}D input)"):
            m(np.zeros((3,) * nd, np.float32))
    shape = (2, 3) + (1,) * (nb - 1)
    with raises(ValueError, f"Expected more than 1 spatial element when training, got input size {shape}"):
        m(np.zeros(shape, np.float32))
    with raises(
        ValueError, f"Expected more than 1 spatial element when training, got input size {(1,) + shape[1:]}"
    ):
        m(np.zeros(shape[1:], np.float32))  # unbatched: a batch of one
    with raises(ValueError, "Expected more than 1 spatial element when training"):
        m.eval()(np.zeros(shape, np.float32))  # not tracking: input stats in eval too
    t = getattr(cnorm, name)(3, track_running_stats=True).eval()
    assert t(np.zeros(shape, np.float32)).shape == shape  # running stats: fine
    with raises(ValueError, "num_features must be a non-negative integer, got -1"):
        getattr(cnorm, name)(-1)


def test_instance_norm_functional_errors():
    x = np.zeros((2, 3, 4), np.float32)
    z, o = np.zeros(3, np.float32), np.ones(3, np.float32)
    with raises(ValueError, "Expected more than 1 spatial element when training, got input size (2, 3, 1)"):
        F.instance_norm(np.zeros((2, 3, 1), np.float32))
    with raises(ValueError, "Expected more than 1 spatial element when training, got input size (2, 3)"):
        F.instance_norm(np.zeros((2, 3), np.float32))
    assert F.instance_norm(np.zeros((2, 3), np.float32), z, o, use_input_stats=False).shape == (2, 3)
    with raises(
        ValueError, "Expected running_mean and running_var to be defined when use_input_stats is false"
    ):
        F.instance_norm(x, use_input_stats=False)
    with raises(ValueError, "running_mean and running_var must either both be None or neither be None"):
        F.instance_norm(x, z, None)
    with raises(ValueError, "running_mean should contain 3 elements not 4"):
        F.instance_norm(x, np.zeros(4, np.float32), np.ones(4, np.float32))
    with raises(ValueError, "weight should contain 3 elements not 4"):
        F.instance_norm(x, weight=np.ones(4, np.float32))
    with raises(ValueError, "running_mean is read-only"):
        ro = z.copy()
        ro.flags.writeable = False
        F.instance_norm(x, ro, o.copy())
    F.instance_norm(x, ro, o, use_input_stats=False)  # read-only is fine when not updated
    # eps is not checked (torch does not)
    assert np.all(np.isnan(F.instance_norm(np.ones((2, 3, 4), np.float32), eps=0.0)))
    with raises(ValueError, "save_mean must have shape (6,), got (3,)"):
        F.instance_norm_backward(x, x, None, z, o, True)


def test_rms_norm_errors():
    x = np.zeros((2, 3), np.float32)
    with raises(
        ValueError, "Given normalized_shape=[4], expected input with shape [*4], but got input of size[2, 3]"
    ):
        F.rms_norm(x, (4,))
    with raises(
        ValueError,
        "Given normalized_shape=[2, 4], expected input with shape [*2, 4], but got input of size[2, 3, 4]",
    ):
        F.rms_norm(np.zeros((2, 3, 4), np.float32), (2, 4))
    with raises(ValueError, "Input tensor must have at least 3 dimensions, but got 2"):
        F.rms_norm(x, (1, 2, 3))
    with raises(
        ValueError,
        "Expected normalized_shape to be at least 1-dimensional, i.e., containing "
        "at least one element, but got normalized_shape = []",
    ):
        F.rms_norm(x, ())
    with raises(
        ValueError,
        "Expected weight to be of same shape as normalized_shape, but got weight "
        "of shape [4] and normalized_shape = [3]",
    ):
        F.rms_norm(x, (3,), np.ones(4, np.float32))
    with raises(
        ValueError, "Given normalized_shape=[3], expected input with shape [*3], but got input of size[2, 4]"
    ):
        cnorm.RMSNorm(3)(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError):
        cnorm.RMSNorm(-3)
    with raises(ValueError, "normalized_shape must not contain negative sizes"):
        cnorm.RMSNorm((2, -3))
    with raises(TypeError, "input dtype float64 does not match the module dtype float32"):
        cnorm.RMSNorm(3)(np.zeros((2, 3)))
    # eps=0 on a zero row: nan like torch; eps is not checked
    assert np.all(np.isnan(F.rms_norm(x, (3,), eps=0.0)))
    assert np.all(F.rms_norm(x, (3,)) == 0)


def test_add_layer_norm_and_batch_norm_relu_functional_errors():
    x = np.zeros((2, 3), np.float32)
    with raises(ValueError, "residual has shape (3, 2) but the input has shape (2, 3)"):
        F.add_layer_norm(x, x.T, (3,))
    with raises(ValueError, "Given normalized_shape=[4], expected input with shape [*, 4]"):
        F.add_layer_norm(x, x, (4,))
    with raises(ValueError, "grad_output has shape (2, 2) but the sum has shape (2, 3)"):
        F.add_layer_norm_backward(np.zeros((2, 2), np.float32), None, x, (3,), np.zeros(2), np.ones(2), None)
    with raises(ValueError, "running_mean and running_var must be given when training=False"):
        F.batch_norm_relu(x, None, None)
    with raises(ValueError, "batch_norm eps must be positive during training, but got 0.0"):
        F.batch_norm_relu(x, None, None, training=True, eps=0.0)
    with raises(ValueError, "Expected more than 1 value per channel when training, got input size (1, 3)"):
        F.batch_norm_relu(x[:1], None, None, training=True)
    with raises(ValueError, "output has shape (2, 2) but the input has shape (2, 3)"):
        F.batch_norm_relu_backward(x, x, None, np.zeros(3), np.ones(3), True, x[:, :2])


def test_batch_norm_relu_module_errors_like_batch_norm():
    with raises(ValueError, "expected 4D input (got 3D input)"):
        cnorm.BatchNormReLU2d(3)(np.zeros((2, 3, 4), np.float32))
    with raises(ValueError, "Expected more than 1 value per channel when training, got input size (1, 3)"):
        cnorm.BatchNormReLU1d(3)(np.ones((1, 3), np.float32))
    with raises(ValueError, "expected input with 4 channels (num_features), got input of shape (2, 3)"):
        cnorm.BatchNormReLU1d(4)(np.ones((2, 3), np.float32))
    with raises(ValueError, "batch_norm eps must be positive during training, but got 0"):
        cnorm.BatchNormReLU1d(3, eps=0)(np.ones((2, 3), np.float32))
    with raises(TypeError, "input dtype float64 does not match the module dtype float32"):
        cnorm.BatchNormReLU1d(3)(np.ones((2, 3)))
