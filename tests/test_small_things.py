"""Issue 14, "small things a new user tripped over":

* assigning a parameter is validated on assignment (shape, dtype, contiguity), as torch's
  Parameter assignment does its checks, instead of failing at the next forward;
* torch dtypes (``dtype=torch.float64``) are accepted by the NumPy modules;
* ``cnorm.torch.to_torch_state_dict(module_or_state_dict)`` gives a state dict that
  ``torch.nn.<Norm>.load_state_dict`` takes, and the round trip back is bit-exact;
* ``help(cnorm.BatchNorm2d)`` shows real docstrings (train() showed a source comment);
* ``python -m cnorm`` / ``--help`` list the subcommands with a sentence each;
* the examples say which extra to install (before doing the work) instead of ending in a
  raw ModuleNotFoundError, and examples/sync_bn_mpi4py.py takes ``--out`` like the others;
* the README has a short "Guarantees" section (fork, float64 range, thread counts).
"""

import os
import pathlib
import pydoc
import re
import subprocess
import sys

import numpy as np
import pytest

import cnorm

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

ROOT = pathlib.Path(__file__).resolve().parent.parent
f32, f64 = np.float32, np.float64

# =======================================================================================
# parameter assignment is validated
# =======================================================================================

# name -> (make, input shape, parameter shape)
AFFINE = {
    "BatchNorm1d": (lambda: cnorm.BatchNorm1d(3), (4, 3), (3,)),
    "BatchNorm2d": (lambda: cnorm.BatchNorm2d(3), (4, 3, 2, 2), (3,)),
    "BatchNorm3d": (lambda: cnorm.BatchNorm3d(3), (4, 3, 2, 2, 2), (3,)),
    "BatchNormReLU2d": (lambda: cnorm.BatchNormReLU2d(3), (4, 3, 2, 2), (3,)),
    "InstanceNorm1d": (lambda: cnorm.InstanceNorm1d(3, affine=True), (4, 3, 5), (3,)),
    "GroupNorm": (lambda: cnorm.GroupNorm(1, 3), (4, 3, 5), (3,)),
    "LayerNorm": (lambda: cnorm.LayerNorm((2, 3)), (4, 2, 3), (2, 3)),
    "AddLayerNorm": (lambda: cnorm.AddLayerNorm(3), (4, 3), (3,)),
    "RMSNorm": (lambda: cnorm.RMSNorm(3), (4, 3), (3,)),
}
PARAMS = [(cls, p) for cls in AFFINE for p in ("weight", "bias") if not (cls == "RMSNorm" and p == "bias")]


def _forward(m, x):
    return m(x, np.zeros_like(x))[0] if isinstance(m, cnorm.AddLayerNorm) else m(x)


def _bad_values(shape):
    n = int(np.prod(shape))
    return {
        "np.ones(5) (the issue's example)": (np.ones(5), (TypeError, ValueError)),
        "wrong length": (np.ones(n + 2, f32), ValueError),
        "wrong shape": (np.ones(shape + (1,), f32), ValueError),
        "float64 for float32": (np.ones(shape, f64), TypeError),
        "int32": (np.ones(shape, np.int32), TypeError),
        "list": ([1.0] * n, TypeError),
        "scalar": (1.0, TypeError),
    }


BAD_KEYS = list(_bad_values((3,)))


@pytest.mark.parametrize("bad", BAD_KEYS)
@pytest.mark.parametrize("cls, param", PARAMS, ids=[f"{c}.{p}" for c, p in PARAMS])
def test_bad_parameter_assignment_is_refused(cls, param, bad):
    make, in_shape, p_shape = AFFINE[cls]
    m = make()
    old = getattr(m, param)
    value, exc = _bad_values(p_shape)[bad]
    with pytest.raises(exc):
        setattr(m, param, value)
    assert getattr(m, param) is old  # nothing changed
    _forward(m, np.random.default_rng(0).standard_normal(in_shape).astype(f32))


@pytest.mark.parametrize("cls, param", PARAMS, ids=[f"{c}.{p}" for c, p in PARAMS])
def test_good_parameter_assignment_is_used(cls, param):
    make, in_shape, p_shape = AFFINE[cls]
    x = np.random.default_rng(1).standard_normal(in_shape).astype(f32)
    m, ref = make(), make()
    value = np.full(p_shape, 2.5, f32)
    setattr(m, param, value)
    getattr(ref, param)[...] = 2.5
    np.testing.assert_array_equal(_forward(m, x), _forward(ref, x))


