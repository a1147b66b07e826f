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
// Element types (common.cuh, "Storage types"): kernels are instantiated as _f32, _f64, _bf16, _f16.
// S = the storage type (float, double, bf16s, f16s), T = Acc<S>::T (float, double, float, float).
//   S: the op's tensors: Z, a_src, a_dst, Be, Out, gOut, alpha / galpha where they are op inputs or
//      outputs (gat_alpha_fwd's alpha, gat_alpha_bwd_dst's alpha and galpha), gZ, g_a_src, g_a_dst,
//      and g_be (see pass 1).
//   T: everything else: the scalar slope, the statistics lse (an op output / input that stays f32 on
//      half storage: Op::half_stats) and all host scratch: el, er, the backward's alpha and gpre,
//      ger, gel, part. Half storage is read with widen() and computed in f32; each S output is
//      rounded once (narrow<S>), as the CPU backend's half path (f32 on widened inputs) does.
// For _f32 / _f64, S == T: a T pointer may then point at an op tensor (e.g. gpre at g_be).
//
// ---------------------------------------------------------------------------------------------
// FORWARD
// gat_el_er_{f32,f64,bf16,f16}(const S* Z, const S* a_src, const S* a_dst, T* el, T* er, int N,
//                              int H, int F)
//   el[n,h] = <Z[n,h,:], a_src[h,:]>, er[n,h] = <Z[n,h,:], a_dst[h,:]>. Warp per (n,h).
//   el, er: [N,H] scratch owned by the host (keep from the forward, or recompute for the backward).
// gat_fwd_*(const S* Z, const T* el, const T* er, const S* Be, const int* row_ptr,
//           const int* src, S* Out, T* lse, int N, int H, int F, T slope)
//   Be nullable. Out [N,H,F], lse [N,H] = log-sum-exp of e over the incoming edges.
//   Zero in-degree: Out = 0, lse = 0. Warp per (dst, head), online softmax + aggregation in one pass
//   (32 edges scored per step, one lane per edge; features in chunks of 128 = 4 per lane).
//   E == 0 is fine (all nodes zero in-degree).
// gat_alpha_fwd_*(const T* el, const T* er, const S* Be, const T* lse, const int* row_ptr,
//                 const int* src, S* alpha, int N, int E, int H, T slope)
//   alpha[E,H] = softmax weights (export for plots / the SNN branch). Flat: one thread per (k,h),
//   block 256, grid = ceil(E*H/256) (any). Skip when E == 0.
//
// BACKWARD of gat_fwd (inputs gOut, Z, a_src, a_dst, Be?, Out, lse, row_ptr, src, col_ptr, col_edge)
//   scratch (host-provided, all T): el, er [N,H] (gat_el_er first, unless kept from the forward),
//   alpha [E,H], gpre [E,H], ger [N,H], gel [N,H], part [nchunks, 2, H*F].
//   1. gat_bwd_dst_*(const S* gOut, const S* Z, const S* Out, const T* el, const T* er,
//        const S* Be, const T* lse, const int* row_ptr, const int* src, T* alpha, T* gpre, T* ger,
//        int N, int H, int F, T slope)
//      Warp per (dst i, head h). D = <gOut_i, Out_i>; per edge: alpha_k, galpha_k = <gOut_i, Z_src>,
//      ge = alpha (galpha - D), gpre = ge * (pre > 0 ? 1 : slope); writes alpha[k,h], gpre[k,h],
//      ger[i,h] = sum_k gpre (0 for zero in-degree). gpre IS gBe (dL/dBe): for _f32 / _f64 use the
//      g_be output as gpre directly; for _bf16 / _f16 gpre is T scratch, rounded into g_be by
//      basic.cu's cast_f32_<S> after passes 1 / 1' (pass 2 reads the unrounded gpre).
//   2. gat_bwd_src_*(const S* gOut, const T* alpha, const T* gpre, const T* ger,
//        const S* a_src, const S* a_dst, const int* row_ptr, const int* col_ptr, const int* col_edge,
//        S* gZ, T* gel, int N, int H, int F)
//      Warp per (src j, head h) over the CSC: gel[j,h] = sum_{k out of j} gpre[k,h];
//      gZ[j,h,:] = sum_{k out of j} alpha[k,h] gOut[dst_k,h,:] + gel a_src[h,:] + ger[j,h] a_dst[h,:].
//      gOut nullable: then the aggregation term is absent (used by the alpha-export backward) and
//      alpha is not read (may be nullptr).
//   3. gat_ga_partial_*(const S* Z, const T* gel, const T* ger, T* part, int N, int H, int F,
//        int rows_per_chunk)
//      grid = (ceil(H*F/256), nchunks) with nchunks = ceil(N/rows_per_chunk) <= 65535, block 256
//      (any; grid.x is grid-strided). part[(c*2+0)*H*F + hf] = sum_{rows in chunk c} gel[r,h] Z[r,hf],
//      part[(c*2+1)*H*F + hf] = same with ger. Recommended rows_per_chunk = max(64, ceil(N/1024)).
//      Same N => use the same rows_per_chunk (bit reproducibility).
//   4. gat_ga_final_*(const T* part, S* g_a_src, S* g_a_dst, int nchunks, int HF)
//      g_a_src[hf] = sum_c part[(c*2)*HF+hf] in chunk order; g_a_dst likewise. Flat over HF, block 256.
//   With E == 0 (N > 0): skip pass 1, zero-fill ger (and gpre is empty); passes 2-4 still give gZ = 0,
//   g_a = 0 (or simply zero-fill all gradients). N == 0: zero-fill g_a_src, g_a_dst; skip everything.
//
// BACKWARD of gat_alpha_fwd (given galpha [E,H] and the forward alpha [E,H], both S):
//   1'. gat_alpha_bwd_dst_*(const S* alpha, const S* galpha, const T* el, const T* er,
//         const S* Be, const int* row_ptr, const int* src, T* gpre, T* ger, int N, int H, T slope)
//       Warp per (dst, head): D = sum_k alpha_k galpha_k; ge = alpha (galpha - D); gpre, ger as in 1.
//   then 2 with gOut = nullptr (alpha unused), then 3 and 4 exactly as above.
//
// ---------------------------------------------------------------------------------------------
#include "common.cuh"

