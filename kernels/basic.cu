// basic.cu — the basic family (src/ops/basic.rs, DESIGN §3.6): binary ops with broadcasting, axpby/scale,
// fill, broadcast (backward of reductions), activations and the spike function (+ backward), and the
// deterministic reductions (sums / means; their backward is ew_broadcast), and the casts between float
// types. Matmul is cuBLAS (GemmEx with f32 accumulation for bf16 / f16).
//
// Flat kernels are grid-stride loops: block 256 (any), grid = min(ceil(n/256), 65535) (any grid >= 1 is
// correct). Skip launches with n == 0. Storage S = float (_f32), double (_f64), bf16s (_bf16), f16s (_f16);
// T = Acc<S>::T (double for _f64, float for the others) is the arithmetic, the scalars' type and
// the type of the reductions' partials (`part`, scratch).
//
// ew_binary_*(const S* a, const S* b, S* out, int n, int nb, int op)
//   out[i] = a[i] (op) b[i % nb]; nb = n (same shape), C (row broadcast [R,C] op [C]) or 1 (scalar).
//   op: 0 add, 1 sub, 2 mul, 3 div. out may alias a. Backward: ga = g (add/sub), g*b (mul);
//   gb = g / -g / g*a, reduced over rows with colsum (below) when nb < n.
// ew_axpby_*(const S* x, const S* y, S* out, int n, T alpha, T beta)
//   out[i] = alpha*x[i] + beta*y[i]; y nullable (then out = alpha*x: "scale"). out may alias x or y.
// ew_fill_*(S* out, int n, T value)
// ew_broadcast_*(const S* g, S* out, int n, int ng, int inner, T scale)
//   out[i] = scale * g[(i / inner) % ng]. Backward of sum_last over [R,C] (ng=R, inner=C), of
//   colsum (ng=C, inner=1), of sum_all (ng=1, inner=1); mean: scale = 1/count.
// act_fwd_*(const S* x, S* y, int n, int kind, T param)
// act_bwd_*(const S* x, const S* gy, S* gx, int n, int kind, T param)   (x = forward input)
//   kind 0 ReLU; 1 ELU(alpha=param): x>0 ? x : param*expm1(x); 2 GELU exact (erf form);
//   3 LeakyReLU(slope=param); 6 exp. Derivative at 0 is the x<=0 branch (as PyTorch).
// spike_fwd_*(const S* x, S* y, int n, int surrogate, T alpha, int smooth)
//   y = x >= 0 ? 1 : 0, or (smooth) the surrogate's primitive (common.cuh surrogate_primitive).
// spike_bwd_*(const S* x, const S* gy, S* gx, int n, int surrogate, T alpha)
//   gx = gy * surrogate_grad(surrogate, alpha, x).
// sum_last_*(const S* x, S* out, int R, int C, T scale)
//   out[r] = scale * sum_c x[r,c]  (mean: scale = 1/C). Warp per row: block 256 (multiple of 32),
//   grid = ceil(R*32/256) (any). Skip when R == 0 (C == 0 gives 0).
// colsum_partial_*(const S* x, T* part, int R, int C, int rows_per_chunk)
//   Sum over rows (axis 0) of x [R,C], stage 1: grid = (ceil(C/256), nchunks), nchunks =
//   ceil(R/rows_per_chunk) <= 65535, block 256 (grid.x is grid-strided, any >= 1).
//   part[chunk*C + c] = sum_{r in chunk} x[r,c] (increasing r). Recommended rows_per_chunk =
//   max(64, ceil(R/1024)); same R -> same rows_per_chunk (bit reproducibility).
// colsum_final_*(const T* part, S* out, int nchunks, int C, T scale)
//   out[c] = scale * sum_{k<nchunks} part[k*C + c] (k order). Flat over C, block 256, grid any.
//   Used for bias gradients, broadcast-binary backward, mean over time ([T, N*C] -> [N*C]).
//   R == 0: skip both, fill out with 0.
// sum_all_partial_*(const S* x, const S* y, T* part, int n)
//   part[blockIdx.x] = sum_i x[i] (y == nullptr) or sum_i x[i]*y[i] (dot product), grid-stride in
//   a fixed order. grid = G (any >= 1, e.g. min(ceil(n/2048), 1024); same n -> same G), block 256
//   (multiple of 32). n == 0 is fine (partials = 0).
// sum_all_final_*(const T* part, S* out, int G, T scale)
//   out[0] = scale * sum of the G partials (fixed order). grid 1, block 256.
// cast_<from>_<to>(const From* x, To* y, int n), from in {f32, f64, bf16, f16, u8}, to in {f32, f64, bf16, f16}
//   y[i] = x[i] rounded once to To (Op::Cast; the CUDA backend's f32 copies of half data).
#include "common.cuh"


template <typename S> __device__ void ew_binary(const S* a, const S* b, S* out, int n, int nb, int op) {
    typedef typename Acc<S>::T T;
    GRID_STRIDE(i, n) {
        const T x = widen(a[i]), y = widen(b[nb == n ? i : i % nb]);
        T r;
        switch (op) {
            case 0: r = x + y; break;
            case 1: r = x - y; break;
            case 2: r = x * y; break;
            default: r = x / y; break;
        }
        out[i] = narrow<S>(r);
    }
}

