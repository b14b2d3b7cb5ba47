r"""cnorm.torch: drop-in :mod:`torch.nn` norm layers on the cnorm kernels (CPU).

``import cnorm`` never imports torch; ``import cnorm.torch`` does.

Drop-in layers
--------------
:class:`BatchNorm1d`, :class:`BatchNorm2d`, :class:`BatchNorm3d` and :class:`LayerNorm`
subclass the torch.nn classes of the same name: same constructor (``device``,
``dtype``, the keyword ``bias``), parameters, buffers, ``state_dict``, ``repr``;
``isinstance(m, torch.nn.BatchNorm2d)`` holds. Their forward on a CPU float32/float64
tensor runs the cnorm kernels inside a :class:`torch.autograd.Function`::

    import torch, cnorm.torch
    model = torchvision.models.resnet18()
    model = cnorm.torch.convert(model)      # swaps BatchNorm*d / LayerNorm in place
    loss = model(x).sum(); loss.backward()  # forward and backward on cnorm

- zero-copy: the input, parameters and running buffers reach the kernels as
  ``Tensor.numpy()`` views (so the input must be contiguous), the outputs come back
  with ``torch.from_numpy``; the running statistics and ``num_batches_tracked`` are
  updated in place exactly as torch's ``_BatchNorm.forward`` does (``momentum=None``:
  cumulative average, factor ``1/num_batches_tracked``);
- the autograd node saves only the input, the weight and the float64 per-channel
  (per-row) mean and inverse std; ``weight.grad``/``bias.grad`` come from the same
  backward call; inputs that do not require grad get None;
- with no gradient needed (``torch.no_grad()``, ``inference_mode``, nothing requiring
  grad) the kernels are called directly, without an autograd node;
- everything else goes to torch's own implementation (``super().forward``), with
  identical results and errors: other devices, other dtypes (bf16, fp16...),
  non-contiguous or channels_last inputs, parameters/buffers of another dtype or
  layout, tensor subclasses, parametrized weights, autocast, ``torch.jit``
  tracing/scripting, ``torch.compile``, ``torch.func`` transforms, and the inputs torch
  rejects (wrong rank or channel count, 1 value per channel in training, eps <= 0);
- double backward is not supported by the cnorm nodes (the backward is
  ``once_differentiable``: differentiating through it raises "trying to differentiate
  twice a function that was marked with @once_differentiable"). For gradient penalties
  and Hessian-vector products run those forwards with torch's kernels::

      with cnorm.torch.torch_fallback():      # this thread, every cnorm.torch layer
          g, = torch.autograd.grad(model(x).sum(), x, create_graph=True)
      layer.use_cnorm = False                 # or per layer, permanently

- a converted model pickles with references to the cnorm.torch classes; its
  ``state_dict`` is torch's, loadable into a plain torch.nn model.
- Results equal torch's to float rounding (float64: ~1e-15); ``gradcheck`` passes.

:func:`convert` swaps exactly ``torch.nn.BatchNorm1d/2d/3d`` and ``torch.nn.LayerNorm``
(not subclasses, not already converted layers), nested modules included, keeping the
same Parameter objects (optimizers keep working), buffers, training flag, attributes
and hooks; given a norm layer itself it returns its replacement.

SyncBatchNorm on CPU
--------------------
``torch.nn.SyncBatchNorm`` raises on CPU tensors. :class:`SyncBatchNorm` (a subclass of
it: same constructor with ``process_group``, same state_dict keys) works with the gloo
backend: in training mode the ranks all-gather their per-channel
``(count, mean, m2)`` (float64; a rank may hold an empty batch), merge them in rank
order with Chan's formula (:func:`cnorm.functional.merge_stats`: exact, identical on
every rank), normalize their own shard with the global statistics and update the
running statistics with the global mean and unbiased variance; backward all-reduces the
per-channel ``(Σdy, Σdy·x̂)``. Outputs, running statistics and input gradients equal a
BatchNorm over the concatenated batch (tested to 1e-10 in float64 with 2 and 3
processes, uneven and empty shards); weight/bias gradients stay local, as in torch
(DDP averages them). In eval mode, without an initialized process group or with one
process it is a plain (cnorm) BatchNorm. Inputs on other devices use torch's own
implementation. :func:`convert_sync_batchnorm` converts every BatchNorm of a model::

    import torch.distributed as dist
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29500",
                            rank=rank, world_size=world_size)
    model = cnorm.torch.convert_sync_batchnorm(model)
    model = torch.nn.parallel.DistributedDataParallel(model)

The same algorithm without torch, on NumPy arrays and mpi4py, is
``examples/sync_bn_mpi4py.py`` (``mpirun -n 4 python examples/sync_bn_mpi4py.py``)::

    count, mean, m2 = cnorm.functional.merge_stats(
        *zip(*comm.allgather(cnorm.functional.batch_norm_stats(x))))
    invstd = 1 / np.sqrt(m2 / count + eps)
    y = cnorm.functional.batch_norm_elemt(x, mean, invstd, weight, bias)
    # backward
    sums = np.concatenate(cnorm.functional.batch_norm_backward_reduce(dy, x, mean, invstd))
    comm.Allreduce(sums.copy(), sums)               # Σ over the ranks
    dx = cnorm.functional.batch_norm_backward_elemt(dy, x, mean, invstd, weight,
                                                    sums[:C], sums[C:], count)

Threads: torch and cnorm share one OpenMP runtime
-------------------------------------------------
Both are OpenMP programs: the torch wheel ships its own ``libgomp.so.1``, cnorm links the
system's. On Linux they end up sharing ONE runtime and one thread pool, in either import
order: both libraries have the soname ``libgomp.so.1``, so the second one is never
loaded, and torch puts its libgomp in the global symbol scope (``RTLD_GLOBAL``), where
cnorm's kernels bind to it (checked with ``/proc/self/maps`` and ``LD_DEBUG=bindings``).
Consequences and recommendations:

- No oversubscription between torch and cnorm: the default settings (both use one thread
  per core) are right on a machine of your own. One pool means one thread count:
  ``torch.set_num_threads(n)`` also caps cnorm, and ``cnorm.set_num_threads(n)`` (which
  calls ``omp_set_num_threads``) also sets torch's intra-op threads -- in the calling
  thread. ``OMP_NUM_THREADS`` sets both. Set it once, with either.
- When the cores are shared with other work (CI runners, containers with a CPU quota,
  several training processes per node -- e.g. DDP/SyncBatchNorm with gloo, one process
  per rank), OpenMP's spin-waiting is what costs: a worker that spins for the next
  parallel region (libgomp: up to ``GOMP_SPINCOUNT`` = 300000 iterations, milliseconds)
  takes a core from the thread it waits for, and every barrier then costs a scheduler
  time slice. Use ``OMP_WAIT_POLICY=PASSIVE`` (or ``GOMP_SPINCOUNT=1000`` or less), and
  give each process ``OMP_NUM_THREADS = cores / processes`` (``torchrun`` sets 1).
- If two different OpenMP runtimes are loaded (e.g. a conda torch built with Intel's
  or LLVM's OpenMP next to cnorm's libgomp; check with
  ``[l.split()[-1] for l in open("/proc/self/maps") if "omp" in l]``) there are two
  pools, each with one thread per core, whose spinning workers take turns stealing
  the cores from each other: keep ``torch threads + cnorm threads`` at the number of
  cores, or use passive waiting (``OMP_WAIT_POLICY=PASSIVE``; ``KMP_BLOCKTIME=0`` for
  the Intel/LLVM runtime).

Measured on a 2-vCPU AMD EPYC VM shared with other jobs (load 2-5, so one core was
mostly taken), torch 2.13, medians of interleaved repetitions in separate processes:

==========================================  ==================  =====================
setting                                     CNN step (ms)       BatchNorm2d fwd+bwd
                                            torch.nn / cnorm    (32, 256, 14, 14), ms
                                                                torch.nn / cnorm.torch
==========================================  ==================  =====================
default (2 threads, shared libgomp)         515 / 564           33.6 / 48.1
``torch.set_num_threads(1)`` (both 1)       44 / 41             10.8 / 5.6
``OMP_WAIT_POLICY=PASSIVE``, 2 threads      41 / 40             9.5 / 4.9
two runtimes (simulated), 2 + 2 threads     36 / 80             13.5 / 10.5
two runtimes, ``OMP_WAIT_POLICY=PASSIVE``   48 / 46             14.4 / 6.6
two runtimes, 1 + 1 thread                  47 / 44             15.8 / 7.0
==========================================  ==================  =====================

(CNN step: the model of ``examples/train_digits_torch.py``, batch 128, SGD; "two
runtimes" loads cnorm against a renamed copy of libgomp to emulate a separate pool.)
The cnorm BatchNorm2d fwd+bwd above on NumPy alone, 2 threads, by ``GOMP_SPINCOUNT``:
0: 3.9 ms, 1000: 4.1, 10000: 6.5, 100000: 31, 300000 (the default): 48; one thread:
3.3 ms; ``OMP_WAIT_POLICY=PASSIVE``: 2.7 ms. On an idle machine spinning costs nothing
and saves the wake-up latency of short parallel regions; on a busy one it is the
difference between 4 ms and 48 ms.

Multi-megabyte outputs (of torch and cnorm alike) are ``mmap``-ed and freed back to the
system by glibc's malloc, so every call may page-fault its fresh output again (0.5-1
ms per MB on this VM, depending on the allocation history of the process):
``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` or jemalloc/tcmalloc
(``LD_PRELOAD``) make timings steadier for both.
"""
from ._dropin import (BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormFunction, LayerNorm,
                      LayerNormFunction, convert, torch_fallback)
from ._sync import SyncBatchNorm, SyncBatchNormFunction, convert_sync_batchnorm

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "SyncBatchNorm",
           "convert", "convert_sync_batchnorm", "torch_fallback", "BatchNormFunction",
           "LayerNormFunction", "SyncBatchNormFunction"]