#define GAT_FC 4  // features per lane per pass (a pass covers 128 features)

template <typename S>
__device__ __forceinline__ typename Acc<S>::T gat_pre(const typename Acc<S>::T* __restrict__ el,
                                                      typename Acc<S>::T er_i, const S* __restrict__ Be, int s,
                                                      int k, int h, int H) {
    typedef typename Acc<S>::T T;
    T pre = el[(i64)s * H + h] + er_i;
    if (Be) pre += widen(Be[(i64)k * H + h]);
    return pre;
}

template <typename S>
__device__ void gat_el_er(const S* __restrict__ Z, const S* __restrict__ a_src, const S* __restrict__ a_dst,
                          typename Acc<S>::T* __restrict__ el, typename Acc<S>::T* __restrict__ er, int N, int H,
                          int F) {
    typedef typename Acc<S>::T T;
    const int lane = lane_id();
    WARP_STRIDE(w, (i64)N * H) {
        const int h = (int)(w % H);
        const S* z = Z + w * F;
        T sl = T(0), sr = T(0);
        for (int f = lane; f < F; f += 32) {
            T v = widen(z[f]);
            sl += v * widen(a_src[(i64)h * F + f]);
            sr += v * widen(a_dst[(i64)h * F + f]);
        }
        sl = warp_sum(sl);
        sr = warp_sum(sr);
        if (lane == 0) { el[w] = sl; er[w] = sr; }
    }
}

