"""Every private internal of cnorm that the tests touch, in one file.

The rest of tests/ uses the public API only (cnorm.*, cnorm.functional.*, cnorm.torch.*),
so that when cnorm's insides move, this is the one file to re-point.
"""

from cnorm import _ops
from cnorm._kernels import batch_norm, pool, row_norm

# --------------------------------------------------------------------------- kernels
# The compiled extensions that have SIMD builds and non-temporal ("streaming") stores.
KERNEL_MODULES = (batch_norm, row_norm)

# The pool of freed output buffers (cnorm/_kernels/pool.pyx): its size floor and the
# bytes it holds now.
POOL_MIN_BYTES = 256 * 1024


def pool_kept_bytes():
    return pool.kept_bytes()


# A streaming threshold (bytes) that no array reaches: streaming off.
NEVER = 2**62


def set_simd(module, build):
    """Switch ``module`` to the named SIMD build; returns the name of the one in use."""
    return module._set_simd_build(build)


def simd_builds(module):
    """The SIMD builds of ``module`` that this CPU runs, most portable first."""
    return module._simd_builds()


def simd_build(module):
    """The name of the SIMD build ``module`` uses now."""
    return module._simd_build()


def set_stream_min_bytes(module, n):
    """Set the smallest output (bytes) written with streaming stores; returns the old value."""
    return module._set_stream_min_bytes(n)


# The child processes of test_hostile_kernels.py call the kernels as ``B.<name>`` and
# ``R.<name>`` (batch-norm and row-norm extensions; their case table names the functions).
KERNEL_IMPORT = "from cnorm._kernels import batch_norm as B, row_norm as R"


# --------------------------------------------------------------------------- cnorm.torch
# The functions the drop-in modules call for their arithmetic (the eager specs of
# cnorm.torch._lean look them up at call time), patched by test_torch_dropin's
# ``kernel_calls`` fixture to tell the cnorm path from torch's.
def dropin_entry_points():
    """key -> (owner, attribute name, position of the input array among the arguments);
    a function, because cnorm.torch needs torch and the tests that import this file may
    run without it (.ci/arm64)."""
    from cnorm.torch import _lean

    return {
        "bn": (_lean, "_batch_norm", 0),  # training and eval, both layouts
        "bn_bwd": (_ops, "batch_norm_backward", 1),
        "ln": (_ops, "layer_norm_forward", 0),
        "ln_bwd": (_ops, "layer_norm_backward", 1),
    }


def saved_stats(grad_fn):
    """(mean, invstd, training) that a drop-in BatchNorm's autograd node keeps for backward."""
    return grad_fn.stats


# --------------------------------------------------------------------------- benchmarks


def bench_main(argv):
    """``python -m cnorm bench`` with the arguments ``argv``; returns the exit code."""
    from cnorm.benchmarks import runner

    return runner.main(argv)


def torch_bench_cases():
    """The module of the torch benchmark cases (CASES_BY_NAME via ``.C``, DROPIN_IMPLS, build_dropin)."""
    from cnorm.benchmarks import torch_cases

    return torch_cases


# --------------------------------------------------------------------------- messages


def unsupported_dtype_message(dtype):
    """cnorm's TypeError message for an input of ``dtype``: it names bfloat16 only when
    ml_dtypes is installed, so the tests take it from cnorm rather than spell it out."""
    import numpy as np

    from cnorm._validate import unsupported_dtype

    return str(unsupported_dtype(np.dtype(dtype)))
