// gat.cu — fused multi-head GAT edge-softmax attention (PyG GATConv semantics, DESIGN §3.2).
//
// Graph: CSR by destination: row_ptr[N+1] (row_ptr[0] = 0, row_ptr[N] = E), src[E]; edge k goes
// src[k] -> i with row_ptr[i] <= k < row_ptr[i+1]. For the backward also the CSC transpose:
// col_ptr[N+1], col_edge[E]: edge ids col_edge[col_ptr[j] .. col_ptr[j+1]] are those with src == j
// (any fixed order; it fixes the summation order of gZ). The destination of an edge is found by a
// binary search in row_ptr (no dst[] array needed). All index arrays int32.
// Layouts: Z, Out, gOut, gZ [N,H,F]; el, er, lse, gel, ger [N,H]; Be, alpha, galpha, gpre [E,H];
// a_src, a_dst [H,F]. Scalars: slope (T) = LeakyReLU negative slope (0.2).
// pre[k,h] = el[src_k,h] + er[dst_k,h] (+ Be[k,h]);  e = LeakyReLU(pre);  alpha = exp(e - lse[dst]).
// "warp per (node, head)" kernels: item w = n*H + h, w in [0, N*H); launch block 256 (multiple of 32),
// grid = ceil(N*H*32/256) (any grid >= 1 is correct: warp-stride loop). Skip all launches when N == 0.
//
// ---------------------------------------------------------------------------------------------
// FORWARD
// gat_el_er_{f32,f64}(const T* Z, const T* a_src, const T* a_dst, T* el, T* er, int N, int H, int F)
//   el[n,h] = <Z[n,h,:], a_src[h,:]>, er[n,h] = <Z[n,h,:], a_dst[h,:]>. Warp per (n,h).
//   el, er: [N,H] scratch owned by the host (keep from the forward, or recompute for the backward).
// gat_fwd_{f32,f64}(const T* Z, const T* el, const T* er, const T* Be, const int* row_ptr,
//                   const int* src, T* Out, T* lse, int N, int H, int F, T slope)
//   Be nullable. Out [N,H,F], lse [N,H] = log-sum-exp of e over the incoming edges.
//   Zero in-degree: Out = 0, lse = 0. Warp per (dst, head), online softmax + aggregation in one pass
//   (32 edges scored per step, one lane per edge; features in chunks of 128 = 4 per lane).
//   E == 0 is fine (all nodes zero in-degree).
// gat_alpha_fwd_{f32,f64}(const T* el, const T* er, const T* Be, const T* lse, const int* row_ptr,
//                         const int* src, T* alpha, int N, int E, int H, T slope)
//   alpha[E,H] = softmax weights (export for plots / the SNN branch). Flat: one thread per (k,h),
//   block 256, grid = ceil(E*H/256) (any). Skip when E == 0.
//
// BACKWARD of gat_fwd (inputs gOut, Z, a_src, a_dst, Be?, Out, lse, row_ptr, src, col_ptr, col_edge)
//   scratch (host-provided): el, er [N,H] (gat_el_er first, unless kept from the forward),
//   alpha [E,H], gpre [E,H], ger [N,H], gel [N,H], part [nchunks, 2, H*F].
//   1. gat_bwd_dst_{f32,f64}(const T* gOut, const T* Z, const T* Out, const T* el, const T* er,
//        const T* Be, const T* lse, const int* row_ptr, const int* src, T* alpha, T* gpre, T* ger,
//        int N, int H, int F, T slope)
//      Warp per (dst i, head h). D = <gOut_i, Out_i>; per edge: alpha_k, galpha_k = <gOut_i, Z_src>,
//      ge = alpha (galpha - D), gpre = ge * (pre > 0 ? 1 : slope); writes alpha[k,h], gpre[k,h],
//      ger[i,h] = sum_k gpre (0 for zero in-degree). gpre IS gBe (dL/dBe): use it directly.
//   2. gat_bwd_src_{f32,f64}(const T* gOut, const T* alpha, const T* gpre, const T* ger,
//        const T* a_src, const T* a_dst, const int* row_ptr, const int* col_ptr, const int* col_edge,
//        T* gZ, T* gel, int N, int H, int F)
//      Warp per (src j, head h) over the CSC: gel[j,h] = sum_{k out of j} gpre[k,h];
//      gZ[j,h,:] = sum_{k out of j} alpha[k,h] gOut[dst_k,h,:] + gel a_src[h,:] + ger[j,h] a_dst[h,:].
//      gOut nullable: then the aggregation term is absent (used by the alpha-export backward).
//   3. gat_ga_partial_{f32,f64}(const T* Z, const T* gel, const T* ger, T* part, int N, int H, int F,
//        int rows_per_chunk)
//      grid = (ceil(H*F/256), nchunks) with nchunks = ceil(N/rows_per_chunk) <= 65535, block 256
//      (any; grid.x is grid-strided). part[(c*2+0)*H*F + hf] = sum_{rows in chunk c} gel[r,h] Z[r,hf],
//      part[(c*2+1)*H*F + hf] = same with ger. Recommended rows_per_chunk = max(64, ceil(N/1024)).
//      Same N => use the same rows_per_chunk (bit reproducibility).
//   4. gat_ga_final_{f32,f64}(const T* part, T* g_a_src, T* g_a_dst, int nchunks, int HF)
//      g_a_src[hf] = sum_c part[(c*2)*HF+hf] in chunk order; g_a_dst likewise. Flat over HF, block 256.
//   With E == 0 (N > 0): skip pass 1, zero-fill ger (and gpre is empty); passes 2-4 still give gZ = 0,
//   g_a = 0 (or simply zero-fill all gradients). N == 0: zero-fill g_a_src, g_a_dst; skip everything.
//
// BACKWARD of gat_alpha_fwd (given galpha [E,H] and the forward alpha [E,H]):
//   1'. gat_alpha_bwd_dst_{f32,f64}(const T* alpha, const T* galpha, const T* el, const T* er,
//         const T* Be, const int* row_ptr, const int* src, T* gpre, T* ger, int N, int H, T slope)
//       Warp per (dst, head): D = sum_k alpha_k galpha_k; ge = alpha (galpha - D); gpre, ger as in 1.
//   then 2 with gOut = nullptr and alpha = the forward alpha, then 3 and 4 exactly as above.
// ---------------------------------------------------------------------------------------------
#include "common.cuh"