template <typename S>
__device__ void gat_fwd(const S* __restrict__ Z, const typename Acc<S>::T* __restrict__ el,
                        const typename Acc<S>::T* __restrict__ er, const S* __restrict__ Be,
                        const int* __restrict__ row_ptr, const int* __restrict__ src, S* __restrict__ Out,
                        typename Acc<S>::T* __restrict__ lse, int N, int H, int F, typename Acc<S>::T slope) {
    typedef typename Acc<S>::T T;
    const int lane = lane_id();
    WARP_STRIDE(w, (i64)N * H) {
        const int i = (int)(w / H), h = (int)(w % H);
        const int beg = row_ptr[i], end = row_ptr[i + 1];
        S* out = Out + w * F;
        if (beg >= end) {
            for (int f = lane; f < F; f += 32) out[f] = narrow<S>(T(0));
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
                if (valid) e = leaky_relu(gat_pre<S>(el, er_i, Be, s, k, h, H), slope);
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
                    const S* zr = Z + ((i64)sj * H + h) * F + f0;
#pragma unroll
                    for (int c = 0; c < GAT_FC; ++c) {
                        const int f = lane + 32 * c;
                        if (f0 + f < F) acc[c] += pj * widen(zr[f]);
                    }
                }
                m = mn;
            }
#pragma unroll
            for (int c = 0; c < GAT_FC; ++c) {
                const int f = f0 + lane + 32 * c;
                if (f < F) out[f] = narrow<S>(acc[c] / l);
            }
            if (f0 == 0 && lane == 0) lse[w] = m + g_log(l);
        }
    }
}

template <typename S>
__device__ void gat_alpha_fwd(const typename Acc<S>::T* __restrict__ el, const typename Acc<S>::T* __restrict__ er,
                              const S* __restrict__ Be, const typename Acc<S>::T* __restrict__ lse,
                              const int* __restrict__ row_ptr, const int* __restrict__ src, S* __restrict__ alpha,
                              int N, int E, int H, typename Acc<S>::T slope) {
    typedef typename Acc<S>::T T;
    GRID_STRIDE(idx, (i64)E * H) {
        const int k = (int)(idx / H), h = (int)(idx % H);
        const int i = csr_row_of(row_ptr, N, k);
        const i64 ih = (i64)i * H + h;
        const T e = leaky_relu(gat_pre<S>(el, er[ih], Be, src[k], k, h, H), slope);
        alpha[idx] = narrow<S>(g_exp(e - lse[ih]));
    }
}

