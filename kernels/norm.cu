// norm.cu — LayerNorm, L2-normalise and masked softmax over the last axis (DESIGN §3.6).
// x, y, gx, gy: [R,C] row-major. T = float (_f32) / double (_f64).
// Row kernels are warp per row: block 256 (multiple of 32), grid = ceil(R*32/256) (any >= 1).
// Skip launches when R == 0.
//
// layernorm_fwd_{f32,f64}(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd,
//                         int R, int C, T eps)
//   mean[r], rstd[r] = 1/sqrt(var_biased + eps) saved [R]; y = (x - mean) rstd gamma + beta.
//   gamma, beta nullable (no affine).
// layernorm_bwd_{f32,f64}(const T* x, const T* gy, const T* gamma, const T* mean, const T* rstd,
//                         T* gx, int R, int C)
//   xh = (x-mean) rstd, g = gy*gamma; gx = rstd (g - mean_c(g) - xh mean_c(g xh)). Warp per row.
// layernorm_bwd_params_partial_{f32,f64}(const T* x, const T* gy, const T* mean, const T* rstd,
//                         T* part, int R, int C, int rows_per_chunk)
//   grid = (ceil(C/256), nchunks = ceil(R/rows_per_chunk) <= 65535), block 256.
//   part[(2k)*C + c] = sum_{r in chunk k} gy xh ; part[(2k+1)*C + c] = sum gy.
// layernorm_bwd_params_final_{f32,f64}(const T* part, T* ggamma, T* gbeta, int nchunks, int C)
//   Flat over C. Fixed chunk order => deterministic.
// l2norm_fwd_{f32,f64}(const T* x, T* y, T* norm, int R, int C, T eps)
//   torch F.normalize: y = x / max(||x||, eps); norm[r] = ||x_r|| saved (nullable).
// l2norm_bwd_{f32,f64}(const T* gy, const T* y, const T* norm, T* gx, int R, int C, T eps)
//   ||x|| >= eps: gx = (gy - y <gy,y>) / ||x||;  else gx = gy / eps (as the CPU backend).
// softmax_fwd_{f32,f64}(const T* x, const T* valid, T* y, int R, int C, int rows_per_mask, T scale)
//   y[r,:] = softmax(scale * x[r,:]) over positions with valid[r / rows_per_mask, c] != 0 (float
//   keep mask [R/rows_per_mask, C] of the x dtype, as Op::MaskedSoftmax: 1 = attend, 0 = padding;
//   nullable = all valid).
//   Masked positions get 0; a fully masked row is all 0 (never NaN).
//   Attention scores [B, heads, Lq, Lk]: C = Lk, rows_per_mask = heads*Lq, mask [B, Lk].
// softmax_bwd_{f32,f64}(const T* y, const T* gy, T* gx, int R, int C, T scale)
//   gx = scale * y (gy - <gy, y>)  (masked positions have y = 0 -> gx = 0).
#include "common.cuh"

template <typename T>
__device__ void layernorm_fwd(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ beta,
                              T* __restrict__ y, T* __restrict__ mean, T* __restrict__ rstd, int R, int C, T eps) {
    const int lane = lane_id();
    WARP_STRIDE(r, R) {
        const T* xr = x + r * C;
        T s = T(0);
        for (int c = lane; c < C; c += 32) s += xr[c];
        const T mu = warp_sum(s) / T(C);
        T v = T(0);
        for (int c = lane; c < C; c += 32) { const T d = xr[c] - mu; v += d * d; }
        const T rs = T(1) / g_sqrt(warp_sum(v) / T(C) + eps);
        T* yr = y + r * C;
        for (int c = lane; c < C; c += 32) {
            T o = (xr[c] - mu) * rs;
            if (gamma) o = o * gamma[c];
            if (beta) o = o + beta[c];
            yr[c] = o;
        }
        if (lane == 0) { mean[r] = mu; rstd[r] = rs; }
    }
}

