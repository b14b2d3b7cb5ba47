cimport numpy as cnp

cdef cnp.ndarray pooled_empty(int nd, cnp.npy_intp* dims, int typenum)
