// elementwise.cu — small flat kernels (DESIGN §3.6): binary ops with broadcasting, axpby/scale, fill,
// broadcast (backward of reductions), activations (+ backward), dropout, strided column copy
// (concat / slice), embedding gather (+ deterministic backward).
//
// All kernels here are flat grid-stride loops: block 256 (any), grid = min(ceil(n/256), 65535) (any
// grid >= 1 is correct). Skip launches with n == 0. T = float (_f32) / double (_f64).
//
// ew_binary_{f32,f64}(const T* a, const T* b, T* out, int n, int nb, int op)
//   out[i] = a[i] (op) b[i % nb]; nb = n (same shape), C (row broadcast [R,C] op [C]) or 1 (scalar).
//   op: 0 add, 1 sub, 2 mul, 3 div. out may alias a. Backward: ga = g (add/sub), g*b (mul);
//   gb = g / -g / g*a, reduced over rows with reduce.cu colsum when nb < n.
// ew_axpby_{f32,f64}(const T* x, const T* y, T* out, int n, T alpha, T beta)
//   out[i] = alpha*x[i] + beta*y[i]; y nullable (then out = alpha*x: "scale"). out may alias x or y.
// ew_scale_dev_{f32,f64}(const T* x, const T* s, T* out, int n)
//   out[i] = s[0] * x[i] with s a device scalar (e.g. the learned fusion ratio r).
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
// dropout_{f32,f64}(const T* x, T* y, int n, T p, unsigned long long seed, unsigned long long offset)
//   y[i] = keep_i ? x[i] / (1 - p) : 0. The backward is the SAME kernel applied to gy with the same
//   (p, seed, offset). Mask (bit-exact on CPU too, all arithmetic on u64 with wrap-around):
//     fmix(z) = { z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB;
//                 z ^= z >> 31; return z; }
//     bits = fmix(seed ^ fmix(offset + i + 0x9E3779B97F4A7C15));  u = (bits >> 40) * 2^-24 in [0,1)
//     keep_i = (T)u >= p.   (Advance offset by n per call for fresh masks.)  p >= 1 -> y = 0.
// dropout_hash_{f32,f64}(const T* x, T* y, int n, const int* seed, unsigned int thr, T scale)
//   The mask of Op::Dropout, bit-identical to the CPU backend (crate::util::rng):
//     s = (u64)(u32)seed[0] (device scalar: no host read);  h = fmix(s ^ fmix(i)) >> 40  (24 bits)
//     y[i] = h >= thr ? x[i] * scale : 0,   thr = ceil(p * 2^24) clamped to [0, 2^24],
//     scale = (T)(1 / (1 - p)) computed by the host in f64. Backward: the same call on gy.
// permute_b4 / permute_b8(const T* x, T* y, long long n, PermMeta meta)   (T = 4- / 8-byte words)
//   y[o] = x[sum_a o_a * meta.stride[a]] with o the multi-index of flat o over meta.dims (rank
//   meta.rank <= 6; stride[a] = input stride of the input axis perm[a]). Any dtype of that size.
//   PermMeta = { int rank; int dims[6]; long long stride[6]; } passed by value.
// copy_cols_i32: copy_cols for int32 (index tensors); same arguments (accumulate must be 0).
// copy_cols_{f32,f64}(const T* src, T* dst, int R, int W, int src_ld, int src_off, int dst_ld,
//                     int dst_off, int accumulate)
//   for r < R, j < W: dst[r*dst_ld + dst_off + j] (+)= src[r*src_ld + src_off + j]  (flat over R*W).
//   Concat along the last axis = one call per input; slice = one call; their backward swaps roles.
// embed_fwd_{f32,f64}(const T* Wt, const int* ids, T* out, int n, int D, int V)
//   out[i,:] = Wt[ids[i],:] (ids outside [0,V) -> 0 row). Flat over n*D.
// embed_bwd_{f32,f64}(const T* gOut, const int* perm, const int* vptr, T* gW, int V, int D)
//   Deterministic scatter by a host-built CSR of positions per vocabulary row: positions with id v are
//   perm[vptr[v] .. vptr[v+1]] (vptr [V+1]; perm = positions stably sorted by id; out-of-range ids
//   omitted). gW[v,d] = sum over those positions of gOut[pos,d] (every row written, 0 if unused).
//   Flat over V*D.
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

