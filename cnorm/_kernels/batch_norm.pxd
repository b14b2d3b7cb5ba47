from .common cimport STREAM_MIN_RUN, ExactStats, floating, split_start, streams
from .pool cimport aligned_block

# The description of one batch-norm call (Job) with its per-channel coefficients, and
# the walks over the row segments of an (N, C, S) batch: declarations of batch_norm.pyx.

cdef enum:
    ROWS_PER_TILE = 32      # (N, C) path: rows summed in the input precision per tile
    COLS_PER_TILE = 1024    # (N, C) path: channels per tile (32 x 1024 float32 = 128 KiB)
    # bytes added to the pitch of the per-channel scratch rows (tile sums, coefficients):
    # a cache line past a multiple of 4 KiB, so that rows read and written in one loop
    # neither alias in the store-to-load check (4 KiB apart: a false dependency that
    # stalls every load after a store) nor share their L1 sets
    SCRATCH_SKEW = 64
    CHANNEL_SPLIT_MIN = 32  # (N, C, S) reductions split by channel from this many channels
    CHUNK_ELEMENTS = 8192   # otherwise by chunks of at least this many elements
    STAGE_CHUNK = 1024      # half storage: elements per staged run (a multiple of BLOCK)
    STAGE_BUFS = 4          # half storage: float32 runs per thread (dy, x, ym, out)


cdef struct Normalize:      # per channel c: y = ((x - hi) - lo) * scale + beta
    void* hi                # (C,) each, the input dtype; mean = hi + lo (split_mean)
    void* lo
    void* scale             # invstd * weight
    void* beta              # bias


# per channel c: dx = k1 * ((dy - mean_dy) - mean_dy_xhat * xhat),
# xhat = ((x - hi) - lo) * invstd
cdef struct InputGrad:
    void* hi                # (C,) each, the input dtype
    void* lo
    void* invstd
    void* k1                # weight * invstd
    void* mean_dy           # sum(dy) / count; 0 with the running statistics
    void* mean_dy_xhat      # sum(dy * xhat) / count; 0 with the running statistics


cdef struct Job:            # one call on x: C-contiguous (N, C, S) of the input dtype
    Py_ssize_t N, C, S
    int typenum             # of x: NPY_FLOAT or NPY_DOUBLE
    const void* x
    int threads_x           # threads of the passes that read x only (n_threads_for(E))
    int threads_dy_x        # threads of the passes that read dy and x
    const void* weight      # IN  (C,) or NULL (ones)
    const void* bias        # IN  (C,) or NULL (zeros)
    void* running_mean      # IN/OUT (C,) or NULL: updated by the training forward
    void* running_var       # IN/OUT (C,) or NULL
    double factor           # running = (1 - factor) * running + factor * batch statistic
    int stats_kind          # 0: running statistics of the compute type; 1 float16, 2
    #                       bfloat16 bits (updated by _update_half_running)
    double* stats_scratch   # stats_kind: (2, C) float64, the running statistics widened
    double eps
    double* mean            # OUT (forward) / IN (C,) float64
    double* var             # OUT (C,) biased variance (statistics pass)
    double* invstd          # OUT (forward) / IN (C,) 1 / sqrt(var + eps)
    const void* dy          # IN  (N, C, S) grad_output
    const void* ym          # IN  (N, C, S) a fused BN + ReLU's output (dy counts where
    #                       ym > 0), or NULL
    bint training           # backward: the statistics were this batch's
    double count            # elements per channel that the sums of the gradient cover
    const double* in_sum_dy  # IN  (C,) sums the input gradient uses, NULL: this input's
    const double* in_sum_dy_xhat
    double* sum_dy          # OUT (C,) this input's sum(dy), or NULL
    double* sum_dy_xhat     # OUT (C,) this input's sum(dy * xhat)
    void* out               # OUT (N, C, S) y, or dx (NULL: no input gradient)
    bint relu               # y = max(0, y): the fused BN + ReLU
    bint stream             # elementwise passes: non-temporal stores
    Py_ssize_t row_group    # S = 1: rows per call of the elementwise loops (_group_rows)
    # the reductions (statistics, gradient sums) cut the work by the sizes only, never
    # by the thread count: work items, split over the threads, write partials that are
    # merged in partial order. S > 1: by channel (items = channels, 1 partial) or by
    # chunks of elements (items = partials); S = 1: rows chunk x COLS_PER_TILE channels
    bint by_channel
    Py_ssize_t chunk        # elements (S > 1) or rows (S = 1) per chunk
    Py_ssize_t n_parts      # partials
    Py_ssize_t n_items      # work items
    double* part            # scratch (n_parts, 3 or 2, C): partials
    void* tile              # scratch (threads, 3 or 2, TILE_PITCH) of the input dtype
    ExactStats* exact       # (C,) or NULL: float64 channels whose statistics were redone
    #                       (scale 0: not redone; other than 0 and 1: normalize x * scale)
    bint scaled             # some channel is normalized as x * exact[c].scale
    void* coef              # the storage of norm and grad
    Normalize norm
    InputGrad grad
    int kind                # half storage (common.pxd): 0 none; 1 float16, 2 bfloat16 bits
    #                       in x, dy, ym, out, computed in float32 (typenum NPY_FLOAT)
    float* stage            # scratch (threads, stage_size) float32 (kind != 0)
    Py_ssize_t stage_size   # STAGE_BUFS runs of STAGE_CHUNK


