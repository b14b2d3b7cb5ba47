"""The public API: what cnorm, cnorm.modules, cnorm.functional and the reference export;
importing cnorm does not import torch; every module class has its entry in the registry
of the norms under test (tests/norms.py)."""

import subprocess
import sys

from norms import BY_NAME, reference

import cnorm
import cnorm.functional as F


def test_exports():
    for name in [
        "GroupNorm",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "InstanceNorm3d",
        "RMSNorm",
        "AddLayerNorm",
        "BatchNormReLU1d",
        "BatchNormReLU2d",
        "BatchNormReLU3d",
    ]:
        assert name in cnorm.__all__ and hasattr(cnorm, name)
        assert name in cnorm.modules.__all__
    for name in [
        "group_norm",
        "native_group_norm",
        "group_norm_backward",
        "instance_norm",
        "native_instance_norm",
        "instance_norm_backward",
        "rms_norm",
        "native_rms_norm",
        "rms_norm_backward",
        "add_layer_norm",
        "native_add_layer_norm",
        "add_layer_norm_backward",
        "batch_norm_relu",
        "native_batch_norm_relu",
        "batch_norm_relu_backward",
    ]:
        assert name in F.__all__ and callable(getattr(F, name))
    for name in [
        "group_norm_forward",
        "group_norm_backward",
        "instance_norm_forward",
        "instance_norm_backward",
        "rms_norm_forward",
        "rms_norm_backward",
        "add_layer_norm_forward",
        "add_layer_norm_backward",
        "batch_norm_relu_forward",
        "batch_norm_relu_backward",
    ]:
        assert name in reference.__all__ and callable(getattr(reference, name))


def test_import_cnorm_does_not_import_torch():
    code = (
        "import sys, cnorm, cnorm.functional, cnorm.modules, cnorm.benchmarks.cases; "
        "assert 'torch' not in sys.modules, 'torch imported'"
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