template <typename T>
__device__ void layernorm_bwd(const T* __restrict__ x, const T* __restrict__ gy, const T* __restrict__ gamma,
                              const T* __restrict__ mean, const T* __restrict__ rstd, T* __restrict__ gx, int R,
                              int C) {
    const int lane = lane_id();
    WARP_STRIDE(r, R) {
        const T* xr = x + r * C;
        const T* gr = gy + r * C;
        const T mu = mean[r], rs = rstd[r];
        T sg = T(0), sgx = T(0);
        for (int c = lane; c < C; c += 32) {
            const T g = gamma ? gr[c] * gamma[c] : gr[c];
            sg += g;
            sgx += g * ((xr[c] - mu) * rs);
        }
        const T mg = warp_sum(sg) / T(C), mgx = warp_sum(sgx) / T(C);
        T* o = gx + r * C;
        for (int c = lane; c < C; c += 32) {
            const T g = gamma ? gr[c] * gamma[c] : gr[c];
            const T xh = (xr[c] - mu) * rs;
            o[c] = rs * (g - mg - xh * mgx);
        }
    }
}

template <typename T>
__device__ void layernorm_bwd_params_partial(const T* __restrict__ x, const T* __restrict__ gy,
                                             const T* __restrict__ mean, const T* __restrict__ rstd,
                                             T* __restrict__ part, int R, int C, int rows_per_chunk) {
    const i64 k = blockIdx.y;
    const i64 r0 = k * rows_per_chunk;
    const i64 r1 = r0 + rows_per_chunk < R ? r0 + rows_per_chunk : R;
    for (i64 c = gtid(); c < C; c += gstride()) {
        T sgx = T(0), sg = T(0);
        for (i64 r = r0; r < r1; ++r) {
            const T g = gy[r * C + c];
            sgx += g * ((x[r * C + c] - mean[r]) * rstd[r]);
            sg += g;
        }
        part[(2 * k) * C + c] = sgx;
        part[(2 * k + 1) * C + c] = sg;
    }
}

template <typename T>
__device__ void layernorm_bwd_params_final(const T* __restrict__ part, T* __restrict__ ggamma, T* __restrict__ gbeta,
                                           int nchunks, int C) {
    GRID_STRIDE(c, C) {
        T a = T(0), b = T(0);
        for (int k = 0; k < nchunks; ++k) {
            a += part[(2 * (i64)k) * C + c];
            b += part[(2 * (i64)k + 1) * C + c];
        }
        if (ggamma) ggamma[c] = a;
        if (gbeta) gbeta[c] = b;
    }
}

template <typename T>
__device__ void l2norm_fwd(const T* __restrict__ x, T* __restrict__ y, T* __restrict__ norm, int R, int C, T eps) {
    const int lane = lane_id();
    WARP_STRIDE(r, R) {
        const T* xr = x + r * C;
        T s = T(0);
        for (int c = lane; c < C; c += 32) s += xr[c] * xr[c];
        const T nr = g_sqrt(warp_sum(s));
        const T den = g_max(nr, eps);
        T* yr = y + r * C;
        for (int c = lane; c < C; c += 32) yr[c] = xr[c] / den;
        if (norm && lane == 0) norm[r] = nr;
    }
}

template <typename T>
__device__ void l2norm_bwd(const T* __restrict__ gy, const T* __restrict__ y, const T* __restrict__ norm,
                           T* __restrict__ gx, int R, int C, T eps) {
    const int lane = lane_id();
    WARP_STRIDE(r, R) {
        const T* gr = gy + r * C;
        const T* yr = y + r * C;
        T* o = gx + r * C;
        const T nr = norm[r];
        if (nr >= eps) {
            T s = T(0);
            for (int c = lane; c < C; c += 32) s += gr[c] * yr[c];
            const T dot = warp_sum(s);
            for (int c = lane; c < C; c += 32) o[c] = (gr[c] - yr[c] * dot) / nr;
        } else {
            for (int c = lane; c < C; c += 32) o[c] = gr[c] / eps;
        }
    }
}