template <typename S>
__device__ void gat_bwd_dst(const S* __restrict__ gOut, const S* __restrict__ Z, const S* __restrict__ Out,
                            const typename Acc<S>::T* __restrict__ el, const typename Acc<S>::T* __restrict__ er,
                            const S* __restrict__ Be, const typename Acc<S>::T* __restrict__ lse,
                            const int* __restrict__ row_ptr, const int* __restrict__ src,
                            typename Acc<S>::T* __restrict__ alpha, typename Acc<S>::T* __restrict__ gpre,
                            typename Acc<S>::T* __restrict__ ger, int N, int H, int F, typename Acc<S>::T slope) {
    typedef typename Acc<S>::T T;
    const int lane = lane_id();
    WARP_STRIDE(w, (i64)N * H) {
        const int i = (int)(w / H), h = (int)(w % H);
        const int beg = row_ptr[i], end = row_ptr[i + 1];
        if (beg >= end) {
            if (lane == 0) ger[w] = T(0);
            continue;
        }
        const S* go = gOut + w * F;
        const S* ou = Out + w * F;
        T d = T(0);
        for (int f = lane; f < F; f += 32) d += widen(go[f]) * widen(ou[f]);
        const T D = warp_sum(d);
        const T er_i = er[w], lse_i = lse[w];
        T gs = T(0);
        for (int k0 = beg; k0 < end; k0 += 32) {
            const int k = k0 + lane;
            const bool valid = k < end;
            const int s = valid ? src[k] : 0;
            T pre = T(0), a = T(0);
            if (valid) {
                pre = gat_pre<S>(el, er_i, Be, s, k, h, H);
                a = g_exp(leaky_relu(pre, slope) - lse_i);
            }
            // galpha for the chunk's edges: one warp-wide dot product per edge.
            T my_ga = T(0);
            const int cnt = min(32, end - k0);
            for (int j = 0; j < cnt; ++j) {
                const int sj = __shfl_sync(GSHN_FULL_MASK, s, j);
                const S* zr = Z + ((i64)sj * H + h) * F;
                T part = T(0);
                for (int f = lane; f < F; f += 32) part += widen(go[f]) * widen(zr[f]);
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

template <typename S>
__device__ void gat_alpha_bwd_dst(const S* __restrict__ alpha, const S* __restrict__ galpha,
                                  const typename Acc<S>::T* __restrict__ el, const typename Acc<S>::T* __restrict__ er,
                                  const S* __restrict__ Be, const int* __restrict__ row_ptr,
                                  const int* __restrict__ src, typename Acc<S>::T* __restrict__ gpre,
                                  typename Acc<S>::T* __restrict__ ger, int N, int H, typename Acc<S>::T slope) {
    typedef typename Acc<S>::T T;
    const int lane = lane_id();
    WARP_STRIDE(w, (i64)N * H) {
        const int i = (int)(w / H), h = (int)(w % H);
        const int beg = row_ptr[i], end = row_ptr[i + 1];
        T d = T(0);
        for (int k = beg + lane; k < end; k += 32) d += widen(alpha[(i64)k * H + h]) * widen(galpha[(i64)k * H + h]);
        const T D = warp_sum(d);
        const T er_i = er[w];
        T gs = T(0);
        for (int k = beg + lane; k < end; k += 32) {
            const i64 kh = (i64)k * H + h;
            const T pre = gat_pre<S>(el, er_i, Be, src[k], k, h, H);
            const T ge = widen(alpha[kh]) * (widen(galpha[kh]) - D);
            const T gp = pre > T(0) ? ge : ge * slope;
            gpre[kh] = gp;
            gs += gp;
        }
        gs = warp_sum(gs);
        if (lane == 0) ger[w] = gs;
    }
}

template <typename S>
__device__ void gat_bwd_src(const S* __restrict__ gOut, const typename Acc<S>::T* __restrict__ alpha,
                            const typename Acc<S>::T* __restrict__ gpre, const typename Acc<S>::T* __restrict__ ger,
                            const S* __restrict__ a_src, const S* __restrict__ a_dst, const int* __restrict__ row_ptr,
                            const int* __restrict__ col_ptr, const int* __restrict__ col_edge, S* __restrict__ gZ,
                            typename Acc<S>::T* __restrict__ gel, int N, int H, int F) {
    typedef typename Acc<S>::T T;
    const int lane = lane_id();
    WARP_STRIDE(w, (i64)N * H) {
        const int j = (int)(w / H), h = (int)(w % H);
        const int beg = col_ptr[j], end = col_ptr[j + 1];
        T gs = T(0);
        for (int p = beg + lane; p < end; p += 32) gs += gpre[(i64)col_edge[p] * H + h];
        const T gel_j = warp_sum(gs);
        if (lane == 0) gel[w] = gel_j;
        const T ger_j = ger[w];
        const S* as = a_src + (i64)h * F;
        const S* ad = a_dst + (i64)h * F;
        S* gz = gZ + w * F;
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
                        const S* g = gOut + ((i64)dq * H + h) * F + f0;
#pragma unroll
                        for (int c = 0; c < GAT_FC; ++c) {
                            const int f = lane + 32 * c;
                            if (f0 + f < F) acc[c] += aq * widen(g[f]);
                        }
                    }
                }
            }
#pragma unroll
            for (int c = 0; c < GAT_FC; ++c) {
                const int f = f0 + lane + 32 * c;
                if (f < F) gz[f] = narrow<S>(acc[c] + gel_j * widen(as[f]) + ger_j * widen(ad[f]));
            }
        }
    }
}

template <typename S>
__device__ void gat_ga_partial(const S* __restrict__ Z, const typename Acc<S>::T* __restrict__ gel,
                               const typename Acc<S>::T* __restrict__ ger, typename Acc<S>::T* __restrict__ part,
                               int N, int H, int F, int rows_per_chunk) {
    typedef typename Acc<S>::T T;
    const i64 HF = (i64)H * F;
    const int chunk = blockIdx.y;
    const i64 r0 = (i64)chunk * rows_per_chunk;
    const i64 r1 = r0 + rows_per_chunk < N ? r0 + rows_per_chunk : N;
    for (i64 c = gtid(); c < HF; c += gstride()) {
        const int h = (int)(c / F);
        T ss = T(0), sd = T(0);
        for (i64 r = r0; r < r1; ++r) {
            const T z = widen(Z[r * HF + c]);
            ss += gel[r * H + h] * z;
            sd += ger[r * H + h] * z;
        }
        part[(2 * (i64)chunk) * HF + c] = ss;
        part[(2 * (i64)chunk + 1) * HF + c] = sd;
    }
}

