// norm.cu — LayerNorm, L2-normalise and masked softmax over the last axis (DESIGN §3.6).
// x, y, gx, gy: [R,C] row-major. Storage S = float (_f32), double (_f64), bf16s (_bf16), f16s (_f16);
// arithmetic and statistics T = Acc<S>::T (double for _f64, float for the others): the tensors
// (x, y, gx, gy, gamma, beta, valid and the parameter gradients) are S, the saved statistics (mean,
// rstd, norm), the partials and the scalars are T.
// Row kernels are warp per row: block 256 (multiple of 32), grid = ceil(R*32/256) (any >= 1).
// Skip launches when R == 0.
//
// layernorm_fwd_*(const S* x, const S* gamma, const S* beta, S* y, T* mean, T* rstd,
//                  int R, int C, T eps)
//   mean[r], rstd[r] = 1/sqrt(var_biased + eps) saved [R]; y = (x - mean) rstd gamma + beta.
//   gamma, beta nullable (no affine).
// layernorm_bwd_*(const S* x, const S* gy, const S* gamma, const T* mean, const T* rstd,
//                  S* gx, int R, int C)
//   xh = (x-mean) rstd, g = gy*gamma; gx = rstd (g - mean_c(g) - xh mean_c(g xh)). Warp per row.
// layernorm_bwd_params_partial_*(const S* x, const S* gy, const T* mean, const T* rstd,
//                                 T* part, int R, int C, int rows_per_chunk)
//   grid = (ceil(C/256), nchunks = ceil(R/rows_per_chunk) <= 65535), block 256.
//   part[(2k)*C + c] = sum_{r in chunk k} gy xh ; part[(2k+1)*C + c] = sum gy.
// layernorm_bwd_params_final_*(const T* part, S* ggamma, S* gbeta, int nchunks, int C)
//   Flat over C. Fixed chunk order => deterministic.
// l2norm_fwd_*(const S* x, S* y, T* norm, int R, int C, T eps)
//   torch F.normalize: y = x / max(||x||, eps); norm[r] = ||x_r|| saved (nullable).
// l2norm_bwd_*(const S* gy, const S* y, const T* norm, S* gx, int R, int C, T eps)
//   ||x|| >= eps: gx = (gy - y <gy,y>) / ||x||;  else gx = gy / eps (as the CPU backend).
// softmax_fwd_*(const S* x, const S* valid, S* y, int R, int C, int rows_per_mask, T scale)
//   y[r,:] = softmax(scale * x[r,:]) over positions with valid[r / rows_per_mask, c] != 0 (float
//   keep mask [R/rows_per_mask, C] of the x dtype, as Op::MaskedSoftmax: 1 = attend, 0 = padding;
//   nullable = all valid).
//   Masked positions get 0; a fully masked row is all 0 (never NaN).
//   Attention scores [B, heads, Lq, Lk]: C = Lk, rows_per_mask = heads*Lq, mask [B, Lk].
// softmax_bwd_*(const S* y, const S* gy, S* gx, int R, int C, T scale)
//   gx = scale * y (gy - <gy, y>)  (masked positions have y = 0 -> gx = 0).
#include "common.cuh"

template <typename S>
__device__ void layernorm_fwd(const S* __restrict__ x, const S* __restrict__ gamma, const S* __restrict__ beta,
                              S* __restrict__ y, typename Acc<S>::T* __restrict__ mean,
                              typename Acc<S>::T* __restrict__ rstd, int R, int C, typename Acc<S>::T eps) {
    typedef typename Acc<S>::T T;
    const int lane = lane_id();
    WARP_STRIDE(r, R) {
        const S* xr = x + r * C;
        T s = T(0);
        for (int c = lane; c < C; c += 32) s += widen(xr[c]);
        const T mu = warp_sum(s) / T(C);
        T v = T(0);
        for (int c = lane; c < C; c += 32) { const T d = widen(xr[c]) - mu; v += d * d; }
        const T rs = T(1) / g_sqrt(warp_sum(v) / T(C) + eps);
        S* yr = y + r * C;
        for (int c = lane; c < C; c += 32) {
            T o = (widen(xr[c]) - mu) * rs;
            if (gamma) o = o * widen(gamma[c]);
            if (beta) o = o + widen(beta[c]);
            yr[c] = narrow<S>(o);
        }
        if (lane == 0) { mean[r] = mu; rstd[r] = rs; }
    }
}

