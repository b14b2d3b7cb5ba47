"""Interleaved wall-clock timing used by ``python -m cnorm bench``.

Method (also shown by ``python -m cnorm bench --help``):

1. warm-up: every callable is called until ``warmup_s`` has elapsed (at least
   ``min_warmup_calls`` calls) -- first-touch page faults, thread pool start-up,
   allocator caches;
2. calibration, once per callable: the number ``k`` of inner calls is grown
   until one loop of ``k`` calls takes at least ``min_rep_s`` (2 ms by default),
   so timer resolution and loop overhead are negligible;
3. repetitions are interleaved -- ``a, b, c, a, b, c, ...`` -- so that slow drifts
   of the machine (frequency, other tenants) hit every implementation alike; each
   rep is ``time.perf_counter()`` around ``k`` calls, divided by ``k``;
4. the reported time is the median over reps (robust to outliers). The garbage
   collector is disabled while timing.

:class:`SameThreads` puts cnorm and torch on one thread count for a measurement;
:func:`stream_bandwidth` measures the memory bandwidth at it (the "x floor" column).
This module imports nothing of cnorm (the bottom of :mod:`cnorm.benchmarks`, with
:mod:`~cnorm.benchmarks.cases`): the copy kernel is passed in.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import repeat
from typing import Callable

import numpy as np

__all__ = [
    "BANDWIDTH_TEXT",
    "METHOD_TEXT",
    "Bandwidth",
    "Measurement",
    "SameThreads",
    "TimingSettings",
    "calibrate",
    "last_level_cache_bytes",
    "measure_interleaved",
    "stream_bandwidth",
    "stream_buffer_bytes",
    "time_loop",
    "warm_up",
]

METHOD_TEXT = (
    "timing method: all implementations run in the same process. Each callable is "
    "built once (module constructed, input/grad arrays preallocated from "
    "numpy.random.default_rng(0)), warmed up, then calibrated once: the inner "
    "count k grows until k calls take >= --min-rep-ms. Repetitions are interleaved "
    "(cnorm, torch, copy, cnorm, torch, copy, ...); one rep = time.perf_counter() "
    "around a loop of k calls, divided by k; the reported time is the median over "
    "--reps reps (gc disabled while timing)."
)


@dataclass(frozen=True)
class TimingSettings:
    reps: int = 15  # interleaved repetitions (median taken)
    min_rep_s: float = 2e-3  # one rep (k inner calls) lasts at least this long
    warmup_s: float = 0.02  # warm-up time per callable ...
    min_warmup_calls: int = 2  # ... and at least this many calls
    max_measure_s: float = 6.0  # cap on the timed part of one measurement: fewer reps
    min_reps: int = 3  # ... but never fewer than this


@dataclass
class Measurement:
    times: dict[str, list[float]] = field(default_factory=dict)  # seconds per call, per rep
    inner: dict[str, int] = field(default_factory=dict)  # k per callable

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    @property
    def medians(self) -> dict[str, float]:
        return {name: self.median(name) for name in self.times}


def time_loop(fn: Callable[[], object], k: int) -> float:
    """Seconds per call of ``fn``, from one ``perf_counter`` pair around ``k`` calls."""
    perf_counter = time.perf_counter
    t0 = perf_counter()
    for _ in repeat(None, k):
        fn()
    return (perf_counter() - t0) / k


def warm_up(fn: Callable[[], object], min_s: float, min_calls: int = 1) -> None:
    perf_counter = time.perf_counter
    t_end = perf_counter() + min_s
    n = 0
    while n < min_calls or perf_counter() < t_end:
        fn()
        n += 1


def calibrate(fn: Callable[[], object], min_rep_s: float, max_inner: int = 10_000_000) -> int:
    """Smallest (roughly) ``k`` such that ``k`` calls of ``fn`` take ``>= min_rep_s``."""
    k = 1
    while True:
        dt = time_loop(fn, k) * k
        if dt >= min_rep_s or k >= max_inner:
            return k
        if dt <= 0:
            k *= 10
        else:
            # aim 20% above the target, grow at least x2, at most x100 per step
            k = int(min(max(k * 2, math.ceil(k * 1.2 * min_rep_s / dt)), k * 100))
        k = min(k, max_inner)


def measure_interleaved(
    fns: Mapping[str, Callable[[], object]], settings: TimingSettings = TimingSettings()
) -> Measurement:
    """Time every callable of ``fns`` with interleaved repetitions (see module doc)."""
    names = list(fns)
    m = Measurement()
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for name in names:
            warm_up(fns[name], settings.warmup_s, settings.min_warmup_calls)
        for name in names:
            m.inner[name] = calibrate(fns[name], settings.min_rep_s)
            m.times[name] = []
        # one interleaved round costs about sum(k * t); cap the number of rounds
        round_s = sum(m.inner[n] * time_loop(fns[n], 1) for n in names)
        reps = settings.reps
        if round_s > 0 and reps * round_s > settings.max_measure_s:
            reps = max(settings.min_reps, int(settings.max_measure_s / round_s))
        for _ in range(reps):
            for name in names:
                m.times[name].append(time_loop(fns[name], m.inner[name]))
    finally:
        if gc_was_enabled:
            gc.enable()
    return m


class SameThreads:
    """cnorm and torch (``None``: not timed) on one thread count, set by :meth:`set`; the
    counts they had on entry come back on exit::

        with SameThreads(cnorm, torch) as threads:
            threads.set(2)
    """

    def __init__(self, cnorm, torch=None):
        self.cnorm, self.torch = cnorm, torch
        self.orig_cnorm = cnorm.get_num_threads()
        self.orig_torch = torch.get_num_threads() if torch is not None else None

    def set(self, n: int) -> None:
        self.cnorm.set_num_threads(n)
        if self.torch is not None:
            self.torch.set_num_threads(n)

    def restore(self) -> None:
        self.cnorm.set_num_threads(self.orig_cnorm)
        if self.torch is not None:
            self.torch.set_num_threads(self.orig_torch)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


# --------------------------------------------------------------------------- bandwidth

BANDWIDTH_TEXT = (
    "bandwidth: a read+write copy dst[:] = src of float64 buffers (each --stream-mb MiB, "
    "by default 4x the last-level cache and at least 64 MiB) by cnorm's own parallel "
    "kernel (cnorm._kernels.stream) at the row's thread count, one contiguous share per "
    "thread; both the bytes read and the bytes written counted (2 x buffer per copy, as "
    "STREAM's copy); best of --stream-reps reps, of ordinary stores and of non-temporal "
    "stores (x86-64; the kernels stream outputs of 10 MB and more), whichever is faster."
)


@dataclass(frozen=True)
class Bandwidth:
    """The copy bandwidth at one thread count (bytes per second, read + written)."""

    threads: int  # what the copy kernel ran on
    bytes_per_s: float  # the better of the two store kinds: the floor's bandwidth
    cached_bytes_per_s: float  # ordinary stores (write-allocate)
    streamed_bytes_per_s: float | None  # non-temporal stores; None where there are none
    buffer_bytes: int  # the size of each of the two buffers
    reps: int

    def as_dict(self) -> dict:
        return {
            "threads": self.threads,
            "gbps": self.bytes_per_s / 1e9,
            "cached_gbps": self.cached_bytes_per_s / 1e9,
            "streamed_gbps": None if self.streamed_bytes_per_s is None else self.streamed_bytes_per_s / 1e9,
            "buffer_bytes": self.buffer_bytes,
            "reps": self.reps,
        }


def last_level_cache_bytes() -> int | None:
    """The size of the largest CPU cache that Linux's sysfs lists (None elsewhere)."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    best = None
    try:
        entries = os.listdir(base)
    except OSError:
        return None
    for entry in entries:
        try:
            with open(os.path.join(base, entry, "size")) as fh:
                text = fh.read().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            size = int(digits) * scale
            best = size if best is None else max(best, size)
    return best