template <typename S>
__device__ void gat_ga_final(const typename Acc<S>::T* __restrict__ part, S* __restrict__ g_a_src,
                             S* __restrict__ g_a_dst, int nchunks, int HF) {
    typedef typename Acc<S>::T T;
    GRID_STRIDE(c, HF) {
        T ss = T(0), sd = T(0);
        for (int q = 0; q < nchunks; ++q) {
            ss += part[(2 * (i64)q) * HF + c];
            sd += part[(2 * (i64)q + 1) * HF + c];
        }
        g_a_src[c] = narrow<S>(ss);
        g_a_dst[c] = narrow<S>(sd);
    }
}

// Instantiations: S is the storage type, T_SUF = Acc<S>::T the type of scalars, statistics, scratch.
#define GAT_INST(S, SUF)                                                                                          \
    typedef Acc<S>::T T_##SUF;                                                                                    \
    extern "C" __global__ void gat_el_er_##SUF(const S* Z, const S* a_src, const S* a_dst, T_##SUF* el,           \
                                               T_##SUF* er, int N, int H, int F) {                                \
        gat_el_er<S>(Z, a_src, a_dst, el, er, N, H, F);                                                           \
    }                                                                                                             \
    extern "C" __global__ void gat_fwd_##SUF(const S* Z, const T_##SUF* el, const T_##SUF* er, const S* Be,       \
                                             const int* row_ptr, const int* src, S* Out, T_##SUF* lse, int N,     \
                                             int H, int F, T_##SUF slope) {                                       \
        gat_fwd<S>(Z, el, er, Be, row_ptr, src, Out, lse, N, H, F, slope);                                        \
    }                                                                                                             \
    extern "C" __global__ void gat_alpha_fwd_##SUF(const T_##SUF* el, const T_##SUF* er, const S* Be,             \
                                                   const T_##SUF* lse, const int* row_ptr, const int* src,        \
                                                   S* alpha, int N, int E, int H, T_##SUF slope) {                \
        gat_alpha_fwd<S>(el, er, Be, lse, row_ptr, src, alpha, N, E, H, slope);                                   \
    }                                                                                                             \
    extern "C" __global__ void gat_bwd_dst_##SUF(const S* gOut, const S* Z, const S* Out, const T_##SUF* el,      \
                                                 const T_##SUF* er, const S* Be, const T_##SUF* lse,              \
                                                 const int* row_ptr, const int* src, T_##SUF* alpha,              \
                                                 T_##SUF* gpre, T_##SUF* ger, int N, int H, int F,                \
                                                 T_##SUF slope) {                                                 \
        gat_bwd_dst<S>(gOut, Z, Out, el, er, Be, lse, row_ptr, src, alpha, gpre, ger, N, H, F, slope);            \
    }                                                                                                             \
    extern "C" __global__ void gat_alpha_bwd_dst_##SUF(const S* alpha, const S* galpha, const T_##SUF* el,        \
                                                       const T_##SUF* er, const S* Be, const int* row_ptr,        \
                                                       const int* src, T_##SUF* gpre, T_##SUF* ger, int N,        \
                                                       int H, T_##SUF slope) {                                    \
        gat_alpha_bwd_dst<S>(alpha, galpha, el, er, Be, row_ptr, src, gpre, ger, N, H, slope);                    \
    }                                                                                                             \
    extern "C" __global__ void gat_bwd_src_##SUF(const S* gOut, const T_##SUF* alpha, const T_##SUF* gpre,        \
                                                 const T_##SUF* ger, const S* a_src, const S* a_dst,              \
                                                 const int* row_ptr, const int* col_ptr, const int* col_edge,     \
                                                 S* gZ, T_##SUF* gel, int N, int H, int F) {                      \
        gat_bwd_src<S>(gOut, alpha, gpre, ger, a_src, a_dst, row_ptr, col_ptr, col_edge, gZ, gel, N, H, F);       \
    }                                                                                                             \
    extern "C" __global__ void gat_ga_partial_##SUF(const S* Z, const T_##SUF* gel, const T_##SUF* ger,           \
                                                    T_##SUF* part, int N, int H, int F, int rows_per_chunk) {     \
        gat_ga_partial<S>(Z, gel, ger, part, N, H, F, rows_per_chunk);                                            \
    }                                                                                                             \
    extern "C" __global__ void gat_ga_final_##SUF(const T_##SUF* part, S* g_a_src, S* g_a_dst, int nchunks,       \
                                                  int HF) {                                                       \
        gat_ga_final<S>(part, g_a_src, g_a_dst, nchunks, HF);                                                     \
    }

