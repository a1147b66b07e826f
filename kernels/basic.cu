// basic.cu — the basic family (src/ops/basic.rs, DESIGN §3.6): binary ops with broadcasting, axpby/scale,
// fill, broadcast (backward of reductions), activations and the spike function (+ backward), and the
// deterministic reductions (sums / means; their backward is ew_broadcast). Matmul is cuBLAS.
//
// Flat kernels are grid-stride loops: block 256 (any), grid = min(ceil(n/256), 65535) (any grid >= 1 is
// correct). Skip launches with n == 0. T = float (_f32) / double (_f64).
//
// ew_binary_{f32,f64}(const T* a, const T* b, T* out, int n, int nb, int op)
//   out[i] = a[i] (op) b[i % nb]; nb = n (same shape), C (row broadcast [R,C] op [C]) or 1 (scalar).
//   op: 0 add, 1 sub, 2 mul, 3 div. out may alias a. Backward: ga = g (add/sub), g*b (mul);
//   gb = g / -g / g*a, reduced over rows with colsum (below) when nb < n.
// ew_axpby_{f32,f64}(const T* x, const T* y, T* out, int n, T alpha, T beta)
//   out[i] = alpha*x[i] + beta*y[i]; y nullable (then out = alpha*x: "scale"). out may alias x or y.
// ew_fill_{f32,f64}(T* out, int n, T value)
// ew_broadcast_{f32,f64}(const T* g, T* out, int n, int ng, int inner, T scale)
//   out[i] = scale * g[(i / inner) % ng]. Backward of sum_last over [R,C] (ng=R, inner=C), of
//   colsum (ng=C, inner=1), of sum_all (ng=1, inner=1); mean: scale = 1/count.
// act_fwd_{f32,f64}(const T* x, T* y, int n, int kind, T param)
// act_bwd_{f32,f64}(const T* x, const T* gy, T* gx, int n, int kind, T param)   (x = forward input)
//   kind 0 ReLU; 1 ELU(alpha=param): x>0 ? x : param*expm1(x); 2 GELU exact (erf form);
//   3 LeakyReLU(slope=param); 4 sigmoid; 5 tanh; 6 exp. Derivative at 0 is the x<=0 branch (as PyTorch).
// spike_fwd_{f32,f64}(const T* x, T* y, int n, int surrogate, T alpha, int smooth)
//   y = x >= 0 ? 1 : 0, or (smooth) the surrogate's primitive (common.cuh surrogate_primitive).
// spike_bwd_{f32,f64}(const T* x, const T* gy, T* gx, int n, int surrogate, T alpha)
//   gx = gy * surrogate_grad(surrogate, alpha, x).
// sum_last_{f32,f64}(const T* x, T* out, int R, int C, T scale)
//   out[r] = scale * sum_c x[r,c]  (mean: scale = 1/C). Warp per row: block 256 (multiple of 32),
//   grid = ceil(R*32/256) (any). Skip when R == 0 (C == 0 gives 0).
// colsum_partial_{f32,f64}(const T* x, T* part, int R, int C, int rows_per_chunk)
//   Sum over rows (axis 0) of x [R,C], stage 1: grid = (ceil(C/256), nchunks), nchunks =
//   ceil(R/rows_per_chunk) <= 65535, block 256 (grid.x is grid-strided, any >= 1).
//   part[chunk*C + c] = sum_{r in chunk} x[r,c] (increasing r). Recommended rows_per_chunk =
//   max(64, ceil(R/1024)); same R -> same rows_per_chunk (bit reproducibility).
// colsum_final_{f32,f64}(const T* part, T* out, int nchunks, int C, T scale)
//   out[c] = scale * sum_{k<nchunks} part[k*C + c] (k order). Flat over C, block 256, grid any.
//   Used for bias gradients, broadcast-binary backward, mean over time ([T, N*C] -> [N*C]).
//   R == 0: skip both, fill out with 0.
// sum_all_partial_{f32,f64}(const T* x, const T* y, T* part, int n)
//   part[blockIdx.x] = sum_i x[i] (y == nullptr) or sum_i x[i]*y[i] (dot product), grid-stride in
//   a fixed order. grid = G (any >= 1, e.g. min(ceil(n/2048), 1024); same n -> same G), block 256
//   (multiple of 32). n == 0 is fine (partials = 0).
// sum_all_final_{f32,f64}(const T* part, T* out, int G, T scale)
//   out[0] = scale * sum of the G partials (fixed order). grid 1, block 256.
#include "common.cuh"

