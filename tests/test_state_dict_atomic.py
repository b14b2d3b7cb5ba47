"""Issue 14, "all-or-nothing state": load_state_dict validates and converts every value
before touching the module, raises torch's ``RuntimeError("Error(s) in loading state_dict
for <Class>:\\n\\t...")`` listing every problem, and leaves the module bitwise unchanged;
``num_batches_tracked`` must be a finite integer representable in int64.

torch 2.13 (for reference): any non-tensor value is a RuntimeError "Error(s) in loading
state_dict for BatchNorm2d: While copying the parameter named "num_batches_tracked",
expected torch.Tensor or Tensor-like object ..."; a tensor is copied into the int64
buffer (tensor(-1) and tensor(5.0) load; tensor(nan) loads as -2**63, which the issue
forbids). cnorm takes NumPy values too (its own format), so only the bad VALUES are errors.
"""

import numpy as np
import pytest

import cnorm

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

f32 = np.float32

MODULES = {
    "BatchNorm1d": (lambda: cnorm.BatchNorm1d(3), (4, 3)),
    "BatchNorm2d": (lambda: cnorm.BatchNorm2d(3), (4, 3, 2, 2)),
    "BatchNorm3d": (lambda: cnorm.BatchNorm3d(3, dtype=np.float64), (4, 3, 2, 2, 2)),
    "BatchNormReLU2d": (lambda: cnorm.BatchNormReLU2d(3), (4, 3, 2, 2)),
    "InstanceNorm2d": (lambda: cnorm.InstanceNorm2d(3, affine=True, track_running_stats=True), (4, 3, 2, 2)),
}


def _trained(name):
    make, shape = MODULES[name]
    m = make()
    rng = np.random.default_rng(len(name))
    with np.errstate(all="ignore"):
        m.weight[...] = rng.normal(1, 0.3, 3)
        m.bias[...] = rng.normal(0, 0.3, 3)
    for _ in range(2):
        m(rng.normal(0.5, 2.0, shape).astype(m.dtype))
    return m


def _snapshot(m):
    """Every piece of state, as bytes (bitwise comparison) and the nbt object."""
    out = {}
    for k in ("weight", "bias", "running_mean", "running_var"):
        v = getattr(m, k)
        out[k] = None if v is None else (v.dtype.str, v.shape, v.tobytes())
    out["num_batches_tracked"] = (type(m.num_batches_tracked), m.num_batches_tracked)
    out["training"] = m.training
    return out


def _new_values(m):
    """A state dict in which every value differs from the module's."""
    sd = m.state_dict()
    for k in ("weight", "bias", "running_mean", "running_var"):
        sd[k] = sd[k] + 1.5
    sd["num_batches_tracked"] = np.array(7, np.int64)
    return sd


BAD_NBT = {
    "nan": float("nan"),
    "np.array(nan)": np.array(np.nan),
    "inf": float("inf"),
    "-inf": -float("inf"),
    "'abc'": "abc",
    "np.array('abc')": np.array("abc"),
    "None": None,
    "complex": 3 + 1j,
    "np.array(complex)": np.array(3 + 1j),
    "2**70": 2**70,
    "np.array(2**70, object)": np.array(2**70, dtype=object),
    "2**63": 2**63,
    "-2**63-1": -(2**63) - 1,
    "np.uint64(2**64-1)": np.uint64(2**64 - 1),
    "1.5": 1.5,
    "np.array(1.5)": np.array(1.5),
    "np.float32(2.5)": np.float32(2.5),
}
if torch is not None:
    BAD_NBT["torch.tensor(nan)"] = torch.tensor(float("nan"))
    BAD_NBT["torch.tensor(inf)"] = torch.tensor(float("inf"))
    BAD_NBT["torch.tensor(1.5)"] = torch.tensor(1.5)


def _expect_atomic_failure(m, sd, *phrases, strict=True):
    before = _snapshot(m)
    with pytest.raises(RuntimeError) as info:
        m.load_state_dict(sd, strict=strict)
    msg = str(info.value)
    assert msg.startswith(f"Error(s) in loading state_dict for {type(m).__name__}:"), msg
    for phrase in phrases:
        assert phrase in msg, f"{phrase!r} not in {msg!r}"
    after = _snapshot(m)
    for k in before:
        assert after[k] == before[k], f"{k} changed by a failed load_state_dict"
    m.state_dict()  # still exportable
    return msg


@pytest.mark.parametrize("cls", list(MODULES))
@pytest.mark.parametrize("label", list(BAD_NBT))
def test_bad_num_batches_tracked_changes_nothing(cls, label):
    m = _trained(cls)
    sd = _new_values(m)
    sd["num_batches_tracked"] = BAD_NBT[label]
    _expect_atomic_failure(m, sd, "num_batches_tracked")