@pytest.mark.parametrize("cls, param", PARAMS, ids=[f"{c}.{p}" for c, p in PARAMS])
def test_non_contiguous_assignment_is_refused_or_works(cls, param):
    """Contiguity: either refused on assignment or used correctly (never a late error)."""
    make, in_shape, p_shape = AFFINE[cls]
    x = np.random.default_rng(2).standard_normal(in_shape).astype(f32)
    value = np.full(p_shape + (2,), 0.75, f32)[..., 0]  # every other float
    assert value.shape == p_shape and not value.flags.c_contiguous
    m, ref = make(), make()
    try:
        setattr(m, param, value)
    except (TypeError, ValueError):
        return
    getattr(ref, param)[...] = 0.75
    np.testing.assert_array_equal(_forward(m, x), _forward(ref, x))


def test_none_assignment_is_allowed_as_in_torch():
    x = np.random.default_rng(3).standard_normal((4, 3, 2, 2)).astype(f32)
    m, ref = cnorm.BatchNorm2d(3), cnorm.BatchNorm2d(3, affine=False)
    m.weight = None
    m.bias = None
    np.testing.assert_array_equal(m(x), ref(x))


# =======================================================================================
# torch dtypes
# =======================================================================================

MODULE_MAKERS = {
    "BatchNorm1d": lambda dt: cnorm.BatchNorm1d(3, dtype=dt),
    "BatchNorm2d": lambda dt: cnorm.BatchNorm2d(3, dtype=dt),
    "BatchNorm3d": lambda dt: cnorm.BatchNorm3d(3, dtype=dt),
    "BatchNormReLU1d": lambda dt: cnorm.BatchNormReLU1d(3, dtype=dt),
    "InstanceNorm2d": lambda dt: cnorm.InstanceNorm2d(3, affine=True, dtype=dt),
    "LayerNorm": lambda dt: cnorm.LayerNorm(3, dtype=dt),
    "AddLayerNorm": lambda dt: cnorm.AddLayerNorm(3, dtype=dt),
    "GroupNorm": lambda dt: cnorm.GroupNorm(1, 3, dtype=dt),
    "RMSNorm": lambda dt: cnorm.RMSNorm(3, dtype=dt),
}


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("tdtype, ndtype", [("float64", f64), ("float32", f32)])
@pytest.mark.parametrize("cls", list(MODULE_MAKERS))
def test_torch_dtype_accepted(cls, tdtype, ndtype):
    m = MODULE_MAKERS[cls](getattr(torch, tdtype))
    assert m.dtype == np.dtype(ndtype)
    assert m.weight.dtype == np.dtype(ndtype)


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("tdtype", ["int64", "complex64"])
def test_unsupported_torch_dtype_says_what_to_pass(tdtype):
    with pytest.raises(TypeError) as info:
        cnorm.BatchNorm2d(3, dtype=getattr(torch, tdtype))
    msg = str(info.value)
    assert "Cannot interpret" not in msg, msg
    assert "float32" in msg and "float64" in msg, msg


# =======================================================================================
# cnorm.torch.to_torch_state_dict: a torch-loadable form, and back
# =======================================================================================


# name: (cnorm class, torch.nn class, constructor arguments, keyword arguments, input shape)
_IN_FULL = {"affine": True, "track_running_stats": True}
TORCH_PAIRS = {
    "BatchNorm1d": ("BatchNorm1d", "BatchNorm1d", (3,), {}, (6, 3)),
    "BatchNorm2d": ("BatchNorm2d", "BatchNorm2d", (3,), {}, (4, 3, 2, 2)),
    "BatchNorm3d": ("BatchNorm3d", "BatchNorm3d", (3,), {"momentum": None}, (4, 3, 2, 2, 2)),
    "BatchNormReLU2d": ("BatchNormReLU2d", "BatchNorm2d", (3,), {}, (4, 3, 2, 2)),
    "BatchNorm2d_no_bias": ("BatchNorm2d", "BatchNorm2d", (3,), {"bias": False}, (4, 3, 2, 2)),
    "InstanceNorm2d": ("InstanceNorm2d", "InstanceNorm2d", (3,), _IN_FULL, (4, 3, 2, 2)),
    "LayerNorm": ("LayerNorm", "LayerNorm", ((2, 3),), {}, (4, 2, 3)),
    "AddLayerNorm": ("AddLayerNorm", "LayerNorm", (3,), {}, (4, 3)),
    "GroupNorm": ("GroupNorm", "GroupNorm", (1, 3), {}, (4, 3, 5)),
    "RMSNorm": ("RMSNorm", "RMSNorm", (3,), {}, (4, 3)),
}
PAIR_NAMES = list(TORCH_PAIRS)


