// reduce.cu — deterministic sums / means (DESIGN §3.6). T = float (_f32) / double (_f64).
// Backward of every reduction is elementwise.cu ew_broadcast.
//
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