template <typename S>
__device__ void layernorm_bwd(const S* __restrict__ x, const S* __restrict__ gy, const S* __restrict__ gamma,
                              const typename Acc<S>::T* __restrict__ mean, const typename Acc<S>::T* __restrict__ rstd,
                              S* __restrict__ gx, int R, int C) {
    typedef typename Acc<S>::T T;
    const int lane = lane_id();
    WARP_STRIDE(r, R) {
        const S* xr = x + r * C;
        const S* gr = gy + r * C;
        const T mu = mean[r], rs = rstd[r];
        T sg = T(0), sgx = T(0);
        for (int c = lane; c < C; c += 32) {
            const T g = gamma ? widen(gr[c]) * widen(gamma[c]) : widen(gr[c]);
            sg += g;
            sgx += g * ((widen(xr[c]) - mu) * rs);
        }
        const T mg = warp_sum(sg) / T(C), mgx = warp_sum(sgx) / T(C);
        S* o = gx + r * C;
        for (int c = lane; c < C; c += 32) {
            const T g = gamma ? widen(gr[c]) * widen(gamma[c]) : widen(gr[c]);
            const T xh = (widen(xr[c]) - mu) * rs;
            o[c] = narrow<S>(rs * (g - mg - xh * mgx));
        }
    }
}

template <typename S>
__device__ void layernorm_bwd_params_partial(const S* __restrict__ x, const S* __restrict__ gy,
                                             const typename Acc<S>::T* __restrict__ mean,
                                             const typename Acc<S>::T* __restrict__ rstd,
                                             typename Acc<S>::T* __restrict__ part, int R, int C, int rows_per_chunk) {
    typedef typename Acc<S>::T T;
    const i64 k = blockIdx.y;
    const i64 r0 = k * rows_per_chunk;
    const i64 r1 = r0 + rows_per_chunk < R ? r0 + rows_per_chunk : R;
    for (i64 c = gtid(); c < C; c += gstride()) {
        T sgx = T(0), sg = T(0);
        for (i64 r = r0; r < r1; ++r) {
            const T g = widen(gy[r * C + c]);
            sgx += g * ((widen(x[r * C + c]) - mean[r]) * rstd[r]);
            sg += g;
        }
        part[(2 * k) * C + c] = sgx;
        part[(2 * k + 1) * C + c] = sg;
    }
}

template <typename S>
__device__ void layernorm_bwd_params_final(const typename Acc<S>::T* __restrict__ part, S* __restrict__ ggamma,
                                           S* __restrict__ gbeta, int nchunks, int C) {
    typedef typename Acc<S>::T T;
    GRID_STRIDE(c, C) {
        T a = T(0), b = T(0);
        for (int k = 0; k < nchunks; ++k) {
            a += part[(2 * (i64)k) * C + c];
            b += part[(2 * (i64)k + 1) * C + c];
        }
        if (ggamma) ggamma[c] = narrow<S>(a);
        if (gbeta) gbeta[c] = narrow<S>(b);
    }
}

template <typename S>
__device__ void l2norm_fwd(const S* __restrict__ x, S* __restrict__ y, typename Acc<S>::T* __restrict__ norm, int R,
                           int C, typename Acc<S>::T eps) {
    typedef typename Acc<S>::T T;
    const int lane = lane_id();
    WARP_STRIDE(r, R) {
        const S* xr = x + r * C;
        T s = T(0);
        for (int c = lane; c < C; c += 32) s += widen(xr[c]) * widen(xr[c]);
        const T nr = g_sqrt(warp_sum(s));
        const T den = g_max(nr, eps);
        S* yr = y + r * C;
        for (int c = lane; c < C; c += 32) yr[c] = narrow<S>(widen(xr[c]) / den);
        if (norm && lane == 0) norm[r] = nr;
    }
}

template <typename S>
__device__ void l2norm_bwd(const S* __restrict__ gy, const S* __restrict__ y, const typename Acc<S>::T* __restrict__ norm,
                           S* __restrict__ gx, int R, int C, typename Acc<S>::T eps) {
    typedef typename Acc<S>::T T;
    const int lane = lane_id();
    WARP_STRIDE(r, R) {
        const S* gr = gy + r * C;
        const S* yr = y + r * C;
        S* o = gx + r * C;
        const T nr = norm[r];
        if (nr >= eps) {
            T s = T(0);
            for (int c = lane; c < C; c += 32) s += widen(gr[c]) * widen(yr[c]);
            const T dot = warp_sum(s);
            for (int c = lane; c < C; c += 32) o[c] = narrow<S>((widen(gr[c]) - widen(yr[c]) * dot) / nr);
        } else {
            for (int c = lane; c < C; c += 32) o[c] = narrow<S>(widen(gr[c]) / eps);
        }
    }
}

