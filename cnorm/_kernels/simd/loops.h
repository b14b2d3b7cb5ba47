/* The inner loops, written once over an element type T and a vector type V.
 *
 * Not a header to include directly: dispatch.h includes it once per (dtype, build), with
 *   T, CN_IT  the element type and the integer type of its size (float, int32_t);
 *             CN_T_BYTES its size
 *   CN_S      the dtype suffix (f, d; h, b: half storage)
 *   CN_HALF   0, or the half storage of the dtype (1 float16, 2 bfloat16 bits): then T is
 *             float and the loops are those of half.h
 *   CN_BUILD  the build (scalar, base, avx2) and CN_VB its vector bytes (0: V = T)
 *   CN_TARGET the build's target attribute (or nothing)
 * and CN_FN(name) names each copy cn_<name>_<dtype>_<build>. The loops themselves are in
 * reduce.h, elementwise.h and convert.h (half storage conversions), and for the half
 * dtypes half.h; every signature there is a row of signatures.py
 * (tests/test_simd_table.py checks that they agree).
 *
 * Reductions keep a bundle of L = 64 / sizeof(T) lanes: K vectors of W lanes (the scalar
 * build: K = L scalars). Lane j accumulates the elements i + j of every bundle, then the
 * leftover elements i with lane i % L, then the lanes are summed by a fixed tree: the
 * same operations in the same order in every build. Elementwise loops are scalar loops
 * (the compiler vectorizes them without changing a result) plus, for large outputs, a
 * vector loop with non-temporal stores.
 *
 * Conventions (llm.c style): outputs first, then inputs, then sizes; n is a length in
 * elements; hi + lo is the mean split in two (split_mean in common.pxd), so that
 * d = (x - hi) - lo is x - mean to every digit.
 */

#define CN_FN(name) CN_NAME(name, CN_S, CN_BUILD)
#define CN_LOOP CN_TARGET CN_NOINLINE static
#define CN_HELPER CN_TARGET static CN_INLINE

#if CN_VB
#define CN_VEC 1
typedef T CN_FN(vec) __attribute__((vector_size(CN_VB)));
typedef CN_IT CN_FN(mask) __attribute__((vector_size(CN_VB)));
#define V CN_FN(vec)
#define M CN_FN(mask)
#define W ((ptrdiff_t)(CN_VB / sizeof(T)))
#else
#define CN_VEC 0
#define V T
#define W ((ptrdiff_t)1)
#endif
#define L ((ptrdiff_t)(CN_BUNDLE_BYTES / sizeof(T)))
#define K (L / W)
#define CN_STREAMS (CN_VEC && CN_CAN_STREAM)

/* ---- helpers ------------------------------------------------------------------------ */

CN_HELPER V CN_FN(load)(const T* p)
{
    V v;
    memcpy(&v, p, sizeof v);
    return v;
}

CN_HELPER void CN_FN(store)(T* p, V v) { memcpy(p, &v, sizeof v); }

CN_HELPER V CN_FN(splat)(T s) { return (V){0} + s; }

/* max(0, v), NaN kept (as torch.relu) */
CN_HELPER T CN_FN(relu)(T v) { return (v > 0 || v != v) ? v : (T)0; }

/* g where y > 0, else 0 (the ReLU's gradient; a NaN y masks its gradient out) */
CN_HELPER T CN_FN(mask_grad)(T g, T y) { return y > 0 ? g : (T)0; }

#if CN_VEC
CN_HELPER V CN_FN(relu_v)(V v) { return (V)((M)v & ((v > 0) | (v != v))); }
CN_HELPER V CN_FN(mask_grad_v)(V g, V y) { return (V)((M)g & (y > 0)); }
#else
CN_HELPER V CN_FN(relu_v)(V v) { return CN_FN(relu)(v); }
CN_HELPER V CN_FN(mask_grad_v)(V g, V y) { return CN_FN(mask_grad)(g, y); }
#endif

#define load CN_FN(load)
#define store CN_FN(store)
#define splat CN_FN(splat)
#if CN_HALF
#define tree cn_tree_f          /* the half dtypes sum float lanes */
#include "half.h"
#else
#define tree CN_TREE(CN_S)      /* simd.h: the lanes summed by a fixed tree */

#include "reduce.h"
#include "elementwise.h"
#include "convert.h"
#endif
#include "channels_last.h"     /* every dtype, half storage included: its own conversions */

#undef CN_FN
#undef CN_LOOP
#undef CN_HELPER
#undef CN_VEC
#undef CN_STREAMS
#undef CN_STORE_NT
#undef CN_STREAM_HEAD
#undef CN_AFFINE
#undef CN_LN_ROW
#undef CN_BN_GRAD
#undef CN_ROW_GRAD
#undef CN_BN_GRAD_COL
#undef CN_BN_GRAD_COL_V
#undef V
#undef M
#undef W
#undef L
#undef K
#undef load
#undef store
#undef splat
#undef tree
