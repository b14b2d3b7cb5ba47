# The kernels' own guard: every array a kernel touches is checked here (type, size,
# C-contiguity, alignment, byte order, writeability) before its pointer is taken, so no
# call from Python can make a kernel read or write out of bounds. The functional layer
# has already given the friendly error messages; this is the last line, and cheap.

cimport numpy as cnp
cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX


cdef inline int check_array(object a, Py_ssize_t size, int typenum, bint writable,
                            str name) except -1:
    """Raise unless a is None or a C-contiguous, aligned, native-order array of typenum
    with `size` elements (and writeable when asked)."""
    cdef cnp.ndarray arr
    if a is None:
        return 0
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    arr = <cnp.ndarray>a
    if (cnp.PyArray_TYPE(arr) != typenum or cnp.PyArray_SIZE(arr) != size
            or not cnp.PyArray_ISCARRAY_RO(arr)
            or (writable and not cnp.PyArray_ISWRITEABLE(arr))):
        raise ValueError(
            f"{name} must be a {'writeable ' if writable else ''}C-contiguous "
            f"{cnp.PyArray_DescrFromType(typenum)} array of {size} elements, got "
            f"{(<object>arr).dtype} array of shape {(<object>arr).shape}")
    return 0


cdef inline void* data_or_null(object a) noexcept:
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline int input_typenum(object x, str name) except -1:
    """The type number of a float32/float64 input array (TypeError otherwise)."""
    if not cnp.PyArray_Check(x):
        raise TypeError(f"{name} must be a NumPy array, got {type(x).__name__}")
    cdef int typenum = cnp.PyArray_TYPE(<cnp.ndarray>x)
    if typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE:
        raise TypeError(f"{name}: unsupported dtype {(<object>x).dtype}")
    return typenum


cdef inline int check_dims(Py_ssize_t a, Py_ssize_t b, Py_ssize_t c, Py_ssize_t d) except -1:
    """The sizes a kernel is told: non-negative, and their product (the element count,
    computed exactly with Python integers) representable, so no index arithmetic wraps."""
    if a < 0 or b < 0 or c < 0 or d < 0:
        raise ValueError("negative dimension")
    if (<object>a) * b * c * d > <object>PY_SSIZE_T_MAX:
        raise ValueError("dimensions too large: their product overflows Py_ssize_t")
    return 0
