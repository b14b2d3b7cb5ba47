# Type stub of the compiled batch_norm.pyx: per-channel kernels over x viewed as (N, C, S).
# weight, bias, running_mean, running_var: None or C contiguous elements; statistics float64.
# kind 1 (float16) / 2 (bfloat16): the (N, C, S) arrays are half bits (uint16), the
# parameters and running statistics float32.

from typing import Optional

import numpy as np

_Array = np.ndarray

def batch_norm_stats(x: _Array, N: int, C: int, S: int, kind: int = ...) -> tuple[_Array, _Array]: ...
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
    kind: int = ...,
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
    kind: int = ...,
    stats_kind: int = ...,
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
    kind: int = ...,
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
    kind: int = ...,
) -> tuple[_Array, _Array, _Array]: ...
def batch_norm_backward_reduce(
    dy: _Array, x: _Array, N: int, C: int, S: int, mean: _Array, invstd: _Array, kind: int = ...
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
    kind: int = ...,
) -> _Array: ...

# simd_control.pxi, included by this module
def _simd_builds() -> tuple[str, ...]: ...
def _simd_build() -> str: ...
def _set_simd_build(name: str) -> str: ...
def _set_simd(use_avx2: bool) -> bool: ...
def _set_stream_min_bytes(n: int) -> int: ...
def _set_prefetch(on: bool) -> bool: ...
def set_cols4_max_channels(c: int | tuple[int, int], grad_c: int | None = None) -> tuple[int, int]: ...
def four_rows_choice(C: int, itemsize: int) -> tuple[bool, bool]: ...