@pytest.mark.parametrize("label", ["nan", "'abc'", "2**70", "1.5"])
def test_bad_num_batches_tracked_with_strict_false(label):
    m = _trained("BatchNorm2d")
    sd = _new_values(m)
    sd["num_batches_tracked"] = BAD_NBT[label]
    _expect_atomic_failure(m, sd, "num_batches_tracked", strict=False)


GOOD_NBT = {
    "5": (5, 5),
    "np.int64(5)": (np.int64(5), 5),
    "np.array(5)": (np.array(5), 5),
    "np.array(5, int32)": (np.array(5, np.int32), 5),
    "np.array(5, uint8)": (np.array(5, np.uint8), 5),
    "0": (0, 0),
    "-1": (-1, -1),  # torch loads tensor(-1)
    "2**63-1": (2**63 - 1, 2**63 - 1),
    "-2**63": (-(2**63), -(2**63)),
    "np.array(5.0)": (np.array(5.0), 5),  # an integer value (torch loads tensor(5.))
}
if torch is not None:
    GOOD_NBT["torch.tensor(5)"] = (torch.tensor(5), 5)
    GOOD_NBT["torch.tensor(5.0)"] = (torch.tensor(5.0), 5)
    GOOD_NBT["torch.tensor(-1)"] = (torch.tensor(-1), -1)


@pytest.mark.parametrize("label", list(GOOD_NBT))
def test_good_num_batches_tracked_loads(label):
    value, expected = GOOD_NBT[label]
    m = _trained("BatchNorm2d")
    sd = _new_values(m)
    sd["num_batches_tracked"] = value
    m.load_state_dict(sd)
    assert int(m.num_batches_tracked) == expected
    out = m.state_dict()["num_batches_tracked"]
    assert out.dtype == np.int64 and out.shape == () and int(out) == expected
    np.testing.assert_array_equal(m.weight, sd["weight"])


def test_huge_num_batches_tracked_never_breaks_state_dict():
    """Issue: 2**70 loaded, and every later state_dict() raised OverflowError."""
    m = _trained("BatchNorm2d")
    sd = m.state_dict()
    sd["num_batches_tracked"] = 2**70
    with pytest.raises(RuntimeError):
        m.load_state_dict(sd)
    assert int(m.state_dict()["num_batches_tracked"]) == 2


# -- several problems at once: all of them in one message, nothing modified -----------------


def test_two_problems_size_mismatch_and_bad_count():
    m = _trained("BatchNorm2d")
    sd = _new_values(m)
    sd["weight"] = np.ones(4, f32)
    sd["num_batches_tracked"] = "abc"
    _expect_atomic_failure(m, sd, "size mismatch for weight", "num_batches_tracked")


def test_two_problems_unconvertible_bias_and_nan_count():
    m = _trained("BatchNorm1d")
    sd = _new_values(m)
    sd["bias"] = np.array(["a", "b", "c"])
    sd["num_batches_tracked"] = float("nan")
    _expect_atomic_failure(m, sd, "bias", "num_batches_tracked")


def test_two_problems_missing_key_and_huge_count():
    m = _trained("BatchNorm3d")
    sd = _new_values(m)
    del sd["running_var"]
    sd["num_batches_tracked"] = 2**70
    msg = _expect_atomic_failure(m, sd, 'Missing key(s) in state_dict: "running_var"', "num_batches_tracked")
    assert msg.count("\n\t") >= 2, msg


def test_three_problems_each_on_its_own_line():
    m = _trained("BatchNormReLU2d")
    sd = _new_values(m)
    sd["running_mean"] = np.ones((3, 1), f32)
    sd["bias"] = np.array([object(), object(), object()])
    sd["num_batches_tracked"] = None
    msg = _expect_atomic_failure(m, sd, "size mismatch for running_mean", "bias", "num_batches_tracked")
    assert msg.count("\n\t") >= 3, msg


# -- the other modules: a bad value anywhere leaves everything as it was ----------------------

ROW_MODULES = {
    "LayerNorm": lambda: cnorm.LayerNorm(4),
    "AddLayerNorm": lambda: cnorm.AddLayerNorm(4),
    "GroupNorm": lambda: cnorm.GroupNorm(2, 4),
    "RMSNorm": lambda: cnorm.RMSNorm(4),
}


@pytest.mark.parametrize("cls", list(ROW_MODULES))
def test_row_modules_bad_value_changes_nothing(cls):
    m = ROW_MODULES[cls]()
    before = {k: v.tobytes() for k, v in m.state_dict().items()}
    sd = {k: v + 2 for k, v in m.state_dict().items()}
    last = list(sd)[-1]
    sd[last] = np.array(["a", "b", "c", "d"])
    with pytest.raises(RuntimeError) as info:
        m.load_state_dict(sd)
    assert str(info.value).startswith(f"Error(s) in loading state_dict for {cls}:")
    assert {k: v.tobytes() for k, v in m.state_dict().items()} == before
