// segment.cu — segment (masked) mean pooling (DESIGN §3.5); also node -> graph mean pooling.
//
// X [P,C] features of P "pixels" (rows); seg [P] int32 segment id in [0,S) or -1 (void).
// The host also passes the CSR of rows per segment (sort-free determinism; built on the CPU from seg):
//   seg_ptr [S+1] (seg_ptr[0] = 0), seg_pix [seg_ptr[S]]: rows of segment s are
//   seg_pix[seg_ptr[s] .. seg_ptr[s+1]] (any fixed order, e.g. increasing; void rows absent).
// count[s] = seg_ptr[s+1] - seg_ptr[s].
// Storage E = float (_f32), double (_f64), bf16s (_bf16), f16s (_f16) for X, Y, gX, gY; the sums and
// the counts are T = Acc<E>::T (double for _f64, float for the others).
//
// segment_mean_fwd_*(const E* X, const int* seg_ptr, const int* seg_pix, E* Y, T* count, int S, int C)
//   Y[s,c] = (sum over the segment's rows of X[p,c]) / count[s]; empty segment -> 0. count [S] out
//   (as T), nullable. One thread per (s,c) (flat, c fastest: coalesced over c), block 256,
//   grid ceil(S*C/256) (any). Skip when S*C == 0.
// segment_mean_bwd_*(const E* gY, const int* seg, const T* count, E* gX, int P, int C, int S)
//   gX[p,c] = gY[seg[p],c] / count[seg[p]] (0 for void rows and for ids outside [0,S)); count is the
//   forward's count output (Op::SegmentMeanBackward input). Flat over P*C, block 256, grid any.
//   Skip when P*C == 0.
#include "common.cuh"

template <typename E>
__device__ void segment_mean_fwd(const E* __restrict__ X, const int* __restrict__ seg_ptr,
                                 const int* __restrict__ seg_pix, E* __restrict__ Y,
                                 typename Acc<E>::T* __restrict__ count, int S, int C) {
    typedef typename Acc<E>::T T;
    GRID_STRIDE(idx, (i64)S * C) {
        const int s = (int)(idx / C), c = (int)(idx % C);
        const int beg = seg_ptr[s], end = seg_ptr[s + 1];
        T acc = T(0);
        for (int q = beg; q < end; ++q) acc += widen(X[(i64)seg_pix[q] * C + c]);
        const int n = end - beg;
        Y[idx] = narrow<E>(n > 0 ? acc / T(n) : T(0));
        if (count && c == 0) count[s] = T(n);
    }
}

template <typename E>
__device__ void segment_mean_bwd(const E* __restrict__ gY, const int* __restrict__ seg,
                                 const typename Acc<E>::T* __restrict__ count, E* __restrict__ gX, int P, int C,
                                 int S) {
    typedef typename Acc<E>::T T;
    GRID_STRIDE(idx, (i64)P * C) {
        const i64 p = idx / C;
        const int c = (int)(idx % C);
        const int s = seg[p];
        T g = T(0);
        // a void row, or (with an inconsistent count) an empty segment: no gradient, as the CPU
        if (s >= 0 && s < S && count[s] > T(0)) g = widen(gY[(i64)s * C + c]) / count[s];
        gX[idx] = narrow<E>(g);
    }
}

#define SEG_INST(E, SUF)                                                                                        \
    typedef Acc<E>::T T_##SUF;                                                                                  \
    extern "C" __global__ void segment_mean_fwd_##SUF(const E* X, const int* seg_ptr, const int* seg_pix, E* Y, \
                                                      T_##SUF* count, int S, int C) {                           \
        segment_mean_fwd<E>(X, seg_ptr, seg_pix, Y, count, S, C);                                               \
    }                                                                                                           \
    extern "C" __global__ void segment_mean_bwd_##SUF(const E* gY, const int* seg, const T_##SUF* count,        \
                                                      E* gX, int P, int C, int S) {                             \
        segment_mean_bwd<E>(gY, seg, count, gX, P, C, S);                                                       \
    }

SEG_INST(float, f32)
SEG_INST(double, f64)
SEG_INST(bf16s, bf16)
SEG_INST(f16s, f16)
