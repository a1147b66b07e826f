// common.cuh — shared device helpers for all gshn kernel families.
//
// Rules for every kernel file (the Rust backend relies on them):
//  * No #include other than this header: the sources must also compile under NVRTC with no include
//    path (build.rs exports each .cu with this header inlined as `<NAME>_CU`).
//  * Every kernel is `extern "C" __global__`; templated bodies are instantiated as `<name>_f32`
//    (T = float) and `<name>_f64` (T = double), and where a family runs on half-precision storage
//    also as `<name>_bf16` / `<name>_f16` (storage S = bf16s / f16s, arithmetic and `T` scalars in
//    float: see "Storage types" below).
//  * Size arguments are `int` (i32), flat offsets are computed in 64 bit inside. Scalars named as
//    type `T` are f32 for `_f32` kernels and f64 for `_f64` kernels. Index tensors are int32.
//  * Grids: unless a file says otherwise, kernels use grid-stride loops, so ANY grid >= 1 is correct;
//    the host picks `grid = min(ceil(work / per_block), 65535)` or similar. Block size: any multiple of
//    32 up to 1024 unless stated (256 recommended). Zero-work launches (N = 0, E = 0, …) must be
//    SKIPPED by the host (a grid of 0 is an invalid launch); each file says which outputs then need
//    to be zero-filled by the host.
//  * Determinism: no float atomics anywhere. Every reduction has a fixed order for a fixed launch
//    configuration (and two-stage reductions take the partial count as an argument), so results are
//    bit-reproducible run to run provided the host uses the same grid for the same sizes.
#pragma once

typedef long long i64;
typedef unsigned long long u64;

#define GSHN_FULL_MASK 0xffffffffu

// ---------------------------------------------------------------------------------------------
// Index helpers: flat grid-stride loops and warp-per-item loops.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ i64 gtid() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ i64 gstride() { return (i64)gridDim.x * blockDim.x; }
__device__ __forceinline__ int lane_id() { return threadIdx.x & 31; }
// Global warp index and warp count (warp-per-item loops; all 32 lanes iterate together).
__device__ __forceinline__ i64 gwarp() { return ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; }
__device__ __forceinline__ i64 nwarps() { return ((i64)gridDim.x * blockDim.x) >> 5; }

#define GRID_STRIDE(i, n) for (i64 i = gtid(); i < (i64)(n); i += gstride())
#define WARP_STRIDE(w, n) for (i64 w = gwarp(); w < (i64)(n); w += nwarps())