template <typename S>
__device__ void softmax_fwd(const S* __restrict__ x, const S* __restrict__ valid, S* __restrict__ y, int R, int C,
                            int rows_per_mask, typename Acc<S>::T scale) {
    typedef typename Acc<S>::T T;
    const int lane = lane_id();
    WARP_STRIDE(r, R) {
        const S* xr = x + r * C;
        const S* vr = valid ? valid + (r / rows_per_mask) * C : nullptr;
        T m = g_neg_inf<T>();
        bool any = false;  // a kept key in the row (not `s > 0`, which a NaN sum fails too)
        for (int c = lane; c < C; c += 32)
            if (!vr || widen(vr[c]) != T(0)) m = g_max(m, scale * widen(xr[c])), any = true;
        m = warp_max(m);
        any = __any_sync(0xffffffffu, any);
        T s = T(0);
        for (int c = lane; c < C; c += 32)
            if (!vr || widen(vr[c]) != T(0)) s += g_exp(scale * widen(xr[c]) - m);
        s = warp_sum(s);
        S* yr = y + r * C;
        // as the CPU: every entry of a row with a kept key divided by the sum, so a non-finite
        // sum (an infinite or NaN logit) makes the whole row NaN instead of zeros
        for (int c = lane; c < C; c += 32) {
            const T e = (!vr || widen(vr[c]) != T(0)) ? g_exp(scale * widen(xr[c]) - m) : T(0);
            yr[c] = narrow<S>(any ? e / s : T(0));
        }
    }
}

template <typename S>
__device__ void softmax_bwd(const S* __restrict__ y, const S* __restrict__ gy, S* __restrict__ gx, int R, int C,
                            typename Acc<S>::T scale) {
    typedef typename Acc<S>::T T;
    const int lane = lane_id();
    WARP_STRIDE(r, R) {
        const S* yr = y + r * C;
        const S* gr = gy + r * C;
        T s = T(0);
        for (int c = lane; c < C; c += 32) s += widen(gr[c]) * widen(yr[c]);
        const T dot = warp_sum(s);
        S* o = gx + r * C;
        for (int c = lane; c < C; c += 32) o[c] = narrow<S>(scale * widen(yr[c]) * (widen(gr[c]) - dot));
    }
}

#define NORM_INST(S, SUF)                                                                                         \
    typedef Acc<S>::T T_##SUF;                                                                                    \
    extern "C" __global__ void layernorm_fwd_##SUF(const S* x, const S* gamma, const S* beta, S* y,              \
                                                   T_##SUF* mean, T_##SUF* rstd, int R, int C, T_##SUF eps) {    \
        layernorm_fwd<S>(x, gamma, beta, y, mean, rstd, R, C, eps);                                               \
    }                                                                                                             \
    extern "C" __global__ void layernorm_bwd_##SUF(const S* x, const S* gy, const S* gamma, const T_##SUF* mean, \
                                                   const T_##SUF* rstd, S* gx, int R, int C) {                   \
        layernorm_bwd<S>(x, gy, gamma, mean, rstd, gx, R, C);                                                     \
    }                                                                                                             \
    extern "C" __global__ void layernorm_bwd_params_partial_##SUF(const S* x, const S* gy, const T_##SUF* mean,  \
                                                                  const T_##SUF* rstd, T_##SUF* part, int R,     \
                                                                  int C, int rows_per_chunk) {                   \
        layernorm_bwd_params_partial<S>(x, gy, mean, rstd, part, R, C, rows_per_chunk);                           \
    }                                                                                                             \
    extern "C" __global__ void layernorm_bwd_params_final_##SUF(const T_##SUF* part, S* ggamma, S* gbeta,        \
                                                                int nchunks, int C) {                            \
        layernorm_bwd_params_final<S>(part, ggamma, gbeta, nchunks, C);                                           \
    }                                                                                                             \
    extern "C" __global__ void l2norm_fwd_##SUF(const S* x, S* y, T_##SUF* norm, int R, int C, T_##SUF eps) {    \
        l2norm_fwd<S>(x, y, norm, R, C, eps);                                                                     \
    }                                                                                                             \
    extern "C" __global__ void l2norm_bwd_##SUF(const S* gy, const S* y, const T_##SUF* norm, S* gx, int R,      \
                                                int C, T_##SUF eps) {                                             \
        l2norm_bwd<S>(gy, y, norm, gx, R, C, eps);                                                                \
    }                                                                                                             \
    extern "C" __global__ void softmax_fwd_##SUF(const S* x, const S* valid, S* y, int R, int C,               \
                                                 int rows_per_mask, T_##SUF scale) {                              \
        softmax_fwd<S>(x, valid, y, R, C, rows_per_mask, scale);                                                  \
    }                                                                                                             \
    extern "C" __global__ void softmax_bwd_##SUF(const S* y, const S* gy, S* gx, int R, int C, T_##SUF scale) {  \
        softmax_bwd<S>(y, gy, gx, R, C, scale);                                                                   \
    }

NORM_INST(float, f32)
NORM_INST(double, f64)
NORM_INST(bf16s, bf16)
NORM_INST(f16s, f16)