def _torch_pairs():
    """name: (make(dtype) -> the cnorm module, make(dtype) -> the torch one, input shape)."""
    f = {f32: torch.float32, f64: torch.float64}
    out = {}
    for name, (cls, torch_cls, args, kw, shape) in TORCH_PAIRS.items():
        out[name] = (
            lambda dt, cls=cls, args=args, kw=kw: getattr(cnorm, cls)(*args, **kw, dtype=dt),
            lambda dt, cls=torch_cls, args=args, kw=kw: getattr(torch.nn, cls)(*args, **kw, dtype=f[dt]),
            shape,
        )
    return out


def _trained(make, shape, dtype):
    m = make(dtype)
    rng = np.random.default_rng(4)
    for p in m.parameters():
        p[...] = rng.normal(1, 0.3, p.shape)
    for _ in range(3):
        x = rng.normal(0.5, 2, shape).astype(dtype)
        _forward(m, x)
    return m


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("dtype", [f32, f64], ids=["float32", "float64"])
@pytest.mark.parametrize("what", ["module", "state_dict"])
@pytest.mark.parametrize("name", PAIR_NAMES)
def test_to_torch_state_dict_round_trip(name, what, dtype):
    import cnorm.torch as ct

    make, make_torch, shape = _torch_pairs()[name]
    m = _trained(make, shape, dtype)
    sd = ct.to_torch_state_dict(m if what == "module" else m.state_dict())
    assert list(sd) == list(m.state_dict())
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    tm = make_torch(dtype)
    result = tm.load_state_dict(sd)  # strict
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in m.state_dict().items():
        got = tm.state_dict()[k]
        if k == "num_batches_tracked":
            assert got.dtype == torch.int64 and got.shape == () and got.item() == int(v)
        else:
            assert got.dtype == {f32: torch.float32, f64: torch.float64}[dtype]
            np.testing.assert_array_equal(got.numpy(), v, err_msg=k)
    back = make(dtype)
    back.load_state_dict(tm.state_dict())
    for k, v in m.state_dict().items():
        assert back.state_dict()[k].tobytes() == v.tobytes(), k
    # the torch module computes what the cnorm module computes
    x = np.random.default_rng(5).normal(0.5, 2, shape).astype(dtype)
    m.eval()
    tm.eval()
    expected = tm(torch.from_numpy(x))
    if name == "BatchNormReLU2d":
        expected = torch.relu(expected)
    np.testing.assert_allclose(
        _forward(m, x),
        expected.detach().numpy(),
        rtol=1e-5 if dtype is f32 else 1e-12,
        atol=1e-5 if dtype is f32 else 1e-12,
    )


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_to_torch_state_dict_is_documented_and_independent():
    import cnorm.torch as ct

    assert "load_state_dict" in (ct.to_torch_state_dict.__doc__ or "")
    m = _trained(lambda dt: cnorm.BatchNorm2d(3, dtype=dt), (4, 3, 2, 2), f32)
    sd = ct.to_torch_state_dict(m)
    before = sd["running_mean"].clone()
    m(np.ones((4, 3, 2, 2), f32) * 7)  # the module moves on ...
    assert torch.equal(sd["running_mean"], before)  # ... the exported state does not


# =======================================================================================
# help(): real docstrings, never a source comment
# =======================================================================================

CLASSES = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormReLU1d",
    "BatchNormReLU2d",
    "BatchNormReLU3d",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "AddLayerNorm",
    "GroupNorm",
    "RMSNorm",
]


@pytest.mark.parametrize("cls", CLASSES)
def test_help_shows_docstrings_not_comments(cls):
    text = pydoc.render_doc(getattr(cnorm, cls), renderer=pydoc.plaintext)
    comments = [ln for ln in text.splitlines() if ln.lstrip(" |").startswith("#")]
    assert not comments, f"help({cls}) shows source comments as docs: {comments}"
    for method in ("train", "eval"):
        doc = getattr(getattr(cnorm, cls), method).__doc__
        assert doc and len(doc.split()) >= 3, f"{cls}.{method} has no docstring"
    assert "mode" in cnorm.BatchNorm2d.train.__doc__.lower() or "training" in cnorm.BatchNorm2d.train.__doc__


# =======================================================================================
# python -m cnorm
# =======================================================================================