template <typename S>
__device__ void ew_axpby(const S* x, const S* y, S* out, int n, typename Acc<S>::T alpha, typename Acc<S>::T beta) {
    GRID_STRIDE(i, n) out[i] = narrow<S>(y ? alpha * widen(x[i]) + beta * widen(y[i]) : alpha * widen(x[i]));
}

template <typename S> __device__ void ew_fill(S* __restrict__ out, int n, typename Acc<S>::T v) {
    const S w = narrow<S>(v);
    GRID_STRIDE(i, n) out[i] = w;
}

template <typename S>
__device__ void ew_broadcast(const S* __restrict__ g, S* __restrict__ out, int n, int ng, int inner,
                             typename Acc<S>::T scale) {
    GRID_STRIDE(i, n) out[i] = narrow<S>(scale * widen(g[(i / inner) % ng]));
}

template <typename T> __device__ __forceinline__ T act_f(int kind, T x, T p) {
    switch (kind) {
        case 0: return x > T(0) ? x : T(0);
        case 1: return x > T(0) ? x : p * g_expm1(x);
        case 2: return T(0.5) * x * (T(1) + g_erf(x * T(0.70710678118654752440)));
        case 3: return x > T(0) ? x : p * x;
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
        default: return g_exp(x);
    }
}

template <typename S>
__device__ void spike_fwd(const S* __restrict__ x, S* __restrict__ y, int n, int surrogate, typename Acc<S>::T alpha,
                          int smooth) {
    typedef typename Acc<S>::T T;
    GRID_STRIDE(i, n) {
        const T v = widen(x[i]);
        y[i] = narrow<S>(smooth ? surrogate_primitive(surrogate, alpha, v) : (v >= T(0) ? T(1) : T(0)));
    }
}
template <typename S>
__device__ void spike_bwd(const S* __restrict__ x, const S* __restrict__ gy, S* __restrict__ gx, int n, int surrogate,
                          typename Acc<S>::T alpha) {
    GRID_STRIDE(i, n) gx[i] = narrow<S>(widen(gy[i]) * surrogate_grad(surrogate, alpha, widen(x[i])));
}

template <typename S>
__device__ void act_fwd(const S* __restrict__ x, S* __restrict__ y, int n, int kind, typename Acc<S>::T p) {
    GRID_STRIDE(i, n) y[i] = narrow<S>(act_f(kind, widen(x[i]), p));
}
template <typename S>
__device__ void act_bwd(const S* __restrict__ x, const S* __restrict__ gy, S* __restrict__ gx, int n, int kind,
                        typename Acc<S>::T p) {
    GRID_STRIDE(i, n) gx[i] = narrow<S>(widen(gy[i]) * act_df(kind, widen(x[i]), p));
}

// The reductions accumulate in T = Acc<S>::T; their partials (scratch) are T, whatever S is.
template <typename S>
__device__ void sum_last(const S* __restrict__ x, S* __restrict__ out, int R, int C, typename Acc<S>::T scale) {
    typedef typename Acc<S>::T T;
    const int lane = lane_id();
    WARP_STRIDE(r, R) {
        const S* xr = x + r * C;
        T acc = T(0);
        for (int c = lane; c < C; c += 32) acc += widen(xr[c]);
        acc = warp_sum(acc);
        if (lane == 0) out[r] = narrow<S>(scale * acc);
    }
}

template <typename S>
__device__ void colsum_partial(const S* __restrict__ x, typename Acc<S>::T* __restrict__ part, int R, int C,
                               int rows_per_chunk) {
    typedef typename Acc<S>::T T;
    const i64 r0 = (i64)blockIdx.y * rows_per_chunk;
    const i64 r1 = r0 + rows_per_chunk < R ? r0 + rows_per_chunk : R;
    for (i64 c = gtid(); c < C; c += gstride()) {
        T acc = T(0);
        for (i64 r = r0; r < r1; ++r) acc += widen(x[r * C + c]);
        part[(i64)blockIdx.y * C + c] = acc;
    }
}

template <typename S>
__device__ void colsum_final(const typename Acc<S>::T* __restrict__ part, S* __restrict__ out, int nchunks, int C,
                             typename Acc<S>::T scale) {
    typedef typename Acc<S>::T T;
    GRID_STRIDE(c, C) {
        T acc = T(0);
        for (int k = 0; k < nchunks; ++k) acc += part[(i64)k * C + c];
        out[c] = narrow<S>(scale * acc);
    }
}

