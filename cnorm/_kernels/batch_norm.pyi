# Type stub of the compiled batch_norm.pyx: per-channel kernels over x viewed as (N, C, S).
# weight, bias, running_mean, running_var: None or C contiguous elements; statistics float64.

from typing import Optional

import numpy as np

_Array = np.ndarray

def batch_norm_stats(x: _Array, N: int, C: int, S: int) -> tuple[_Array, _Array]: ...
def batch_norm_elemt(
    x: _Array,
    N: int,
    C: int,
    S: int,
    mean: _Array,
    invstd: _Array,
    weight: Optional[_Array],
    bias: Optional[_Array],
    relu: bool = ...,
) -> _Array: ...
def batch_norm_forward_train(
    x: _Array,
    N: int,
    C: int,
    S: int,
    weight: Optional[_Array],
    bias: Optional[_Array],
    running_mean: Optional[_Array],
    running_var: Optional[_Array],
    factor: float,
    eps: float,
    relu: bool = ...,
) -> tuple[_Array, _Array, _Array]: ...
def batch_norm_forward_eval(
    x: _Array,
    N: int,
    C: int,
    S: int,
    weight: Optional[_Array],
    bias: Optional[_Array],
    running_mean: Optional[_Array],
    running_var: Optional[_Array],
    eps: float,
    relu: bool = ...,
) -> tuple[_Array, _Array, _Array]: ...
def batch_norm_backward(
    dy: _Array,
    x: _Array,
    N: int,
    C: int,
    S: int,
    mean: _Array,
    invstd: _Array,
    weight: Optional[_Array],
    training: bool,
    y: Optional[_Array] = ...,
) -> tuple[_Array, _Array, _Array]: ...
def batch_norm_backward_reduce(
    dy: _Array, x: _Array, N: int, C: int, S: int, mean: _Array, invstd: _Array
) -> tuple[_Array, _Array]: ...
def batch_norm_backward_elemt(
    dy: _Array,
    x: _Array,
    N: int,
    C: int,
    S: int,
    mean: _Array,
    invstd: _Array,
    weight: Optional[_Array],
    sum_dy: _Array,
    sum_dy_xhat: _Array,
    count: float,
) -> _Array: ...

# simd_control.pxi, included by this module
def _simd_builds() -> tuple[str, ...]: ...
def _simd_build() -> str: ...
def _set_simd_build(name: str) -> str: ...
def _set_simd(use_avx2: bool) -> bool: ...
def _set_stream_min_bytes(n: int) -> int: ...
