// layout.cu — the layout family (src/ops/layout.rs, DESIGN §3.6): dropout, permute, strided column copy
// (concat / slice), embedding gather (+ deterministic backward).
//
// Flat kernels are grid-stride loops: block 256 (any), grid = min(ceil(n/256), 65535) (any grid >= 1 is
// correct). Skip launches with n == 0. T = float (_f32) / double (_f64).
//
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

__device__ __forceinline__ u64 fmix64(u64 z) {
    z ^= z >> 30; z *= 0xBF58476D1CE4E5B9ULL;
    z ^= z >> 27; z *= 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return z;
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

#define LAYOUT_INST(T, SUF)                                                                                          \
    extern "C" __global__ void dropout_hash_##SUF(const T* x, T* y, int n, const int* seed, unsigned int thr,        \
                                                  T scale) {                                                         \
        dropout_hash<T>(x, y, n, seed, thr, scale);                                                                  \
    }                                                                                                                \
    extern "C" __global__ void copy_cols_##SUF(const T* src, T* dst, int R, int W, int src_ld, int src_off,          \
                                               int dst_ld, int dst_off, int accumulate) {                            \
        copy_cols<T>(src, dst, R, W, src_ld, src_off, dst_ld, dst_off, accumulate);                                  \
    }                                                                                                                \
    extern "C" __global__ void embed_fwd_##SUF(const T* Wt, const int* ids, T* out, int n, int D, int V) {           \
        embed_fwd<T>(Wt, ids, out, n, D, V);                                                                         \
    }                                                                                                                \
    extern "C" __global__ void embed_bwd_##SUF(const T* gOut, const int* perm, const int* vptr, T* gW, int V,        \
                                               int D) {                                                              \
        embed_bwd<T>(gOut, perm, vptr, gW, V, D);                                                                    \
    }

LAYOUT_INST(float, f32)
LAYOUT_INST(double, f64)

extern "C" __global__ void copy_cols_i32(const int* src, int* dst, int R, int W, int src_ld, int src_off, int dst_ld,
                                         int dst_off, int accumulate) {
    copy_cols<int>(src, dst, R, W, src_ld, src_off, dst_ld, dst_off, accumulate);
}
