// layout.cu — the layout family (src/ops/layout.rs, DESIGN §3.6): dropout, permute, strided column copy
// (concat / slice), embedding gather (+ deterministic backward).
//
// Flat kernels are grid-stride loops: block 256 (any), grid = min(ceil(n/256), 65535) (any grid >= 1 is
// correct). Skip launches with n == 0. Kernels that compute are templated on the storage type
// (_f32, _f64, _bf16, _f16; T = float for all but _f64, common.cuh); kernels that only move
// elements work on words of the element's size (_b1, _b2, _b4, _b8: any dtype of that size, indices and
// u8 spikes too).
//
// dropout_hash_{f32,f64,bf16,f16}(const S* x, S* y, int n, const int* seed, unsigned int thr, T scale)
//   The mask of Op::Dropout, bit-identical to the CPU backend (crate::util::rng):
//     s = (u64)(u32)seed[0] (device scalar: no host read);  h = fmix(s ^ fmix(i)) >> 40  (24 bits)
//     y[i] = h >= thr ? x[i] * scale : 0,   thr = ceil(p * 2^24) clamped to [0, 2^24],
//     scale = (T)(1 / (1 - p)) computed by the host in f64. Backward: the same call on gy.
// permute_{b2,b4,b8}(const W* x, W* y, long long n, PermMeta meta)
//   y[o] = x[sum_a o_a * meta.stride[a]] with o the multi-index of flat o over meta.dims (rank
//   meta.rank <= 6; stride[a] = input stride of the input axis perm[a]).
//   PermMeta = { int rank; int dims[6]; long long stride[6]; } passed by value.
// copy_cols_{b2,b4,b8}(const W* src, W* dst, int R, int W, int src_ld, int src_off, int dst_ld,
//                      int dst_off)
//   for r < R, j < W: dst[r*dst_ld + dst_off + j] = src[r*src_ld + src_off + j]  (flat over R*W).
//   Concat along the last axis = one call per input; slice = one call; their backward swaps roles.
// embed_fwd_{b2,b4,b8}(const W* Wt, const int* ids, W* out, int n, int D, int V)
//   out[i,:] = Wt[ids[i],:] (ids outside [0,V) -> a row of zero words, 0 in every dtype). Flat over
//   n*D.
// embed_bwd_{f32,f64,bf16,f16}(const S* gOut, const int* perm, const int* vptr, S* gW, int V, int D)
//   Deterministic scatter by a host-built CSR of positions per vocabulary row: positions with id v are
//   perm[vptr[v] .. vptr[v+1]] (vptr [V+1]; perm = positions stably sorted by id; out-of-range ids
//   omitted). gW[v,d] = sum over those positions of gOut[pos,d] (every row written, 0 if unused),
//   summed in T. Flat over V*D.
#include "common.cuh"

__device__ __forceinline__ u64 fmix64(u64 z) {
    z ^= z >> 30; z *= 0xBF58476D1CE4E5B9ULL;
    z ^= z >> 27; z *= 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return z;
}

template <typename S>
__device__ void dropout_hash(const S* __restrict__ x, S* __restrict__ y, int n, const int* __restrict__ seed,
                             unsigned int thr, typename Acc<S>::T scale) {
    typedef typename Acc<S>::T T;
    const u64 s = (u64)(unsigned int)seed[0];
    GRID_STRIDE(i, n) {
        const unsigned int h = (unsigned int)(fmix64(s ^ fmix64((u64)i)) >> 40);
        y[i] = narrow<S>(h >= thr ? widen(x[i]) * scale : T(0));
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

template <typename W>
__device__ void copy_cols(const W* __restrict__ src, W* __restrict__ dst, int R, int Wd, int src_ld, int src_off,
                          int dst_ld, int dst_off) {
    GRID_STRIDE(i, (i64)R * Wd) {
        const i64 r = i / Wd, j = i % Wd;
        dst[r * dst_ld + dst_off + j] = src[r * src_ld + src_off + j];
    }
}

template <typename W>
__device__ void embed_fwd(const W* __restrict__ Wt, const int* __restrict__ ids, W* __restrict__ out, int n, int D,
                          int V) {
    GRID_STRIDE(i, (i64)n * D) {
        const i64 r = i / D, d = i % D;
        const int id = ids[r];
        out[i] = (id >= 0 && id < V) ? Wt[(i64)id * D + d] : W(0);
    }
}

#define WORDS_INST(W, SUF)                                                                                           \
    extern "C" __global__ void permute_##SUF(const W* x, W* y, long long n, PermMeta m) {                            \
        permute_words<W>(x, y, n, m);                                                                                \
    }                                                                                                                \
    extern "C" __global__ void copy_cols_##SUF(const W* src, W* dst, int R, int Wd, int src_ld, int src_off,         \
                                               int dst_ld, int dst_off) {                                            \
        copy_cols<W>(src, dst, R, Wd, src_ld, src_off, dst_ld, dst_off);                                             \
    }                                                                                                                \
    extern "C" __global__ void embed_fwd_##SUF(const W* Wt, const int* ids, W* out, int n, int D, int V) {           \
        embed_fwd<W>(Wt, ids, out, n, D, V);                                                                         \
    }

WORDS_INST(unsigned char, b1)
WORDS_INST(unsigned short, b2)
WORDS_INST(unsigned int, b4)
WORDS_INST(u64, b8)

template <typename S>
__device__ void embed_bwd(const S* __restrict__ gOut, const int* __restrict__ perm, const int* __restrict__ vptr,
                          S* __restrict__ gW, int V, int D) {
    typedef typename Acc<S>::T T;
    GRID_STRIDE(i, (i64)V * D) {
        const int v = (int)(i / D), d = (int)(i % D);
        T acc = T(0);
        for (int q = vptr[v]; q < vptr[v + 1]; ++q) acc += widen(gOut[(i64)perm[q] * D + d]);
        gW[i] = narrow<S>(acc);
    }
}

#define LAYOUT_INST(S, SUF)                                                                                          \
    extern "C" __global__ void dropout_hash_##SUF(const S* x, S* y, int n, const int* seed, unsigned int thr,        \
                                                  Acc<S>::T scale) {                                                 \
        dropout_hash<S>(x, y, n, seed, thr, scale);                                                                  \
    }                                                                                                                \
    extern "C" __global__ void embed_bwd_##SUF(const S* gOut, const int* perm, const int* vptr, S* gW, int V,        \
                                               int D) {                                                              \
        embed_bwd<S>(gOut, perm, vptr, gW, V, D);                                                                    \
    }

LAYOUT_INST(float, f32)
LAYOUT_INST(double, f64)
LAYOUT_INST(bf16s, bf16)
LAYOUT_INST(f16s, f16)