#define GAT_FC 4  // features per lane per pass (a pass covers 128 features)

template <typename T>
__device__ __forceinline__ T gat_pre(const T* __restrict__ el, T er_i, const T* __restrict__ Be, int s, int k, int h,
                                     int H) {
    T pre = el[(i64)s * H + h] + er_i;
    if (Be) pre += Be[(i64)k * H + h];
    return pre;
}

template <typename T>
__device__ void gat_el_er(const T* __restrict__ Z, const T* __restrict__ a_src, const T* __restrict__ a_dst,
                          T* __restrict__ el, T* __restrict__ er, int N, int H, int F) {
    const int lane = lane_id();
    WARP_STRIDE(w, (i64)N * H) {
        const int h = (int)(w % H);
        const T* z = Z + w * F;
        T sl = T(0), sr = T(0);
        for (int f = lane; f < F; f += 32) {
            T v = z[f];
            sl += v * a_src[(i64)h * F + f];
            sr += v * a_dst[(i64)h * F + f];
        }
        sl = warp_sum(sl);
        sr = warp_sum(sr);
        if (lane == 0) { el[w] = sl; er[w] = sr; }
    }
}

template <typename T>
__device__ void gat_fwd(const T* __restrict__ Z, const T* __restrict__ el, const T* __restrict__ er,
                        const T* __restrict__ Be, const int* __restrict__ row_ptr, const int* __restrict__ src,
                        T* __restrict__ Out, T* __restrict__ lse, int N, int H, int F, T slope) {
    const int lane = lane_id();
    WARP_STRIDE(w, (i64)N * H) {
        const int i = (int)(w / H), h = (int)(w % H);
        const int beg = row_ptr[i], end = row_ptr[i + 1];
        T* out = Out + w * F;
        if (beg >= end) {
            for (int f = lane; f < F; f += 32) out[f] = T(0);
            if (lane == 0) lse[w] = T(0);
            continue;
        }
        const T er_i = er[w];
        for (int f0 = 0; f0 < F; f0 += 32 * GAT_FC) {
            T acc[GAT_FC];
#pragma unroll
            for (int c = 0; c < GAT_FC; ++c) acc[c] = T(0);
            T m = g_neg_inf<T>(), l = T(0);
            for (int k0 = beg; k0 < end; k0 += 32) {
                const int k = k0 + lane;
                const bool valid = k < end;
                const int s = valid ? src[k] : 0;
                T e = g_neg_inf<T>();
                if (valid) e = leaky_relu(gat_pre(el, er_i, Be, s, k, h, H), slope);
                const T mn = g_max(m, warp_max(e));
                const T sc = g_exp(m - mn);  // m = -inf on the first chunk -> 0
                const T p = valid ? g_exp(e - mn) : T(0);
                l = l * sc + warp_sum(p);
#pragma unroll
                for (int c = 0; c < GAT_FC; ++c) acc[c] *= sc;
                const int cnt = min(32, end - k0);
                for (int j = 0; j < cnt; ++j) {
                    const T pj = __shfl_sync(GSHN_FULL_MASK, p, j);
                    const int sj = __shfl_sync(GSHN_FULL_MASK, s, j);
                    const T* zr = Z + ((i64)sj * H + h) * F + f0;
#pragma unroll
                    for (int c = 0; c < GAT_FC; ++c) {
                        const int f = lane + 32 * c;
                        if (f0 + f < F) acc[c] += pj * zr[f];
                    }
                }
                m = mn;
            }
#pragma unroll
            for (int c = 0; c < GAT_FC; ++c) {
                const int f = f0 + lane + 32 * c;
                if (f < F) out[f] = acc[c] / l;
            }
            if (f0 == 0 && lane == 0) lse[w] = m + g_log(l);
        }
    }
}