template <typename T> __device__ void ew_scale_dev(const T* x, const T* __restrict__ s, T* out, int n) {
    const T sv = *s;
    GRID_STRIDE(i, n) out[i] = sv * x[i];
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

__device__ __forceinline__ u64 fmix64(u64 z) {
    z ^= z >> 30; z *= 0xBF58476D1CE4E5B9ULL;
    z ^= z >> 27; z *= 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return z;
}

template <typename T> __device__ void dropout(const T* x, T* y, int n, T p, u64 seed, u64 offset) {
    const T scale = p < T(1) ? T(1) / (T(1) - p) : T(0);
    GRID_STRIDE(i, n) {
        const u64 bits = fmix64(seed ^ fmix64(offset + (u64)i + 0x9E3779B97F4A7C15ULL));
        const T u = (T)((float)(bits >> 40) * 5.9604644775390625e-8f);  // * 2^-24, exact
        y[i] = (u >= p && p < T(1)) ? x[i] * scale : T(0);
    }
}

template <typename T>
__device__ void dropout_hash(const T* __restrict__ x, T* __restrict__ y, int n, const int* __restrict__ seed,
                             unsigned int thr, T scale) {
    const u64 s = (u64)(unsigned int)seed[0];
    GRID_STRIDE(i, n) {
        const unsigned int h = (unsigned int)(fmix64(s ^ fmix64((u64)i)) >> 40);
        y[i] = h >= thr ? x[i] * scale : T(0);
    }
}

struct PermMeta {
    int rank;
    int dims[6];
    long long stride[6];
};

template <typename W> __device__ void permute_words(const W* __restrict__ x, W* __restrict__ y, i64 n, PermMeta m) {
    for (i64 o = gtid(); o < n; o += gstride()) {
        i64 rem = o, src = 0;
#pragma unroll
        for (int a = 5; a >= 0; --a) {  // constant indices: the params stay out of local memory
            if (a < m.rank) {
                const i64 d = m.dims[a];
                src += (rem % d) * m.stride[a];
                rem /= d;
            }
        }
        y[o] = x[src];
    }
}
extern "C" __global__ void permute_b4(const unsigned int* x, unsigned int* y, long long n, PermMeta m) {
    permute_words<unsigned int>(x, y, n, m);
}
extern "C" __global__ void permute_b8(const u64* x, u64* y, long long n, PermMeta m) { permute_words<u64>(x, y, n, m); }

template <typename T>
__device__ void copy_cols(const T* __restrict__ src, T* __restrict__ dst, int R, int W, int src_ld, int src_off,
                          int dst_ld, int dst_off, int accumulate) {
    GRID_STRIDE(i, (i64)R * W) {
        const i64 r = i / W, j = i % W;
        const T v = src[r * src_ld + src_off + j];
        T* d = dst + r * dst_ld + dst_off + j;
        *d = accumulate ? *d + v : v;
    }
}

template <typename T>
__device__ void embed_fwd(const T* __restrict__ Wt, const int* __restrict__ ids, T* __restrict__ out, int n, int D,
                          int V) {
    GRID_STRIDE(i, (i64)n * D) {
        const i64 r = i / D, d = i % D;
        const int id = ids[r];
        out[i] = (id >= 0 && id < V) ? Wt[(i64)id * D + d] : T(0);
    }
}

template <typename T>
__device__ void embed_bwd(const T* __restrict__ gOut, const int* __restrict__ perm, const int* __restrict__ vptr,
                          T* __restrict__ gW, int V, int D) {
    GRID_STRIDE(i, (i64)V * D) {
        const int v = (int)(i / D), d = (int)(i % D);
        T acc = T(0);
        for (int q = vptr[v]; q < vptr[v + 1]; ++q) acc += gOut[(i64)perm[q] * D + d];
        gW[i] = acc;
    }
}

#define EW_INST(T, SUF)                                                                                            \
    extern "C" __global__ void ew_binary_##SUF(const T* a, const T* b, T* out, int n, int nb, int op) {           \
        ew_binary<T>(a, b, out, n, nb, op);                                                                        \
    }                                                                                                              \
    extern "C" __global__ void ew_axpby_##SUF(const T* x, const T* y, T* out, int n, T alpha, T beta) {           \
        ew_axpby<T>(x, y, out, n, alpha, beta);                                                                    \
    }                                                                                                              \
    extern "C" __global__ void ew_scale_dev_##SUF(const T* x, const T* s, T* out, int n) {                        \
        ew_scale_dev<T>(x, s, out, n);                                                                             \
    }                                                                                                              \
    extern "C" __global__ void ew_fill_##SUF(T* out, int n, T value) { ew_fill<T>(out, n, value); }               \
    extern "C" __global__ void ew_broadcast_##SUF(const T* g, T* out, int n, int ng, int inner, T scale) {        \
        ew_broadcast<T>(g, out, n, ng, inner, scale);                                                              \
    }                                                                                                              \
    extern "C" __global__ void act_fwd_##SUF(const T* x, T* y, int n, int kind, T param) {                        \
        act_fwd<T>(x, y, n, kind, param);                                                                          \
    }                                                                                                              \
    extern "C" __global__ void act_bwd_##SUF(const T* x, const T* gy, T* gx, int n, int kind, T param) {          \
        act_bwd<T>(x, gy, gx, n, kind, param);                                                                     \
    }                                                                                                              \
    extern "C" __global__ void spike_fwd_##SUF(const T* x, T* y, int n, int surrogate, T alpha, int smooth) {    \
        spike_fwd<T>(x, y, n, surrogate, alpha, smooth);                                                           \
    }                                                                                                              \
    extern "C" __global__ void spike_bwd_##SUF(const T* x, const T* gy, T* gx, int n, int surrogate, T alpha) {   \
        spike_bwd<T>(x, gy, gx, n, surrogate, alpha);                                                              \
    }                                                                                                              \
    extern "C" __global__ void dropout_hash_##SUF(const T* x, T* y, int n, const int* seed, unsigned int thr,      \
                                                  T scale) {                                                       \
        dropout_hash<T>(x, y, n, seed, thr, scale);                                                                \
    }                                                                                                              \
    extern "C" __global__ void dropout_##SUF(const T* x, T* y, int n, T p, unsigned long long seed,               \
                                             unsigned long long offset) {                                          \
        dropout<T>(x, y, n, p, seed, offset);                                                                      \
    }                                                                                                              \
    extern "C" __global__ void copy_cols_##SUF(const T* src, T* dst, int R, int W, int src_ld, int src_off,       \
                                               int dst_ld, int dst_off, int accumulate) {                          \
        copy_cols<T>(src, dst, R, W, src_ld, src_off, dst_ld, dst_off, accumulate);                                \
    }                                                                                                              \
    extern "C" __global__ void embed_fwd_##SUF(const T* Wt, const int* ids, T* out, int n, int D, int V) {        \
        embed_fwd<T>(Wt, ids, out, n, D, V);                                                                       \
    }                                                                                                              \
    extern "C" __global__ void embed_bwd_##SUF(const T* gOut, const int* perm, const int* vptr, T* gW, int V,     \
                                               int D) {                                                            \
        embed_bwd<T>(gOut, perm, vptr, gW, V, D);                                                                  \
    }

EW_INST(float, f32)
EW_INST(double, f64)

extern "C" __global__ void copy_cols_i32(const int* src, int* dst, int R, int W, int src_ld, int src_off, int dst_ld,
                                         int dst_off, int accumulate) {
    copy_cols<int>(src, dst, R, W, src_ld, src_off, dst_ld, dst_off, accumulate);
}
