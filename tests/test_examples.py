"""The examples in examples/ run (quick settings) and write their figures."""

import importlib
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _need(*modules):
    for name in modules:
        pytest.importorskip(name)


def _run(script, *args, timeout=120):
    # one thread: the examples are small, and CI machines are small and shared (an
    # OpenMP team of one thread per core stalls whenever another process holds a core)
    env = dict(
        os.environ,
        MPLBACKEND="Agg",
        PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _import_example(name):
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXAMPLES))


def _check_png(path):
    assert path.is_file(), f"{path} was not written"
    with open(path, "rb") as fh:
        assert fh.read(8) == PNG_MAGIC
    assert path.stat().st_size > 10_000


@pytest.mark.parametrize(
    "script,png,needs",
    [
        ("seed_demo.py", "seed_demo.png", ("matplotlib",)),
        ("train_digits_numpy.py", "train_digits_numpy.png", ("matplotlib", "sklearn")),
        ("train_digits_torch.py", "train_digits_torch.png", ("matplotlib", "sklearn", "torch")),
    ],
    ids=["seed_demo", "train_digits_numpy", "train_digits_torch"],
)
def test_example_writes_png(script, png, needs, tmp_path):
    _need(*needs)
    out = _run(script, "--quick", "--out", str(tmp_path / "out"))
    _check_png(tmp_path / "out" / png)
    assert f"wrote {tmp_path / 'out' / png}" in out


def test_seed_demo_normalizes():
    _need("matplotlib")
    seed_demo = _import_example("seed_demo")
    h, y, _bn = seed_demo.compute(0)
    assert h.shape == y.shape == (100, 50)
    assert abs(y.mean(axis=0)).max() < 1e-5
    assert abs(y.var(axis=0) - 1).max() < 1e-3
    assert h.var(axis=0).max() < 0.6  # the Linear output is far from unit variance


def test_digits_numpy_learns():
    _need("sklearn")
    train_digits_numpy = _import_example("train_digits_numpy")
    try:  # NumPy is loaded already here: the example's OPENBLAS_NUM_THREADS=1 is too late
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        import contextlib

        def threadpool_limits(*args, **kwargs):
            return contextlib.nullcontext()

    with threadpool_limits(1, user_api="blas"):
        hist = train_digits_numpy.train(epochs=3, log=lambda *a: None)
    assert hist["loss"][-1] < hist["loss"][0]
    assert hist["test_acc"][-1] > 0.9


@pytest.fixture
def one_thread():
    import cnorm

    torch = pytest.importorskip("torch")
    old = torch.get_num_threads(), cnorm.get_num_threads()
    torch.set_num_threads(1)
    cnorm.set_num_threads(1)
    yield
    torch.set_num_threads(old[0])
    cnorm.set_num_threads(old[1])


def test_digits_torch_same_losses(one_thread):
    _need("sklearn", "torch")
    train_digits_torch = _import_example("train_digits_torch")
    hist = train_digits_torch.train(epochs=1, max_steps=5, log=lambda *a: None)
    a, b = hist["torch.nn"]["loss"], hist["cnorm.torch"]["loss"]
    assert len(a) == len(b) == 5
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4


def test_sync_bn_mpi4py_simulated():
    out = _run("sync_bn_mpi4py.py", "--simulate", "3", "--steps", "2")
    assert "3 ranks" in out and "max |sync - single process|" in out