template <typename T>
__device__ void gat_alpha_fwd(const T* __restrict__ el, const T* __restrict__ er, const T* __restrict__ Be,
                              const T* __restrict__ lse, const int* __restrict__ row_ptr, const int* __restrict__ src,
                              T* __restrict__ alpha, int N, int E, int H, T slope) {
    GRID_STRIDE(idx, (i64)E * H) {
        const int k = (int)(idx / H), h = (int)(idx % H);
        const int i = csr_row_of(row_ptr, N, k);
        const i64 ih = (i64)i * H + h;
        const T e = leaky_relu(gat_pre(el, er[ih], Be, src[k], k, h, H), slope);
        alpha[idx] = g_exp(e - lse[ih]);
    }
}

template <typename T>
__device__ void gat_bwd_dst(const T* __restrict__ gOut, const T* __restrict__ Z, const T* __restrict__ Out,
                            const T* __restrict__ el, const T* __restrict__ er, const T* __restrict__ Be,
                            const T* __restrict__ lse, const int* __restrict__ row_ptr, const int* __restrict__ src,
                            T* __restrict__ alpha, T* __restrict__ gpre, T* __restrict__ ger, int N, int H, int F,
                            T slope) {
    const int lane = lane_id();
    WARP_STRIDE(w, (i64)N * H) {
        const int i = (int)(w / H), h = (int)(w % H);
        const int beg = row_ptr[i], end = row_ptr[i + 1];
        if (beg >= end) {
            if (lane == 0) ger[w] = T(0);
            continue;
        }
        const T* go = gOut + w * F;
        const T* ou = Out + w * F;
        T d = T(0);
        for (int f = lane; f < F; f += 32) d += go[f] * ou[f];
        const T D = warp_sum(d);
        const T er_i = er[w], lse_i = lse[w];
        T gs = T(0);
        for (int k0 = beg; k0 < end; k0 += 32) {
            const int k = k0 + lane;
            const bool valid = k < end;
            const int s = valid ? src[k] : 0;
            T pre = T(0), a = T(0);
            if (valid) {
                pre = gat_pre(el, er_i, Be, s, k, h, H);
                a = g_exp(leaky_relu(pre, slope) - lse_i);
            }
            // galpha for the chunk's edges: one warp-wide dot product per edge.
            T my_ga = T(0);
            const int cnt = min(32, end - k0);
            for (int j = 0; j < cnt; ++j) {
                const int sj = __shfl_sync(GSHN_FULL_MASK, s, j);
                const T* zr = Z + ((i64)sj * H + h) * F;
                T part = T(0);
                for (int f = lane; f < F; f += 32) part += go[f] * zr[f];
                part = warp_sum(part);
                if (lane == j) my_ga = part;
            }
            if (valid) {
                const T ge = a * (my_ga - D);
                const T gp = pre > T(0) ? ge : ge * slope;
                const i64 kh = (i64)k * H + h;
                alpha[kh] = a;
                gpre[kh] = gp;
                gs += gp;
            }
        }
        gs = warp_sum(gs);
        if (lane == 0) ger[w] = gs;
    }
}

