// aggregate.cu — fixed-attention aggregation for SNN message passing (DESIGN §3.3).
//
//   Y[t,i,c] = sum_{k into i} alpha[k, h(c)] * S[t, src_k, c],   h(c) = c / (C/H)   (C % H == 0)
//
// Graph as in gat.cu: CSR by destination row_ptr[N+1], src[E]; CSC col_ptr[N+1], col_edge[E] (edge
// ids grouped by source); int32. Layouts: alpha, galpha [E,H]; S, Y, gY, gS [Tn,N,C] row-major.
// Warp-per-item kernels: block 256 (multiple of 32), grid = ceil(items*32/256) (any grid >= 1 is
// correct: warp-stride loops). Channels are processed 128 per pass (4 per lane). All sums are in a
// fixed order (edge order of the CSR / CSC), no atomics.
//
// agg_fwd_{f32,f64}(const T* alpha, const T* S, const int* row_ptr, const int* src, T* Y,
//                   int Tn, int N, int C, int H)
//   Warp per (t, i), items Tn*N. Zero in-degree -> Y row = 0. Skip when Tn*N*C == 0.
// agg_bwd_s_{f32,f64}(const T* alpha, const T* gY, const int* row_ptr, const int* col_ptr,
//                     const int* col_edge, T* gS, int Tn, int N, int C, int H)
//   gS[t,j,c] = sum_{k out of j} alpha[k,h(c)] gY[t,dst_k,c]  (dst by binary search in row_ptr).
//   Warp per (t, j), items Tn*N. Every element of gS is written. Skip when Tn*N*C == 0.
// agg_bwd_alpha_{f32,f64}(const T* gY, const T* S, const int* row_ptr, const int* src, T* galpha,
//                         int Tn, int N, int C, int H)
//   galpha[k,h] = sum_t sum_{c in head h} gY[t,dst_k,c] S[t,src_k,c]. Warp per (dst i, head h),
//   items N*H; every edge written exactly once. Skip when E == 0 or N == 0.
#include "common.cuh"

#define AGG_FC 4

template <typename T>
__device__ void agg_fwd(const T* __restrict__ alpha, const T* __restrict__ S, const int* __restrict__ row_ptr,
                        const int* __restrict__ src, T* __restrict__ Y, int Tn, int N, int C, int H) {
    const int lane = lane_id();
    const int Ch = C / H;
    WARP_STRIDE(w, (i64)Tn * N) {
        const i64 t = w / N;
        const int i = (int)(w % N);
        const int beg = row_ptr[i], end = row_ptr[i + 1];
        const T* St = S + t * N * C;
        T* y = Y + w * C;
        for (int c0 = 0; c0 < C; c0 += 32 * AGG_FC) {
            T acc[AGG_FC];
            int hc[AGG_FC];
#pragma unroll
            for (int c = 0; c < AGG_FC; ++c) {
                acc[c] = T(0);
                const int ch = c0 + lane + 32 * c;
                hc[c] = ch < C ? ch / Ch : 0;
            }
            for (int k0 = beg; k0 < end; k0 += 32) {
                const int k = k0 + lane;
                const int s = k < end ? src[k] : 0;
                const int cnt = min(32, end - k0);
                for (int j = 0; j < cnt; ++j) {
                    const int sj = __shfl_sync(GSHN_FULL_MASK, s, j);
                    const T* a = alpha + (i64)(k0 + j) * H;
                    const T* sr = St + (i64)sj * C;
#pragma unroll
                    for (int c = 0; c < AGG_FC; ++c) {
                        const int ch = c0 + lane + 32 * c;
                        if (ch < C) acc[c] += a[hc[c]] * sr[ch];
                    }
                }
            }
#pragma unroll
            for (int c = 0; c < AGG_FC; ++c) {
                const int ch = c0 + lane + 32 * c;
                if (ch < C) y[ch] = acc[c];
            }
        }
    }
}

