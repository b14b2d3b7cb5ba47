# Type stub of the compiled row_norm.pyx: per-row kernels over x viewed as (M, D) (or
# (N, G, Cg, S) for group norm). weight, bias: None or contiguous parameter arrays.
# kind 1 (float16) / 2 (bfloat16): the (M, D) arrays are half bits (uint16), the
# parameters float32, dweight/dbias float64.

from typing import Optional

import numpy as np

_Array = np.ndarray

def layer_norm_forward(
    x: _Array, M: int, D: int, weight: Optional[_Array], bias: Optional[_Array], eps: float, kind: int = ...
) -> tuple[_Array, _Array, _Array]: ...
def add_layer_norm_forward(
    x: _Array,
    residual: _Array,
    M: int,
    D: int,
    weight: Optional[_Array],
    bias: Optional[_Array],
    eps: float,
    kind: int = ...,
) -> tuple[_Array, _Array, _Array, _Array]: ...
def rms_norm_forward(
    x: _Array, M: int, D: int, weight: Optional[_Array], eps: float, kind: int = ...
) -> tuple[_Array, _Array]: ...
def layer_norm_backward(
    dy: _Array,
    x: _Array,
    M: int,
    D: int,
    mean: _Array,
    rstd: _Array,
    weight: Optional[_Array],
    kind: int = ...,
) -> tuple[_Array, _Array, _Array]: ...
def rms_norm_backward(
    dy: _Array, x: _Array, M: int, D: int, rrms: _Array, weight: Optional[_Array], kind: int = ...
) -> tuple[_Array, _Array]: ...
def group_norm_forward(
    x: _Array,
    N: int,
    G: int,
    Cg: int,
    S: int,
    weight: Optional[_Array],
    bias: Optional[_Array],
    eps: float,
    kind: int = ...,
) -> tuple[_Array, _Array, _Array, _Array]: ...
def group_norm_backward(
    dy: _Array,
    x: _Array,
    N: int,
    G: int,
    Cg: int,
    S: int,
    mean: _Array,
    rstd: _Array,
    weight: Optional[_Array],
    kind: int = ...,
) -> tuple[_Array, _Array, _Array]: ...

# simd_control.pxi, included by this module
def _simd_builds() -> tuple[str, ...]: ...
def _simd_build() -> str: ...
def _set_simd_build(name: str) -> str: ...
def _set_simd(use_avx2: bool) -> bool: ...
def _set_stream_min_bytes(n: int) -> int: ...
def _set_prefetch(on: bool) -> bool: ...
def _set_pair_rows_min(d: int) -> int: ...
def widen_half(bits: _Array, kind: int, double: bool = False) -> _Array: ...
def narrow_half(x: _Array, kind: int) -> _Array: ...