// Destination node of CSR edge k: the largest i with row_ptr[i] <= k (row_ptr has N+1 entries,
// row_ptr[0] = 0, row_ptr[N] = E, non-decreasing; requires 0 <= k < E).
__device__ __forceinline__ int csr_row_of(const int* __restrict__ row_ptr, int N, int k) {
    int lo = 0, hi = N - 1;
    while (lo < hi) {
        int mid = lo + ((hi - lo + 1) >> 1);  // lo + hi + 1 overflows for N > 2^30
        if (__ldg(row_ptr + mid) <= k) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// ---------------------------------------------------------------------------------------------
// Math overloads (own names so NVRTC needs no headers).
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ float g_exp(float x) { return expf(x); }
__device__ __forceinline__ double g_exp(double x) { return exp(x); }
__device__ __forceinline__ float g_log(float x) { return logf(x); }
__device__ __forceinline__ double g_log(double x) { return log(x); }
__device__ __forceinline__ float g_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double g_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float g_expm1(float x) { return expm1f(x); }
__device__ __forceinline__ double g_expm1(double x) { return expm1(x); }
__device__ __forceinline__ float g_erf(float x) { return erff(x); }
__device__ __forceinline__ double g_erf(double x) { return erf(x); }
__device__ __forceinline__ float g_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double g_abs(double x) { return fabs(x); }
__device__ __forceinline__ float g_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double g_max(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ float g_min(float a, float b) { return fminf(a, b); }
__device__ __forceinline__ double g_min(double a, double b) { return fmin(a, b); }
template <typename T> __device__ __forceinline__ T g_neg_inf();
template <> __device__ __forceinline__ float g_neg_inf<float>() { return -__int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double g_neg_inf<double>() { return -__longlong_as_double(0x7ff0000000000000LL); }

// Correctly rounded ops that are never contracted into FMA: used where the forward and the
// backward (and the CPU backend) must produce bit-identical values (LIF charge/fire/reset).
__device__ __forceinline__ float rn_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double rn_add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float rn_sub(float a, float b) { return __fadd_rn(a, -b); }
__device__ __forceinline__ double rn_sub(double a, double b) { return __dadd_rn(a, -b); }
__device__ __forceinline__ float rn_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double rn_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float rn_div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double rn_div(double a, double b) { return __ddiv_rn(a, b); }

// ---------------------------------------------------------------------------------------------
// Storage types (issue 15). A kernel templated on its storage type S reads elements with widen()
// and writes them with narrow<S>(); its arithmetic runs in Acc<S>::T: float for f32, bf16 and f16
// storage, double for f64. For S = float / double both are the identity, so those instantiations
// are the plain kernels. Half values are raw 16-bit words converted here, so the sources need no
// cuda_fp16.h / cuda_bf16.h (NVRTC has no include path); the rounding is the `half` crate's
// (round to nearest even, NaN kept quiet), so the CUDA and CPU backends round alike.
// ---------------------------------------------------------------------------------------------
struct bf16s { unsigned short bits; };
struct f16s { unsigned short bits; };
// u8 spikes (LifConfig::u8_spikes): exactly 0 or 1, read as any float type, written by LIF only.
struct u8s { unsigned char bits; };

template <typename S> struct Acc { typedef S T; };
template <> struct Acc<bf16s> { typedef float T; };
template <> struct Acc<f16s> { typedef float T; };

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ double widen(double v) { return v; }
__device__ __forceinline__ float widen(bf16s v) { return __uint_as_float((unsigned int)v.bits << 16); }
// a u8 spike: any byte but 0 is a spike, 1 (as the CPU's Storage::spikes_as)
__device__ __forceinline__ float widen(u8s v) { return v.bits != 0 ? 1.0f : 0.0f; }
__device__ __forceinline__ float widen(f16s v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
}

// f64 -> f32 rounded to odd (toward zero, then the last bit set when inexact): a second rounding
// to a half type is then the one correct rounding of the f64 value (as Storage::from_f64).
__device__ __forceinline__ float f32_round_to_odd(double x) {
    const float r = __double2float_rz(x);
    return ((double)r != x && x == x) ? __uint_as_float(__float_as_uint(r) | 1u) : r;
}

template <typename S> __device__ __forceinline__ S narrow(float v);
template <typename S> __device__ __forceinline__ S narrow(double v);
template <> __device__ __forceinline__ float narrow<float>(float v) { return v; }
template <> __device__ __forceinline__ float narrow<float>(double v) { return (float)v; }
template <> __device__ __forceinline__ double narrow<double>(double v) { return v; }
template <> __device__ __forceinline__ double narrow<double>(float v) { return (double)v; }
template <> __device__ __forceinline__ bf16s narrow<bf16s>(float v) {
    const unsigned int u = __float_as_uint(v);
    bf16s r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.bits = (unsigned short)((u >> 16) | 0x40u);  // NaN: quiet, sign and top payload kept
    } else {
        r.bits = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    return r;
}
template <> __device__ __forceinline__ f16s narrow<f16s>(float v) {
    f16s r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(v));
    return r;
}
template <> __device__ __forceinline__ u8s narrow<u8s>(float v) { u8s r; r.bits = v != 0.0f; return r; }
template <> __device__ __forceinline__ u8s narrow<u8s>(double v) { u8s r; r.bits = v != 0.0; return r; }
template <> __device__ __forceinline__ bf16s narrow<bf16s>(double v) { return narrow<bf16s>(f32_round_to_odd(v)); }
template <> __device__ __forceinline__ f16s narrow<f16s>(double v) { return narrow<f16s>(f32_round_to_odd(v)); }

// ---------------------------------------------------------------------------------------------
// Warp / block reductions (fixed butterfly order => deterministic).
// ---------------------------------------------------------------------------------------------
template <typename T> __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(GSHN_FULL_MASK, v, o);
    return v;
}
template <typename T> __device__ __forceinline__ T warp_max(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = g_max(v, __shfl_xor_sync(GSHN_FULL_MASK, v, o));
    return v;
}

// Block-wide sum; every thread of the block must call it; result valid in ALL threads.
// blockDim.x must be a multiple of 32 (<= 1024). Uses 33 words of static shared memory per T.
template <typename T> __device__ T block_sum(T v) {
    __shared__ T sh[33];
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // protect sh from a previous call
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        T s = lane < nw ? sh[lane] : T(0);
        s = warp_sum(s);
        if (lane == 0) sh[32] = s;
    }
    __syncthreads();
    return sh[32];
}

// ---------------------------------------------------------------------------------------------
// Activations and surrogate gradients.
// ---------------------------------------------------------------------------------------------
template <typename T> __device__ __forceinline__ T leaky_relu(T x, T slope) { return x > T(0) ? x : x * slope; }

// Surrogate derivative sigma'(x), x = H - v_th (DESIGN §3.1).
// kind = Surrogate::code (src/ops/lif.rs): 0 ATan, 1 Sigmoid, 2 SuperSpike, 3 Rectangular.
template <typename T> __device__ __forceinline__ T surrogate_grad(int kind, T alpha, T x) {
    switch (kind) {
        // u = (pi/2 * alpha) * x: the same rounding steps as the CPU backend.
        case 0: { T u = (T(1.57079632679489661923) * alpha) * x; return alpha / (T(2) * (T(1) + u * u)); }
        case 1: { T s = T(1) / (T(1) + g_exp(-alpha * x)); return alpha * s * (T(1) - s); }
        case 2: { T d = T(1) + alpha * g_abs(x); return T(1) / (d * d); }
        default: return g_abs(x) < alpha / T(2) ? T(1) / alpha : T(0);
    }
}

// Smooth stand-in for the Heaviside step (its derivative is exactly sigma'): the surrogate's
// primitive, 1/2 at 0. Evaluated in double and rounded once to T, as the CPU backend does
// (`Surrogate::primitive` in f64, then `as T`). Test mode only (LifConfig::smooth, Unary::Spike
// with smooth). kind as in surrogate_grad.
template <typename T> __device__ __forceinline__ T surrogate_primitive(int kind, T alpha_t, T x_t) {
    const double a = (double)alpha_t, x = (double)x_t;
    const double pi = 3.14159265358979323846;
    double r;
    switch (kind) {
        case 0: r = atan(1.57079632679489661923 * a * x) / pi + 0.5; break;
        case 1: r = 1.0 / (1.0 + exp(-a * x)); break;
        case 2: r = 0.5 + (x > 0.0 ? 1.0 : (x < 0.0 ? -1.0 : 0.0)) * (1.0 - 1.0 / (1.0 + a * fabs(x))) / a; break;
        default: r = fmin(fmax(x / a + 0.5, 0.0), 1.0); break;
    }
    return (T)r;
}