cdef inline Py_ssize_t scratch_pitch(Py_ssize_t n, Py_ssize_t itemsize) noexcept nogil:
    """Elements between the rows of n elements of a per-channel scratch: n rounded up to
    whole 64-byte lines, plus one line (SCRATCH_SKEW)."""
    return ((n * itemsize + 63) // 64 * 64 + SCRATCH_SKEW) // itemsize


cdef struct Segment:        # elements [start, stop) of one row of S elements: channel c
    Py_ssize_t start, stop, row, c


cdef inline Segment first_segment(Py_ssize_t e0, Py_ssize_t e1, Py_ssize_t C,
                                  Py_ssize_t S) noexcept nogil:
    """The first row segment of the elements [e0, e1) of an (N, C, S) batch."""
    cdef Segment seg
    seg.row = e0 // S
    seg.c = seg.row % C             # then stepped: a division per row costs ~15 ns
    seg.start = e0
    seg.stop = min((seg.row + 1) * S, e1)
    return seg


cdef inline void next_segment(Segment* seg, Py_ssize_t e1, Py_ssize_t C,
                              Py_ssize_t S) noexcept nogil:
    seg.start = seg.stop
    seg.row += 1
    seg.c += 1
    if seg.c == C:
        seg.c = 0
    seg.stop = min((seg.row + 1) * S, e1)


cdef struct Item:           # one work item of a chunked reduction (see Job)
    Py_ssize_t part         # its partial
    Py_ssize_t e0, e1       # elements (S > 1) or rows (S = 1) [e0, e1)
    Py_ssize_t c0, c1       # channels [c0, c1) (S = 1; else all)


cdef inline Item work_item(const Job* j, Py_ssize_t i) noexcept nogil:
    """Item i of a reduction cut in chunks (not by_channel)."""
    cdef Item it
    cdef Py_ssize_t n_tiles = (j.C + COLS_PER_TILE - 1) // COLS_PER_TILE
    it.part = i // n_tiles if j.S == 1 else i
    it.e0 = it.part * j.chunk
    it.e1 = min(it.e0 + j.chunk, j.N if j.S == 1 else j.N * j.C * j.S)
    it.c0 = (i % n_tiles) * COLS_PER_TILE if j.S == 1 else 0
    it.c1 = min(it.c0 + COLS_PER_TILE, j.C) if j.S == 1 else j.C
    return it


cdef inline const floating* offset(const floating* p, Py_ssize_t k) noexcept nogil:
    """p + k, or NULL for an absent optional buffer."""
    return p + k if p != NULL else NULL


cdef inline void thread_share(const Job* j, int t, int n_threads, Py_ssize_t* start,
                              Py_ssize_t* stop) noexcept nogil:
    """Thread t's share [start, stop): rows of an (N, C) batch (S = 1), else elements."""
    cdef Py_ssize_t total = j.N if j.S == 1 else j.N * j.C * j.S
    start[0] = split_start(total, t, n_threads)
    stop[0] = split_start(total, t + 1, n_threads)


cdef inline bint use_stream(const Job* j, size_t itemsize, bint gradient) noexcept nogil:
    return (streams(j.N * j.C * j.S * <Py_ssize_t>itemsize, gradient)
            and (j.S == 1 or j.S >= STREAM_MIN_RUN))    # (N, C): rows grouped (_row_group)
