"""Which cnorm.torch layer runs the cnorm kernels for which layout and dtype, by the torch
profiler's word (no ``aten::*norm*`` op in a forward+backward above cnorm.torch.TORCH_BELOW).

``python tests/torch_half_table.py`` prints the table (class x layout x dtype -> runs
cnorm, or why not); tests/test_torch_half.py checks it against ``EXPECTED_TORCH``."""

from __future__ import annotations

import os
import sys
from typing import Dict, List, Set, Tuple

import torch

if __name__ == "__main__":  # run from a checkout: the in-place build
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cnorm.torch as ct
from cnorm.torch import _dropin

nn = torch.nn
CL = {4: torch.channels_last, 5: torch.channels_last_3d}
DTYPES = ["float32", "float64", "bfloat16", "float16", "mixed-bf16", "mixed-f16"]

# (class, constructor args, kwargs, input shape): 65536 elements; table() caps every
# TORCH_BELOW at that size (the half defaults go up to 1048576)
TABLE_NUMEL = 65536
CLASSES = [
    ("BatchNorm1d", (16,), {}, (128, 16, 32)),
    ("BatchNorm2d", (16,), {}, (16, 16, 16, 16)),
    ("BatchNorm3d", (16,), {}, (8, 16, 8, 8, 8)),
    ("LayerNorm", (64,), {}, (1024, 64)),
    ("GroupNorm", (4, 16), {}, (16, 16, 16, 16)),
    ("InstanceNorm1d", (16,), {"affine": True, "track_running_stats": True}, (128, 16, 32)),
    ("InstanceNorm2d", (16,), {"affine": True, "track_running_stats": True}, (16, 16, 16, 16)),
    ("InstanceNorm3d", (16,), {"affine": True, "track_running_stats": True}, (8, 16, 8, 8, 8)),
    ("RMSNorm", (64,), {}, (1024, 64)),
]

#: the cases that run torch's kernels, and why (none: every class, layout and dtype runs
#: cnorm's; channels-last half GroupNorm/InstanceNorm since their kernel converts in vectors)
WHY_NOT = "none expected"
EXPECTED_TORCH: Set[Tuple[str, str, str]] = set()


def dtypes(name: str) -> Tuple[torch.dtype, torch.dtype]:
    """(input dtype, parameter dtype) of a DTYPES name."""
    half = {"bf16": torch.bfloat16, "f16": torch.float16}
    if name.startswith("mixed-"):
        return half[name[6:]], torch.float32
    dt = getattr(torch, name)
    return dt, dt


def layouts(shape) -> List[str]:
    return ["contiguous", "channels_last"] if len(shape) in CL else ["contiguous"]


def runs_cnorm(cls: str, args, kwargs, shape, layout: str, dtype: str, train: bool = True) -> List[str]:
    """The aten norm ops a forward+backward of the converted layer runs ([]: cnorm's)."""
    x_dtype, p_dtype = dtypes(dtype)
    module = ct.convert(getattr(nn, cls)(*args, **kwargs)).to(p_dtype).train(train)
    x = torch.randn(shape).to(x_dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL[len(shape)])
    x.requires_grad_()
    with torch.profiler.profile() as prof:
        module(x).float().square().sum().backward()
    return sorted({e.name for e in prof.events() if e.name.startswith("aten::") and "norm" in e.name})


def table() -> Dict[Tuple[str, str, str], List[str]]:
    saved = dict(ct.TORCH_BELOW)
    ct.TORCH_BELOW.update({k: (min(a, TABLE_NUMEL), min(b, TABLE_NUMEL)) for k, (a, b) in saved.items()})
    try:
        return _table()
    finally:
        ct.TORCH_BELOW.update(saved)


def _table() -> Dict[Tuple[str, str, str], List[str]]:
    rows = {}
    for cls, args, kwargs, shape in CLASSES:
        for layout in layouts(shape):
            for dtype in DTYPES:
                if dtype == "bfloat16" or dtype == "mixed-bf16":
                    if torch.bfloat16 not in _dropin.FLOATS:  # no ml_dtypes: torch's
                        rows[(cls, layout, dtype)] = ["(no ml_dtypes)"]
                        continue
                rows[(cls, layout, dtype)] = runs_cnorm(cls, args, kwargs, shape, layout, dtype)
    return rows


def main() -> None:
    rows = table()
    print("| class | layout | " + " | ".join(DTYPES) + " |")
    print("|---|---|" + "---|" * len(DTYPES))
    for cls, _, _, shape in CLASSES:
        for layout in layouts(shape):
            cells = ["yes" if not rows[(cls, layout, dt)] else "no (1)" for dt in DTYPES]
            print(f"| {cls} | {layout} | " + " | ".join(cells) + " |")
    if any(rows.values()):
        print(f"\n(1) torch's kernels, torch's results (expected: {WHY_NOT}).")
    bad = {k: v for k, v in rows.items() if bool(v) != (k in EXPECTED_TORCH)}
    print("unexpected:", bad or "none")


if __name__ == "__main__":
    main()