def _python(*args, timeout=120, **env):
    """``python *args`` run from the repository root with cnorm importable (and ``env``
    added to the environment); its output captured."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run(
        [sys.executable, *args],
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def _cli(*args):
    return _python("-m", "cnorm", *args)


def _subcommands(text):
    """{name: description} from lines like '  bench      Time cnorm against ...'."""
    out = {}
    for ln in text.splitlines():
        mt = re.match(r"^\s+([a-z][\w-]*)\s{2,}(\S.*)$", ln)
        if mt:
            out[mt.group(1)] = mt.group(2)
    return out


@pytest.mark.parametrize("args", [(), ("--help",), ("-h",)], ids=["no args", "--help", "-h"])
def test_cli_lists_subcommands_with_a_sentence(args):
    proc = _cli(*args)
    if args:
        assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    assert len(text.strip().splitlines()) > 1, f"only a one-line usage: {text!r}"
    cmds = _subcommands(text)
    assert "bench" in cmds, f"no subcommand list in {text!r}"
    for name, desc in cmds.items():
        assert len(desc.split()) >= 3, f"subcommand {name}: {desc!r} is not a sentence"


# =======================================================================================
# the examples: which extra to install, before doing the work; --out everywhere
# =======================================================================================

BLOCKING_RUNNER = r"""
import importlib.abc, runpy, sys
blocked = set(sys.argv[1].split(","))


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


for mod in list(sys.modules):
    if mod.split(".")[0] in blocked:
        del sys.modules[mod]
sys.meta_path.insert(0, Blocker())
import cnorm
_call = cnorm.Module.__call__


def _work(self, *args, **kwargs):                 # marks the start of the real work
    if not getattr(cnorm, "_work_started", False):
        cnorm._work_started = True
        sys.stderr.write("CNORM_WORK_STARTED\n")
    return _call(self, *args, **kwargs)


cnorm.Module.__call__ = _work
script = sys.argv[2]
sys.argv = [script] + sys.argv[3:]
sys.path.insert(0, script.rsplit("/", 1)[0])      # as `python examples/x.py` does
runpy.run_path(script, run_name="__main__")
"""


def _run_example_without(blocked, script, *args):
    script = str(ROOT / "examples" / script)
    return _python(
        "-c",
        BLOCKING_RUNNER,
        ",".join(blocked),
        script,
        *args,
        timeout=300,
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
    )


@pytest.mark.parametrize(
    "script, blocked, needs",
    [
        ("seed_demo.py", ("matplotlib",), ()),
        ("train_digits_numpy.py", ("matplotlib",), ()),
        ("train_digits_numpy.py", ("sklearn",), ()),
        ("train_digits_torch.py", ("sklearn",), ("torch",)),
        ("train_digits_torch.py", ("matplotlib",), ("torch",)),
    ],
    ids=[
        "seed_demo-matplotlib",
        "digits_numpy-matplotlib",
        "digits_numpy-sklearn",
        "digits_torch-sklearn",
        "digits_torch-matplotlib",
    ],
)
def test_example_names_the_extra_before_working(tmp_path, script, blocked, needs):
    for name in needs:
        pytest.importorskip(name)
    proc = _run_example_without(blocked, script, "--quick", "--out", str(tmp_path))
    err = proc.stderr
    assert proc.returncode != 0, "the example ran without its dependency?"
    assert "Traceback" not in err and "ModuleNotFoundError" not in err, err[-2000:]
    assert "pip install" in err and re.search(r"examples|plot", err), err[-2000:]
    assert blocked[0] in err, f"the message does not name {blocked[0]}: {err[-2000:]}"
    assert "CNORM_WORK_STARTED" not in err, "it did the work before saying what is missing"


def test_sync_example_takes_out(tmp_path):
    script = str(ROOT / "examples" / "sync_bn_mpi4py.py")
    proc = _python(
        script, "--simulate", "2", "--steps", "1", "--out", str(tmp_path / "out"), OMP_NUM_THREADS="1"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


# =======================================================================================
# README: the guarantees
# =======================================================================================


def test_readme_states_the_guarantees():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    mt = re.search(r"^#+\s*Guarantees\s*$(.*?)(?=^#+\s|\Z)", text, re.MULTILINE | re.DOTALL)
    assert mt, "README has no 'Guarantees' section"
    section = mt.group(1).lower()
    for topic in ("fork", "float64", "thread"):
        assert topic in section, f"the Guarantees section does not mention {topic}"