template <typename S>
__device__ void sum_all_partial(const S* __restrict__ x, const S* __restrict__ y, typename Acc<S>::T* __restrict__ part,
                                int n) {
    typedef typename Acc<S>::T T;
    T acc = T(0);
    if (y) { GRID_STRIDE(i, n) acc += widen(x[i]) * widen(y[i]); }
    else { GRID_STRIDE(i, n) acc += widen(x[i]); }
    acc = block_sum(acc);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

template <typename S>
__device__ void sum_all_final(const typename Acc<S>::T* __restrict__ part, S* __restrict__ out, int G,
                              typename Acc<S>::T scale) {
    typedef typename Acc<S>::T T;
    T acc = T(0);
    for (int i = threadIdx.x; i < G; i += blockDim.x) acc += part[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) out[0] = narrow<S>(scale * acc);
}

// Instantiations: S is the storage type, T = Acc<S>::T the type of scalars and partials.
#define RED_INST(S, SUF)                                                                                         \
    typedef Acc<S>::T T_##SUF;                                                                                   \
    extern "C" __global__ void sum_last_##SUF(const S* x, S* out, int R, int C, T_##SUF scale) {                \
        sum_last<S>(x, out, R, C, scale);                                                                        \
    }                                                                                                            \
    extern "C" __global__ void colsum_partial_##SUF(const S* x, T_##SUF* part, int R, int C,                    \
                                                    int rows_per_chunk) {                                        \
        colsum_partial<S>(x, part, R, C, rows_per_chunk);                                                        \
    }                                                                                                            \
    extern "C" __global__ void colsum_final_##SUF(const T_##SUF* part, S* out, int nchunks, int C,              \
                                                  T_##SUF scale) {                                               \
        colsum_final<S>(part, out, nchunks, C, scale);                                                           \
    }                                                                                                            \
    extern "C" __global__ void sum_all_partial_##SUF(const S* x, const S* y, T_##SUF* part, int n) {            \
        sum_all_partial<S>(x, y, part, n);                                                                       \
    }                                                                                                            \
    extern "C" __global__ void sum_all_final_##SUF(const T_##SUF* part, S* out, int G, T_##SUF scale) {         \
        sum_all_final<S>(part, out, G, scale);                                                                   \
    }

#define BASIC_INST(S, SUF)                                                                                           \
    extern "C" __global__ void ew_binary_##SUF(const S* a, const S* b, S* out, int n, int nb, int op) {              \
        ew_binary<S>(a, b, out, n, nb, op);                                                                          \
    }                                                                                                                \
    extern "C" __global__ void ew_axpby_##SUF(const S* x, const S* y, S* out, int n, T_##SUF alpha,                  \
                                              T_##SUF beta) {                                                        \
        ew_axpby<S>(x, y, out, n, alpha, beta);                                                                      \
    }                                                                                                                \
    extern "C" __global__ void ew_fill_##SUF(S* out, int n, T_##SUF value) { ew_fill<S>(out, n, value); }            \
    extern "C" __global__ void ew_broadcast_##SUF(const S* g, S* out, int n, int ng, int inner, T_##SUF scale) {     \
        ew_broadcast<S>(g, out, n, ng, inner, scale);                                                                \
    }                                                                                                                \
    extern "C" __global__ void act_fwd_##SUF(const S* x, S* y, int n, int kind, T_##SUF param) {                     \
        act_fwd<S>(x, y, n, kind, param);                                                                            \
    }                                                                                                                \
    extern "C" __global__ void act_bwd_##SUF(const S* x, const S* gy, S* gx, int n, int kind, T_##SUF param) {       \
        act_bwd<S>(x, gy, gx, n, kind, param);                                                                       \
    }                                                                                                                \
    extern "C" __global__ void spike_fwd_##SUF(const S* x, S* y, int n, int surrogate, T_##SUF alpha, int smooth) {  \
        spike_fwd<S>(x, y, n, surrogate, alpha, smooth);                                                             \
    }                                                                                                                \
    extern "C" __global__ void spike_bwd_##SUF(const S* x, const S* gy, S* gx, int n, int surrogate,                 \
                                               T_##SUF alpha) {                                                      \
        spike_bwd<S>(x, gy, gx, n, surrogate, alpha);                                                                \
    }

RED_INST(float, f32)
RED_INST(double, f64)
RED_INST(bf16s, bf16)
RED_INST(f16s, f16)
BASIC_INST(float, f32)
BASIC_INST(double, f64)
BASIC_INST(bf16s, bf16)
BASIC_INST(f16s, f16)

// cast_<from>_<to>(const From* x, To* y, int n): y[i] = x[i] rounded once to To (Op::Cast). Flat,
// block 256, grid any; skip n == 0. f64 -> bf16 / f16 round once (through f32 rounded to odd).
template <typename A, typename B> __device__ void cast(const A* __restrict__ x, B* __restrict__ y, int n) {
    GRID_STRIDE(i, n) y[i] = narrow<B>(widen(x[i]));
}
#define CAST_INST(A, SA, B, SB) \
    extern "C" __global__ void cast_##SA##_##SB(const A* x, B* y, int n) { cast<A, B>(x, y, n); }
#define CAST_FROM(A, SA)               \
    CAST_INST(A, SA, float, f32)       \
    CAST_INST(A, SA, double, f64)      \
    CAST_INST(A, SA, bf16s, bf16)      \
    CAST_INST(A, SA, f16s, f16)
CAST_FROM(float, f32)
CAST_FROM(double, f64)
CAST_FROM(bf16s, bf16)
CAST_FROM(f16s, f16)
CAST_FROM(u8s, u8)  // u8 spikes to the float types (exact); nothing casts to u8