template <typename T>
__device__ void gat_alpha_bwd_dst(const T* __restrict__ alpha, const T* __restrict__ galpha, const T* __restrict__ el,
                                  const T* __restrict__ er, const T* __restrict__ Be, const int* __restrict__ row_ptr,
                                  const int* __restrict__ src, T* __restrict__ gpre, T* __restrict__ ger, int N, int H,
                                  T slope) {
    const int lane = lane_id();
    WARP_STRIDE(w, (i64)N * H) {
        const int i = (int)(w / H), h = (int)(w % H);
        const int beg = row_ptr[i], end = row_ptr[i + 1];
        T d = T(0);
        for (int k = beg + lane; k < end; k += 32) d += alpha[(i64)k * H + h] * galpha[(i64)k * H + h];
        const T D = warp_sum(d);
        const T er_i = er[w];
        T gs = T(0);
        for (int k = beg + lane; k < end; k += 32) {
            const i64 kh = (i64)k * H + h;
            const T pre = gat_pre(el, er_i, Be, src[k], k, h, H);
            const T ge = alpha[kh] * (galpha[kh] - D);
            const T gp = pre > T(0) ? ge : ge * slope;
            gpre[kh] = gp;
            gs += gp;
        }
        gs = warp_sum(gs);
        if (lane == 0) ger[w] = gs;
    }
}

template <typename T>
__device__ void gat_bwd_src(const T* __restrict__ gOut, const T* __restrict__ alpha, const T* __restrict__ gpre,
                            const T* __restrict__ ger, const T* __restrict__ a_src, const T* __restrict__ a_dst,
                            const int* __restrict__ row_ptr, const int* __restrict__ col_ptr,
                            const int* __restrict__ col_edge, T* __restrict__ gZ, T* __restrict__ gel, int N, int H,
                            int F) {
    const int lane = lane_id();
    WARP_STRIDE(w, (i64)N * H) {
        const int j = (int)(w / H), h = (int)(w % H);
        const int beg = col_ptr[j], end = col_ptr[j + 1];
        T gs = T(0);
        for (int p = beg + lane; p < end; p += 32) gs += gpre[(i64)col_edge[p] * H + h];
        const T gel_j = warp_sum(gs);
        if (lane == 0) gel[w] = gel_j;
        const T ger_j = ger[w];
        const T* as = a_src + (i64)h * F;
        const T* ad = a_dst + (i64)h * F;
        T* gz = gZ + w * F;
        for (int f0 = 0; f0 < F; f0 += 32 * GAT_FC) {
            T acc[GAT_FC];
#pragma unroll
            for (int c = 0; c < GAT_FC; ++c) acc[c] = T(0);
            if (gOut) {
                for (int p0 = beg; p0 < end; p0 += 32) {
                    const int p = p0 + lane;
                    const bool valid = p < end;
                    T a = T(0);
                    int dst = 0;
                    if (valid) {
                        const int k = col_edge[p];
                        a = alpha[(i64)k * H + h];
                        dst = csr_row_of(row_ptr, N, k);
                    }
                    const int cnt = min(32, end - p0);
                    for (int q = 0; q < cnt; ++q) {
                        const T aq = __shfl_sync(GSHN_FULL_MASK, a, q);
                        const int dq = __shfl_sync(GSHN_FULL_MASK, dst, q);
                        const T* g = gOut + ((i64)dq * H + h) * F + f0;
#pragma unroll
                        for (int c = 0; c < GAT_FC; ++c) {
                            const int f = lane + 32 * c;
                            if (f0 + f < F) acc[c] += aq * g[f];
                        }
                    }
                }
            }
#pragma unroll
            for (int c = 0; c < GAT_FC; ++c) {
                const int f = f0 + lane + 32 * c;
                if (f < F) gz[f] = acc[c] + gel_j * as[f] + ger_j * ad[f];
            }
        }
    }
}

template <typename T>
__device__ void gat_ga_partial(const T* __restrict__ Z, const T* __restrict__ gel, const T* __restrict__ ger,
                               T* __restrict__ part, int N, int H, int F, int rows_per_chunk) {
    const i64 HF = (i64)H * F;
    const int chunk = blockIdx.y;
    const i64 r0 = (i64)chunk * rows_per_chunk;
    const i64 r1 = r0 + rows_per_chunk < N ? r0 + rows_per_chunk : N;
    for (i64 c = gtid(); c < HF; c += gstride()) {
        const int h = (int)(c / F);
        T ss = T(0), sd = T(0);
        for (i64 r = r0; r < r1; ++r) {
            const T z = Z[r * HF + c];
            ss += gel[r * H + h] * z;
            sd += ger[r * H + h] * z;
        }
        part[(2 * (i64)chunk) * HF + c] = ss;
        part[(2 * (i64)chunk + 1) * HF + c] = sd;
    }
}