template <typename T>
__device__ void softmax_fwd(const T* __restrict__ x, const T* __restrict__ valid, T* __restrict__ y, int R, int C,
                            int rows_per_mask, T scale) {
    const int lane = lane_id();
    WARP_STRIDE(r, R) {
        const T* xr = x + r * C;
        const T* vr = valid ? valid + (r / rows_per_mask) * C : nullptr;
        T m = g_neg_inf<T>();
        for (int c = lane; c < C; c += 32)
            if (!vr || vr[c] != T(0)) m = g_max(m, scale * xr[c]);
        m = warp_max(m);
        T s = T(0);
        for (int c = lane; c < C; c += 32)
            if (!vr || vr[c] != T(0)) s += g_exp(scale * xr[c] - m);
        s = warp_sum(s);
        T* yr = y + r * C;
        for (int c = lane; c < C; c += 32)
            yr[c] = ((!vr || vr[c] != T(0)) && s > T(0)) ? g_exp(scale * xr[c] - m) / s : T(0);
    }
}

template <typename T>
__device__ void softmax_bwd(const T* __restrict__ y, const T* __restrict__ gy, T* __restrict__ gx, int R, int C,
                            T scale) {
    const int lane = lane_id();
    WARP_STRIDE(r, R) {
        const T* yr = y + r * C;
        const T* gr = gy + r * C;
        T s = T(0);
        for (int c = lane; c < C; c += 32) s += gr[c] * yr[c];
        const T dot = warp_sum(s);
        T* o = gx + r * C;
        for (int c = lane; c < C; c += 32) o[c] = scale * yr[c] * (gr[c] - dot);
    }
}

#define NORM_INST(T, SUF)                                                                                         \
    extern "C" __global__ void layernorm_fwd_##SUF(const T* x, const T* gamma, const T* beta, T* y, T* mean,     \
                                                   T* rstd, int R, int C, T eps) {                               \
        layernorm_fwd<T>(x, gamma, beta, y, mean, rstd, R, C, eps);                                               \
    }                                                                                                             \
    extern "C" __global__ void layernorm_bwd_##SUF(const T* x, const T* gy, const T* gamma, const T* mean,       \
                                                   const T* rstd, T* gx, int R, int C) {                         \
        layernorm_bwd<T>(x, gy, gamma, mean, rstd, gx, R, C);                                                     \
    }                                                                                                             \
    extern "C" __global__ void layernorm_bwd_params_partial_##SUF(const T* x, const T* gy, const T* mean,        \
                                                                  const T* rstd, T* part, int R, int C,          \
                                                                  int rows_per_chunk) {                          \
        layernorm_bwd_params_partial<T>(x, gy, mean, rstd, part, R, C, rows_per_chunk);                           \
    }                                                                                                             \
    extern "C" __global__ void layernorm_bwd_params_final_##SUF(const T* part, T* ggamma, T* gbeta, int nchunks, \
                                                                int C) {                                         \
        layernorm_bwd_params_final<T>(part, ggamma, gbeta, nchunks, C);                                           \
    }                                                                                                             \
    extern "C" __global__ void l2norm_fwd_##SUF(const T* x, T* y, T* norm, int R, int C, T eps) {                \
        l2norm_fwd<T>(x, y, norm, R, C, eps);                                                                     \
    }                                                                                                             \
    extern "C" __global__ void l2norm_bwd_##SUF(const T* gy, const T* y, const T* norm, T* gx, int R, int C,     \
                                                T eps) {                                                          \
        l2norm_bwd<T>(gy, y, norm, gx, R, C, eps);                                                                \
    }                                                                                                             \
    extern "C" __global__ void softmax_fwd_##SUF(const T* x, const T* valid, T* y, int R, int C,               \
                                                 int rows_per_mask, T scale) {                                    \
        softmax_fwd<T>(x, valid, y, R, C, rows_per_mask, scale);                                                  \
    }                                                                                                             \
    extern "C" __global__ void softmax_bwd_##SUF(const T* y, const T* gy, T* gx, int R, int C, T scale) {        \
        softmax_bwd<T>(y, gy, gx, R, C, scale);                                                                   \
    }

NORM_INST(float, f32)
NORM_INST(double, f64)