GAT_INST(float, f32)
GAT_INST(double, f64)
GAT_INST(bf16s, bf16)
GAT_INST(f16s, f16)

// =============================================================================================
// AGGREGATE — fixed-attention aggregation for SNN message passing (DESIGN §3.3, Op::Aggregate).
//
//   Y[t,i,c] = sum_{k into i} alpha[k, h(c)] * S[t, src_k, c],   h(c) = c / (C/H)   (C % H == 0)
//
// Graph as in gat.cu: CSR by destination row_ptr[N+1], src[E]; CSC col_ptr[N+1], col_edge[E] (edge
// ids grouped by source); int32. Layouts: alpha, galpha [E,H]; S, Y, gY, gS [Tn,N,C] row-major.
// Every float pointer is storage (type V below: float, double, bf16s, f16s for _f32, _f64, _bf16,
// _f16); sums run in Acc<V>::T (f32 for the half types) and each output is rounded once.
// Warp-per-item kernels: block 256 (multiple of 32), grid = ceil(items*32/256) (any grid >= 1 is
// correct: warp-stride loops). Channels are processed 128 per pass (4 per lane). All sums are in a
// fixed order (edge order of the CSR / CSC), no atomics.
//
// agg_fwd_{f32,f64,bf16,f16}(const V* alpha, const V* S, const int* row_ptr, const int* src,
//                            V* Y, int Tn, int N, int C, int H)
//   Warp per (t, i), items Tn*N. Zero in-degree -> Y row = 0. Skip when Tn*N*C == 0.
// agg_bwd_s_*(const V* alpha, const V* gY, const int* row_ptr, const int* col_ptr,
//             const int* col_edge, V* gS, int Tn, int N, int C, int H)
//   gS[t,j,c] = sum_{k out of j} alpha[k,h(c)] gY[t,dst_k,c]  (dst by binary search in row_ptr).
//   Warp per (t, j), items Tn*N. Every element of gS is written. Skip when Tn*N*C == 0.
// agg_bwd_alpha_*(const V* gY, const V* S, const int* row_ptr, const int* src, V* galpha,
//                 int Tn, int N, int C, int H)
//   galpha[k,h] = sum_t sum_{c in head h} gY[t,dst_k,c] S[t,src_k,c]. Warp per (dst i, head h),
//   items N*H; every edge written exactly once. Skip when E == 0 or N == 0.
// agg_fwd_u8s_*, agg_bwd_alpha_u8s_*: the same with S as u8 spikes (const u8s* S; LifConfig::
//   u8_spikes), read as V exactly (0 or 1). agg_bwd_s writes gS in V and reads no S.

#define AGG_FC 4

// V: the storage type; P: the spikes' (V, or u8s). S names the spike tensor here.
template <typename V, typename P>
__device__ void agg_fwd(const V* __restrict__ alpha, const P* __restrict__ S, const int* __restrict__ row_ptr,
                        const int* __restrict__ src, V* __restrict__ Y, int Tn, int N, int C, int H) {
    typedef typename Acc<V>::T T;
    const int lane = lane_id();
    const int Ch = C / H;
    WARP_STRIDE(w, (i64)Tn * N) {
        const i64 t = w / N;
        const int i = (int)(w % N);
        const int beg = row_ptr[i], end = row_ptr[i + 1];
        const P* St = S + t * N * C;
        V* y = Y + w * C;
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
                    const V* a = alpha + (i64)(k0 + j) * H;
                    const P* sr = St + (i64)sj * C;
#pragma unroll
                    for (int c = 0; c < AGG_FC; ++c) {
                        const int ch = c0 + lane + 32 * c;
                        if (ch < C) acc[c] += widen(a[hc[c]]) * widen(sr[ch]);
                    }
                }
            }
