"""Synchronized BatchNorm across processes with mpi4py and cnorm (NumPy only, no torch).

Every rank holds a shard of the batch (shards may differ in size, or be empty). The
batch statistics are those of the whole batch: each rank computes its per-channel
``(count, mean, m2)`` with ``cnorm.functional.batch_norm_stats``, the ranks all-gather
them and merge them in rank order with ``merge_stats`` (Chan's formula: exact, and the
same numbers on every rank). Backward all-reduces the per-channel ``(Σdy, Σdy·x̂)``.
The result equals a BatchNorm over the concatenated batch; the weight/bias gradients
are each rank's share (sum them, or average them as DDP does).

Run::

    mpirun -n 4 python examples/sync_bn_mpi4py.py
    python examples/sync_bn_mpi4py.py --simulate 3     # no MPI: 3 ranks as threads
    python examples/sync_bn_mpi4py.py --simulate 3 --out DIR   # also writes DIR/sync_bn_mpi4py.txt

``comm`` only needs ``allgather(obj)`` (mpi4py's pickle-based one) and
``Allreduce(sendbuf, recvbuf)`` (buffer-based, sum), so :class:`ThreadComm` below
stands in for ``MPI.COMM_WORLD`` in tests.
"""

from __future__ import annotations

import threading

import numpy as np
from _common import output_path, parser, require

import cnorm
from cnorm import functional as F


class SyncBatchNorm:
    """BatchNorm over the union of the batches of all ranks of ``comm`` (NumPy arrays,
    ``(N, C, *)``), training mode; ``backward(dy)`` returns dx and sets weight_grad
    and bias_grad (local shares)."""

    def __init__(self, comm, num_features, eps=1e-5, momentum=0.1, dtype=np.float32):
        self.comm = comm
        self.eps, self.momentum = eps, momentum
        self.weight = np.ones(num_features, dtype)
        self.bias = np.zeros(num_features, dtype)
        self.running_mean = np.zeros(num_features, dtype)
        self.running_var = np.ones(num_features, dtype)
        self.num_batches_tracked = 0
        self.weight_grad = self.bias_grad = None

    def forward(self, x):
        # 1. local statistics, all-gathered, merged in rank order
        local = F.batch_norm_stats(x)  # (count, mean, m2)
        counts, means, m2s = zip(*self.comm.allgather(local))
        count, mean, m2 = F.merge_stats(counts, means, m2s)
        if count < 2:
            raise ValueError("Expected more than 1 value per channel when training")
        var = m2 / count
        invstd = 1.0 / np.sqrt(var + self.eps)
        # 2. running statistics as torch: unbiased variance, momentum None = average
        self.num_batches_tracked += 1
        f = 1.0 / self.num_batches_tracked if self.momentum is None else self.momentum
        self.running_mean[...] = (1 - f) * self.running_mean + f * mean
        self.running_var[...] = (1 - f) * self.running_var + f * var * (count / (count - 1))
        # 3. normalize the local shard with the global statistics
        self._saved = (x, mean, invstd, count)
        return F.batch_norm_elemt(x, mean, invstd, self.weight, self.bias)

    __call__ = forward

    def backward(self, dy):
        x, mean, invstd, count = self._saved
        sum_dy, sum_dy_xhat = F.batch_norm_backward_reduce(dy, x, mean, invstd)
        self.weight_grad = sum_dy_xhat.astype(x.dtype)  # local shares
        self.bias_grad = sum_dy.astype(x.dtype)
        local = np.concatenate([sum_dy, sum_dy_xhat])
        total = np.empty_like(local)
        self.comm.Allreduce(local, total)  # sum over the ranks
        c = sum_dy.shape[0]
        return F.batch_norm_backward_elemt(dy, x, mean, invstd, self.weight, total[:c], total[c:], count)