__device__ __forceinline__ float g_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double g_tanh(double x) { return tanh(x); }

template <typename T> __device__ void ew_binary(const T* a, const T* b, T* out, int n, int nb, int op) {
    GRID_STRIDE(i, n) {
        const T x = a[i], y = b[nb == n ? i : i % nb];
        T r;
        switch (op) {
            case 0: r = x + y; break;
            case 1: r = x - y; break;
            case 2: r = x * y; break;
            default: r = x / y; break;
        }
        out[i] = r;
    }
}

template <typename T> __device__ void ew_axpby(const T* x, const T* y, T* out, int n, T alpha, T beta) {
    GRID_STRIDE(i, n) out[i] = y ? alpha * x[i] + beta * y[i] : alpha * x[i];
}

template <typename T> __device__ void ew_fill(T* __restrict__ out, int n, T v) {
    GRID_STRIDE(i, n) out[i] = v;
}

template <typename T>
__device__ void ew_broadcast(const T* __restrict__ g, T* __restrict__ out, int n, int ng, int inner, T scale) {
    GRID_STRIDE(i, n) out[i] = scale * g[(i / inner) % ng];
}

template <typename T> __device__ __forceinline__ T act_f(int kind, T x, T p) {
    switch (kind) {
        case 0: return x > T(0) ? x : T(0);
        case 1: return x > T(0) ? x : p * g_expm1(x);
        case 2: return T(0.5) * x * (T(1) + g_erf(x * T(0.70710678118654752440)));
        case 3: return x > T(0) ? x : p * x;
        case 4: return T(1) / (T(1) + g_exp(-x));
        case 5: return g_tanh(x);
        default: return g_exp(x);
    }
}
template <typename T> __device__ __forceinline__ T act_df(int kind, T x, T p) {
    switch (kind) {
        case 0: return x > T(0) ? T(1) : T(0);
        case 1: return x > T(0) ? T(1) : p * g_exp(x);
        case 2: {
            const T cdf = T(0.5) * (T(1) + g_erf(x * T(0.70710678118654752440)));
            const T pdf = g_exp(T(-0.5) * x * x) * T(0.39894228040143267794);
            return cdf + x * pdf;
        }
        case 3: return x > T(0) ? T(1) : p;
        case 4: { const T s = T(1) / (T(1) + g_exp(-x)); return s * (T(1) - s); }
        case 5: { const T t = g_tanh(x); return T(1) - t * t; }
        default: return g_exp(x);
    }
}

template <typename T>
__device__ void spike_fwd(const T* __restrict__ x, T* __restrict__ y, int n, int surrogate, T alpha, int smooth) {
    GRID_STRIDE(i, n) y[i] = smooth ? surrogate_primitive(surrogate, alpha, x[i]) : (x[i] >= T(0) ? T(1) : T(0));
}
template <typename T>
__device__ void spike_bwd(const T* __restrict__ x, const T* __restrict__ gy, T* __restrict__ gx, int n, int surrogate,
                          T alpha) {
    GRID_STRIDE(i, n) gx[i] = gy[i] * surrogate_grad(surrogate, alpha, x[i]);
}

template <typename T> __device__ void act_fwd(const T* __restrict__ x, T* __restrict__ y, int n, int kind, T p) {
    GRID_STRIDE(i, n) y[i] = act_f(kind, x[i], p);
}
template <typename T>
__device__ void act_bwd(const T* __restrict__ x, const T* __restrict__ gy, T* __restrict__ gx, int n, int kind, T p) {
    GRID_STRIDE(i, n) gx[i] = gy[i] * act_df(kind, x[i], p);
}


template <typename T> __device__ void sum_last(const T* __restrict__ x, T* __restrict__ out, int R, int C, T scale) {
    const int lane = lane_id();
    WARP_STRIDE(r, R) {
        const T* xr = x + r * C;
        T acc = T(0);
        for (int c = lane; c < C; c += 32) acc += xr[c];
        acc = warp_sum(acc);
        if (lane == 0) out[r] = scale * acc;
    }
}

