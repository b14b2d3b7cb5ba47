"""The Cython + OpenMP kernels of cnorm (private: cnorm.functional is the API).

    common.pxd       buffer guards, the thread split and fork, block statistics + Chan merge
    batch_norm.pyx   per-channel statistics of (N, C, S) batches: BatchNorm (+ ReLU), sync parts
    row_norm.pyx     per-row statistics of (M, D) rows: LayerNorm, RMSNorm, add + LayerNorm,
                     GroupNorm / InstanceNorm
    openmp.pyx       the thread count
    simd/            the C inner loops and their one table of signatures (signatures.py)
"""