template <typename T>
__device__ void gat_ga_final(const T* __restrict__ part, T* __restrict__ g_a_src, T* __restrict__ g_a_dst, int nchunks,
                             int HF) {
    GRID_STRIDE(c, HF) {
        T ss = T(0), sd = T(0);
        for (int q = 0; q < nchunks; ++q) {
            ss += part[(2 * (i64)q) * HF + c];
            sd += part[(2 * (i64)q + 1) * HF + c];
        }
        g_a_src[c] = ss;
        g_a_dst[c] = sd;
    }
}

#define GAT_INST(T, SUF)                                                                                          \
    extern "C" __global__ void gat_el_er_##SUF(const T* Z, const T* a_src, const T* a_dst, T* el, T* er, int N,  \
                                               int H, int F) {                                                    \
        gat_el_er<T>(Z, a_src, a_dst, el, er, N, H, F);                                                           \
    }                                                                                                             \
    extern "C" __global__ void gat_fwd_##SUF(const T* Z, const T* el, const T* er, const T* Be,                 \
                                             const int* row_ptr, const int* src, T* Out, T* lse, int N, int H,   \
                                             int F, T slope) {                                                    \
        gat_fwd<T>(Z, el, er, Be, row_ptr, src, Out, lse, N, H, F, slope);                                        \
    }                                                                                                             \
    extern "C" __global__ void gat_alpha_fwd_##SUF(const T* el, const T* er, const T* Be, const T* lse,          \
                                                   const int* row_ptr, const int* src, T* alpha, int N, int E,    \
                                                   int H, T slope) {                                              \
        gat_alpha_fwd<T>(el, er, Be, lse, row_ptr, src, alpha, N, E, H, slope);                                   \
    }                                                                                                             \
    extern "C" __global__ void gat_bwd_dst_##SUF(const T* gOut, const T* Z, const T* Out, const T* el,           \
                                                 const T* er, const T* Be, const T* lse, const int* row_ptr,     \
                                                 const int* src, T* alpha, T* gpre, T* ger, int N, int H, int F, \
                                                 T slope) {                                                       \
        gat_bwd_dst<T>(gOut, Z, Out, el, er, Be, lse, row_ptr, src, alpha, gpre, ger, N, H, F, slope);            \
    }                                                                                                             \
    extern "C" __global__ void gat_alpha_bwd_dst_##SUF(const T* alpha, const T* galpha, const T* el,             \
                                                       const T* er, const T* Be, const int* row_ptr,             \
                                                       const int* src, T* gpre, T* ger, int N, int H, T slope) { \
        gat_alpha_bwd_dst<T>(alpha, galpha, el, er, Be, row_ptr, src, gpre, ger, N, H, slope);                    \
    }                                                                                                             \
    extern "C" __global__ void gat_bwd_src_##SUF(const T* gOut, const T* alpha, const T* gpre, const T* ger,     \
                                                 const T* a_src, const T* a_dst, const int* row_ptr,             \
                                                 const int* col_ptr, const int* col_edge, T* gZ, T* gel, int N,  \
                                                 int H, int F) {                                                  \
        gat_bwd_src<T>(gOut, alpha, gpre, ger, a_src, a_dst, row_ptr, col_ptr, col_edge, gZ, gel, N, H, F);       \
    }                                                                                                             \
    extern "C" __global__ void gat_ga_partial_##SUF(const T* Z, const T* gel, const T* ger, T* part, int N,      \
                                                    int H, int F, int rows_per_chunk) {                           \
        gat_ga_partial<T>(Z, gel, ger, part, N, H, F, rows_per_chunk);                                            \
    }                                                                                                             \
    extern "C" __global__ void gat_ga_final_##SUF(const T* part, T* g_a_src, T* g_a_dst, int nchunks, int HF) {  \
        gat_ga_final<T>(part, g_a_src, g_a_dst, nchunks, HF);                                                     \
    }

GAT_INST(float, f32)
GAT_INST(double, f64)

// =============================================================================================
// AGGREGATE — fixed-attention aggregation for SNN message passing (DESIGN §3.3, Op::Aggregate).
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