template <typename T>
__device__ void colsum_partial(const T* __restrict__ x, T* __restrict__ part, int R, int C, int rows_per_chunk) {
    const i64 r0 = (i64)blockIdx.y * rows_per_chunk;
    const i64 r1 = r0 + rows_per_chunk < R ? r0 + rows_per_chunk : R;
    for (i64 c = gtid(); c < C; c += gstride()) {
        T acc = T(0);
        for (i64 r = r0; r < r1; ++r) acc += x[r * C + c];
        part[(i64)blockIdx.y * C + c] = acc;
    }
}

template <typename T>
__device__ void colsum_final(const T* __restrict__ part, T* __restrict__ out, int nchunks, int C, T scale) {
    GRID_STRIDE(c, C) {
        T acc = T(0);
        for (int k = 0; k < nchunks; ++k) acc += part[(i64)k * C + c];
        out[c] = scale * acc;
    }
}

template <typename T>
__device__ void sum_all_partial(const T* __restrict__ x, const T* __restrict__ y, T* __restrict__ part, int n) {
    T acc = T(0);
    if (y) { GRID_STRIDE(i, n) acc += x[i] * y[i]; }
    else { GRID_STRIDE(i, n) acc += x[i]; }
    acc = block_sum(acc);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

template <typename T> __device__ void sum_all_final(const T* __restrict__ part, T* __restrict__ out, int G, T scale) {
    T acc = T(0);
    for (int i = threadIdx.x; i < G; i += blockDim.x) acc += part[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) out[0] = scale * acc;
}

#define RED_INST(T, SUF)                                                                                         \
    extern "C" __global__ void sum_last_##SUF(const T* x, T* out, int R, int C, T scale) {                      \
        sum_last<T>(x, out, R, C, scale);                                                                        \
    }                                                                                                            \
    extern "C" __global__ void colsum_partial_##SUF(const T* x, T* part, int R, int C, int rows_per_chunk) {    \
        colsum_partial<T>(x, part, R, C, rows_per_chunk);                                                        \
    }                                                                                                            \
    extern "C" __global__ void colsum_final_##SUF(const T* part, T* out, int nchunks, int C, T scale) {         \
        colsum_final<T>(part, out, nchunks, C, scale);                                                           \
    }                                                                                                            \
    extern "C" __global__ void sum_all_partial_##SUF(const T* x, const T* y, T* part, int n) {                  \
        sum_all_partial<T>(x, y, part, n);                                                                       \
    }                                                                                                            \
    extern "C" __global__ void sum_all_final_##SUF(const T* part, T* out, int G, T scale) {                     \
        sum_all_final<T>(part, out, G, scale);                                                                   \
    }

RED_INST(float, f32)
RED_INST(double, f64)


#define BASIC_INST(T, SUF)                                                                                           \
    extern "C" __global__ void ew_binary_##SUF(const T* a, const T* b, T* out, int n, int nb, int op) {              \
        ew_binary<T>(a, b, out, n, nb, op);                                                                          \
    }                                                                                                                \
    extern "C" __global__ void ew_axpby_##SUF(const T* x, const T* y, T* out, int n, T alpha, T beta) {              \
        ew_axpby<T>(x, y, out, n, alpha, beta);                                                                      \
    }                                                                                                                \
    extern "C" __global__ void ew_fill_##SUF(T* out, int n, T value) { ew_fill<T>(out, n, value); }                  \
    extern "C" __global__ void ew_broadcast_##SUF(const T* g, T* out, int n, int ng, int inner, T scale) {           \
        ew_broadcast<T>(g, out, n, ng, inner, scale);                                                                \
    }                                                                                                                \
    extern "C" __global__ void act_fwd_##SUF(const T* x, T* y, int n, int kind, T param) {                           \
        act_fwd<T>(x, y, n, kind, param);                                                                            \
    }                                                                                                                \
    extern "C" __global__ void act_bwd_##SUF(const T* x, const T* gy, T* gx, int n, int kind, T param) {             \
        act_bwd<T>(x, gy, gx, n, kind, param);                                                                       \
    }                                                                                                                \
    extern "C" __global__ void spike_fwd_##SUF(const T* x, T* y, int n, int surrogate, T alpha, int smooth) {        \
        spike_fwd<T>(x, y, n, surrogate, alpha, smooth);                                                             \
    }                                                                                                                \
    extern "C" __global__ void spike_bwd_##SUF(const T* x, const T* gy, T* gx, int n, int surrogate, T alpha) {      \
        spike_bwd<T>(x, gy, gx, n, surrogate, alpha);                                                                \
    }

BASIC_INST(float, f32)
BASIC_INST(double, f64)
