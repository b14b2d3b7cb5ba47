"""The public API: what cnorm, cnorm.modules, cnorm.functional and the reference export;
importing cnorm does not import torch; every module class has its entry in the registry
of the norms under test (tests/norms.py)."""

import inspect
import subprocess
import sys

import pytest
from norms import BY_NAME, reference

import cnorm
import cnorm.functional as F
import cnorm.reference
from cnorm._twins import same_signature

# the norms added after the first three: their functional forms and reference names
NEWER_NORMS = ["group_norm", "instance_norm", "rms_norm", "add_layer_norm", "batch_norm_relu"]


def test_exports():
    for name in BY_NAME:  # every module class under test
        assert name in cnorm.__all__ and hasattr(cnorm, name)
        assert name in cnorm.modules.__all__
    for norm in NEWER_NORMS:
        for name in (norm, f"native_{norm}", f"{norm}_backward"):
            assert name in F.__all__ and callable(getattr(F, name))
        for name in (f"{norm}_forward", f"{norm}_backward"):
            assert name in reference.__all__ and callable(getattr(reference, name))


def test_reference_twins_take_the_functional_signatures():
    assert cnorm.reference.__all__ == F.__all__
    for name in F.__all__:
        assert inspect.signature(getattr(cnorm.reference, name)) == inspect.signature(getattr(F, name))
    with pytest.raises(TypeError, match="must take the arguments of layer_norm"):
        same_signature(F.layer_norm)(lambda input, normalized_shape: None)
    with pytest.raises(TypeError, match="has no arguments"):
        same_signature(F.layer_norm, affine=False)
    # InstanceNorm's constructor: BatchNorm's arguments and annotations, torch's defaults
    bn, inorm = inspect.signature(cnorm.BatchNorm2d), inspect.signature(cnorm.InstanceNorm2d)
    assert inorm == bn.replace(
        parameters=[
            p.replace(default=False) if p.name in ("affine", "track_running_stats") else p
            for p in bn.parameters.values()
        ]
    )


def test_import_cnorm_does_not_import_torch():
    code = (
        "import sys, cnorm, cnorm.functional, cnorm.modules, cnorm.benchmarks.cases; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_benchmark_builders_take_bfloat16_by_name_before_ml_dtypes_is_imported():
    """np.dtype("bfloat16") exists only once ml_dtypes is imported: the builders import it
    (a fresh interpreter, where nothing has yet)."""
    pytest.importorskip("ml_dtypes")
    code = (
        "import sys; from cnorm.benchmarks import cases as C; "
        "assert 'ml_dtypes' not in sys.modules; "
        "fn = C.build(C.CASES_BY_NAME['bn2d_tiny'], 'train_fwd', 'cnorm', 'bfloat16'); "
        "y = fn(); y = y[0] if isinstance(y, tuple) else y; assert str(y.dtype) == 'bfloat16', y.dtype; "
        "assert C.dtype_name('bfloat16') == 'bfloat16' and C.dtype_name('float32') == 'float32'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_module_is_in_the_registry():
    modules = {
        name
        for name in cnorm.__all__
        if isinstance(getattr(cnorm, name), type)
        and issubclass(getattr(cnorm, name), cnorm.Module)
        and getattr(cnorm, name) is not cnorm.Module
    }
    assert modules == set(BY_NAME)