template <typename T>
__device__ void agg_bwd_s(const T* __restrict__ alpha, const T* __restrict__ gY, const int* __restrict__ row_ptr,
                          const int* __restrict__ col_ptr, const int* __restrict__ col_edge, T* __restrict__ gS,
                          int Tn, int N, int C, int H) {
    const int lane = lane_id();
    const int Ch = C / H;
    WARP_STRIDE(w, (i64)Tn * N) {
        const i64 t = w / N;
        const int j = (int)(w % N);
        const int beg = col_ptr[j], end = col_ptr[j + 1];
        const T* gYt = gY + t * N * C;
        T* g = gS + w * C;
        for (int c0 = 0; c0 < C; c0 += 32 * AGG_FC) {
            T acc[AGG_FC];
            int hc[AGG_FC];
#pragma unroll
            for (int c = 0; c < AGG_FC; ++c) {
                acc[c] = T(0);
                const int ch = c0 + lane + 32 * c;
                hc[c] = ch < C ? ch / Ch : 0;
            }
            for (int p0 = beg; p0 < end; p0 += 32) {
                const int p = p0 + lane;
                int k = 0, d = 0;
                if (p < end) {
                    k = col_edge[p];
                    d = csr_row_of(row_ptr, N, k);
                }
                const int cnt = min(32, end - p0);
                for (int q = 0; q < cnt; ++q) {
                    const int kq = __shfl_sync(GSHN_FULL_MASK, k, q);
                    const int dq = __shfl_sync(GSHN_FULL_MASK, d, q);
                    const T* a = alpha + (i64)kq * H;
                    const T* gr = gYt + (i64)dq * C;
#pragma unroll
                    for (int c = 0; c < AGG_FC; ++c) {
                        const int ch = c0 + lane + 32 * c;
                        if (ch < C) acc[c] += a[hc[c]] * gr[ch];
                    }
                }
            }
#pragma unroll
            for (int c = 0; c < AGG_FC; ++c) {
                const int ch = c0 + lane + 32 * c;
                if (ch < C) g[ch] = acc[c];
            }
        }
    }
}

template <typename T>
__device__ void agg_bwd_alpha(const T* __restrict__ gY, const T* __restrict__ S, const int* __restrict__ row_ptr,
                              const int* __restrict__ src, T* __restrict__ galpha, int Tn, int N, int C, int H) {
    const int lane = lane_id();
    const int Ch = C / H;
    WARP_STRIDE(w, (i64)N * H) {
        const int i = (int)(w / H), h = (int)(w % H);
        const int beg = row_ptr[i], end = row_ptr[i + 1];
        for (int k = beg; k < end; ++k) {
            const int s = src[k];
            T part = T(0);
            for (int t = 0; t < Tn; ++t) {
                const T* gy = gY + ((i64)t * N + i) * C + (i64)h * Ch;
                const T* sr = S + ((i64)t * N + s) * C + (i64)h * Ch;
                for (int c = lane; c < Ch; c += 32) part += gy[c] * sr[c];
            }
            part = warp_sum(part);
            if (lane == 0) galpha[(i64)k * H + h] = part;
        }
    }
}

#define AGG_INST(T, SUF)                                                                                         \
    extern "C" __global__ void agg_fwd_##SUF(const T* alpha, const T* S, const int* row_ptr, const int* src,    \
                                             T* Y, int Tn, int N, int C, int H) {                                \
        agg_fwd<T>(alpha, S, row_ptr, src, Y, Tn, N, C, H);                                                      \
    }                                                                                                            \
    extern "C" __global__ void agg_bwd_s_##SUF(const T* alpha, const T* gY, const int* row_ptr,                 \
                                               const int* col_ptr, const int* col_edge, T* gS, int Tn, int N,    \
                                               int C, int H) {                                                   \
        agg_bwd_s<T>(alpha, gY, row_ptr, col_ptr, col_edge, gS, Tn, N, C, H);                                    \
    }                                                                                                            \
    extern "C" __global__ void agg_bwd_alpha_##SUF(const T* gY, const T* S, const int* row_ptr, const int* src, \
                                                   T* galpha, int Tn, int N, int C, int H) {                     \
        agg_bwd_alpha<T>(gY, S, row_ptr, src, galpha, Tn, N, C, H);                                              \
    }

AGG_INST(float, f32)
AGG_INST(double, f64)