#pragma unroll
            for (int c = 0; c < AGG_FC; ++c) {
                const int ch = c0 + lane + 32 * c;
                if (ch < C) y[ch] = narrow<V>(acc[c]);
            }
        }
    }
}

template <typename V>
__device__ void agg_bwd_s(const V* __restrict__ alpha, const V* __restrict__ gY, const int* __restrict__ row_ptr,
                          const int* __restrict__ col_ptr, const int* __restrict__ col_edge, V* __restrict__ gS,
                          int Tn, int N, int C, int H) {
    typedef typename Acc<V>::T T;
    const int lane = lane_id();
    const int Ch = C / H;
    WARP_STRIDE(w, (i64)Tn * N) {
        const i64 t = w / N;
        const int j = (int)(w % N);
        const int beg = col_ptr[j], end = col_ptr[j + 1];
        const V* gYt = gY + t * N * C;
        V* g = gS + w * C;
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
                    const V* a = alpha + (i64)kq * H;
                    const V* gr = gYt + (i64)dq * C;
#pragma unroll
                    for (int c = 0; c < AGG_FC; ++c) {
                        const int ch = c0 + lane + 32 * c;
                        if (ch < C) acc[c] += widen(a[hc[c]]) * widen(gr[ch]);
                    }
                }
            }
#pragma unroll
            for (int c = 0; c < AGG_FC; ++c) {
                const int ch = c0 + lane + 32 * c;
                if (ch < C) g[ch] = narrow<V>(acc[c]);
            }
        }
    }
}

template <typename V, typename P>
__device__ void agg_bwd_alpha(const V* __restrict__ gY, const P* __restrict__ S, const int* __restrict__ row_ptr,
                              const int* __restrict__ src, V* __restrict__ galpha, int Tn, int N, int C, int H) {
    typedef typename Acc<V>::T T;
    const int lane = lane_id();
    const int Ch = C / H;
    WARP_STRIDE(w, (i64)N * H) {
        const int i = (int)(w / H), h = (int)(w % H);
        const int beg = row_ptr[i], end = row_ptr[i + 1];
        for (int k = beg; k < end; ++k) {
            const int s = src[k];
            T part = T(0);
            for (int t = 0; t < Tn; ++t) {
                const V* gy = gY + ((i64)t * N + i) * C + (i64)h * Ch;
                const P* sr = S + ((i64)t * N + s) * C + (i64)h * Ch;
                for (int c = lane; c < Ch; c += 32) part += widen(gy[c]) * widen(sr[c]);
            }
            part = warp_sum(part);
            if (lane == 0) galpha[(i64)k * H + h] = narrow<V>(part);
        }
    }
}

// The forms reading S (the forward, the alpha gradient), with S stored as P.
#define AGG_READ_S(V, P, SUF, NAME)                                                                               \
    extern "C" __global__ void agg_fwd##NAME##_##SUF(const V* alpha, const P* S, const int* row_ptr,              \
                                                     const int* src, V* Y, int Tn, int N, int C, int H) {         \
        agg_fwd<V, P>(alpha, S, row_ptr, src, Y, Tn, N, C, H);                                                    \
    }                                                                                                             \
    extern "C" __global__ void agg_bwd_alpha##NAME##_##SUF(const V* gY, const P* S, const int* row_ptr,           \
                                                           const int* src, V* galpha, int Tn, int N, int C,       \
                                                           int H) {                                               \
        agg_bwd_alpha<V, P>(gY, S, row_ptr, src, galpha, Tn, N, C, H);                                            \
    }
#define AGG_INST(V, SUF)                                                                                          \
    AGG_READ_S(V, V, SUF, )                                                                                       \
    AGG_READ_S(V, u8s, SUF, _u8s)                                                                                 \
    extern "C" __global__ void agg_bwd_s_##SUF(const V* alpha, const V* gY, const int* row_ptr,                   \
                                               const int* col_ptr, const int* col_edge, V* gS, int Tn, int N,     \
                                               int C, int H) {                                                    \
        agg_bwd_s<V>(alpha, gY, row_ptr, col_ptr, col_edge, gS, Tn, N, C, H);                                     \
    }

AGG_INST(float, f32)
AGG_INST(double, f64)
AGG_INST(bf16s, bf16)
AGG_INST(f16s, f16)