class ThreadComm:
    """The two collectives used above, for ``size`` ranks running as threads of one
    process (simulated ranks for tests and for ``--simulate``)."""

    class _Shared:
        def __init__(self, size):
            self.barrier = threading.Barrier(size)
            self.slots = [None] * size

    def __init__(self, shared, rank):
        self._shared, self.rank = shared, rank
        self.size = len(shared.slots)

    @classmethod
    def create(cls, size):
        shared = cls._Shared(size)
        return [cls(shared, r) for r in range(size)]

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def allgather(self, obj):
        sh = self._shared
        sh.slots[self.rank] = obj
        sh.barrier.wait()
        out = list(sh.slots)
        sh.barrier.wait()  # nobody overwrites a slot before all have read
        return out

    def Allreduce(self, sendbuf, recvbuf):
        parts = self.allgather(np.array(sendbuf, copy=True))
        np.copyto(recvbuf, np.sum(parts, axis=0))

    def Barrier(self):
        self._shared.barrier.wait()


def run_simulated(size, fn):
    """Run ``fn(comm)`` on ``size`` simulated ranks (threads); returns the results."""
    comms = ThreadComm.create(size)
    results, errors = [None] * size, []

    def target(comm):
        try:
            results[comm.rank] = fn(comm)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)
            comm._shared.barrier.abort()

    threads = [threading.Thread(target=target, args=(c,)) for c in comms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def shard_sizes(size, total):
    """Uneven shard sizes summing to ``total`` (the last rank may get nothing)."""
    weights = np.arange(size, 0, -1, dtype=float)
    sizes = np.floor(weights / weights.sum() * total).astype(int)
    sizes[0] += total - sizes.sum()
    return [int(s) for s in sizes]


def demo(comm, steps=3, shape=(24, 8, 6, 6), dtype=np.float64):
    """Train-mode steps on shards of one global batch; rank 0 checks the result
    against cnorm.BatchNorm2d on the concatenated batch. Returns the max differences."""
    rank, size = comm.Get_rank(), comm.Get_size()
    sizes = shard_sizes(size, shape[0])
    lo = sum(sizes[:rank])
    sl = slice(lo, lo + sizes[rank])
    bn = SyncBatchNorm(comm, shape[1], dtype=dtype)
    ref = cnorm.BatchNorm2d(shape[1], dtype=dtype) if rank == 0 else None
    worst = 0.0
    for step in range(steps):
        rng = np.random.default_rng(step)  # the same batch on every rank
        x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        y = bn(x[sl])
        dx = bn.backward(dy[sl])
        parts = comm.allgather((y, dx, bn.weight_grad, bn.bias_grad))
        if rank == 0:
            y_all = np.concatenate([p[0] for p in parts])
            dx_all = np.concatenate([p[1] for p in parts])
            dw = np.sum([p[2] for p in parts], axis=0)
            db = np.sum([p[3] for p in parts], axis=0)
            ref.zero_grad()
            y_ref = ref(x)
            dx_ref = ref.backward(dy)
            for a, b in (
                (y_all, y_ref),
                (dx_all, dx_ref),
                (dw, ref.weight_grad),
                (db, ref.bias_grad),
                (bn.running_mean, ref.running_mean),
                (bn.running_var, ref.running_var),
            ):
                worst = max(worst, float(np.max(np.abs(a - b))))
    if rank == 0:
        print(
            f"{size} ranks, shards {sizes}, {steps} steps: max |sync - single process| "
            f"= {worst:.3g} (outputs, input and parameter gradients, running stats)"
        )
    return worst


def main(argv=None):
    p = parser(__doc__.split("\n\n")[0], "(no effect: this demo is quick)", seed=False, out_default=None)
    p.add_argument(
        "--simulate",
        type=int,
        default=0,
        metavar="N",
        help="run N ranks as threads of this process instead of MPI",
    )
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    if args.simulate:
        size, rank = args.simulate, 0
        worst = run_simulated(size, lambda comm: demo(comm, args.steps))[0]
    else:
        require("mpi4py")
        from mpi4py import MPI

        size, rank = MPI.COMM_WORLD.Get_size(), MPI.COMM_WORLD.Get_rank()
        worst = demo(MPI.COMM_WORLD, args.steps)
    if rank == 0 and args.out:  # a summary file, like the other examples' figures
        path = output_path(args.out, "sync_bn_mpi4py.txt")
        with open(path, "w") as fh:
            fh.write(f"ranks {size}\nsteps {args.steps}\nmax_abs_diff {worst:.6g}\n")
        print(f"wrote {path}")
    if worst is not None and worst > 1e-10:
        raise SystemExit(f"mismatch: {worst}")


if __name__ == "__main__":
    main()