def stream_buffer_bytes(llc: int | None = None) -> int:
    """Default size of each copy buffer: 4x the last-level cache (256 MiB when it is not
    known), at least 64 MiB and at most 1 GiB."""
    llc = last_level_cache_bytes() if llc is None else llc
    size = 4 * llc if llc else 256 << 20
    return int(min(max(size, 64 << 20), 1 << 30))


def stream_bandwidth(
    copy: Callable[..., int], buffer_bytes: int, reps: int = 5, can_stream: bool = True
) -> Bandwidth:
    """The best bandwidth of ``copy(dst, src, streamed)`` (a parallel copy returning its
    thread count, :func:`cnorm._kernels.stream.stream_copy`) over two float64 buffers of
    ``buffer_bytes``; the store kinds interleaved rep by rep."""
    n = max(int(buffer_bytes) // 8, 1)
    src = np.ones(n)
    dst = np.empty(n)
    kinds = (False, True) if can_stream else (False,)
    threads = 1
    for streamed in kinds:  # first touch of dst, by the copy's own threads
        threads = copy(dst, src, streamed)
    best = dict.fromkeys(kinds, math.inf)
    perf_counter = time.perf_counter
    for _ in range(max(reps, 1)):
        for streamed in kinds:
            t0 = perf_counter()
            copy(dst, src, streamed)
            best[streamed] = min(best[streamed], perf_counter() - t0)
    moved = 2 * n * 8  # read src + write dst
    rate = {k: moved / t if t > 0 else math.inf for k, t in best.items()}
    return Bandwidth(
        threads=threads,
        bytes_per_s=max(rate.values()),
        cached_bytes_per_s=rate[False],
        streamed_bytes_per_s=rate.get(True),
        buffer_bytes=n * 8,
        reps=max(reps, 1),
    )
