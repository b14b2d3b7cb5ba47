# Type stub of the compiled channels_last.pyx: GroupNorm / InstanceNorm over x viewed as
# C-contiguous (N, S, C), dims = (N, G, Cg, S); weight, bias: None or C contiguous
# elements; statistics float64. kind 1 / 2: float16 / bfloat16 data as uint16 bits.

from typing import Optional

import numpy as np

_Array = np.ndarray
_Dims = tuple[int, int, int, int]

def group_norm_forward(
    x: _Array,
    dims: _Dims,
    weight: Optional[_Array],
    bias: Optional[_Array],
    eps: float,
    out_last: bool = ...,
    kind: int = ...,
) -> tuple[_Array, _Array, _Array, _Array]: ...
def group_norm_backward(
    dy: _Array,
    x: _Array,
    dims: _Dims,
    mean: _Array,
    rstd: _Array,
    weight: Optional[_Array],
    dy_last: bool = ...,
    kind: int = ...,
) -> tuple[_Array, _Array, _Array]: ...

# simd_control.pxi, included by this module
def _simd_builds() -> tuple[str, ...]: ...
def _simd_build() -> str: ...
def _set_simd_build(name: str) -> str: ...
def _set_simd(use_avx2: bool) -> bool: ...
def _set_stream_min_bytes(n: int) -> int: ...
def _set_prefetch(on: bool) -> bool: ...
