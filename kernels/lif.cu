// lif.cu — multi-step LIF neuron (SpikingJelly LIFNode semantics, DESIGN §3.1).
//
// Layout: X, S, V, H, gS, gV, gX are [T, N] row-major (time-major): element (t, n) at t*N + n.
// One thread per neuron, time loop inside; all loads/stores coalesced over n.
//
// Common scalar arguments (type T = float for _f32, double for _f64):
//   tau_ptr     const T*  nullable. When non-null, tau = *tau_ptr (learnable tau, PLIF); else `tau`.
//   tau         T         tau > 1 (used when tau_ptr == nullptr).
//   v_th        T         threshold.
//   v_reset     T         reset value (hard reset only; ignored when hard == 0).
//   hard        int       1 = hard reset (V_0 = v_reset, leak toward v_reset),
//                         0 = soft reset (V_0 = 0, leak toward 0, V = H - v_th*S).
//   decay_input int       1: H = V + (X - (V - v_r))/tau ; 0: H = V - (V - v_r)/tau + X.
//
// The charge/fire/reset arithmetic uses correctly-rounded, never-contracted operations (rn_* in
// common.cuh) in exactly the order written in DESIGN §3.1, so forward, backward recomputation and a
// plain (non-FMA) CPU implementation give bit-identical H, S, V. Reset is computed as a select
// (S ? v_reset : H, S ? H - v_th : H), which equals the DESIGN formula for finite H.
//
// ---------------------------------------------------------------------------------------------
// lif_fwd_f32 / lif_fwd_f64
//   (const T* X, T* S, T* V, T* H, int Tn, int N,
//    const T* tau_ptr, T tau, T v_th, T v_reset, int hard, int decay_input,
//    int smooth, int surrogate, T alpha)
//   X [Tn,N] in; S [Tn,N] out (0/1 spikes); V [Tn,N] out (membrane after reset), nullable;
//   H [Tn,N] out (membrane after charge, saved for backward), nullable.
//   smooth = 1 (test mode, LifConfig::smooth): S = surrogate_primitive(surrogate, alpha, H - v_th)
//   instead of the step, and the reset is the formula H (1 - S) + v_reset S (hard) / H - v_th S
//   (soft), in correctly rounded steps. smooth = 0: surrogate/alpha are ignored.
//   Launch: block 256 (any), grid = ceil(N/256) (any grid >= 1 is correct: grid-stride).
//   Skip when Tn*N == 0.
//
// lif_bwd_f32 / lif_bwd_f64
//   (const T* H, const T* gS, const T* gV, T* gX, double* gtau_part, int Tn, int N,
//    const T* tau_ptr, T tau, T v_th, T v_reset, int hard, int decay_input,
//    int detach_reset, int surrogate, T alpha, int smooth)
//   H [Tn,N] (saved); gS [Tn,N] nullable (= zeros); gV [Tn,N] nullable (= zeros); gX [Tn,N] out.
//   gtau_part [gridDim.x] double out, nullable: per-block partial sums of dL/dtau (learnable tau),
//     accumulated in double for f32 too (a sum of Tn*N terms of both signs loses digits in f32), with
//     dH_t/dtau = -(H_t - V_{t-1})/tau (decay_input; = -(X_t - (V_{t-1} - v_r))/tau^2) or
//     (V_{t-1} - v_r)/tau^2, V_{t-1} recomputed from H_{t-1} (so X is not needed).
//   surrogate: 0 ATan, 1 Sigmoid, 2 SuperSpike, 3 Rectangular; alpha its parameter.
//   Launch: block 256 (must be a multiple of 32, <= 1024), grid = G >= 1 (grid-stride); with
//   gtau_part the host allocates G partials and then launches lif_gtau_reduce. For bit
//   reproducibility use the same G for the same N (e.g. G = min(ceil(N/256), 1024)).
//   Skip when Tn*N == 0 (then g_tau = 0, gX empty).
//
// lif_gtau_reduce_f32 / _f64 (const double* part, int nparts, T* g_tau)
//   g_tau[0] = sum of part[0..nparts] in a fixed order, in double. Launch: grid 1, block 256 (multiple of 32).
// ---------------------------------------------------------------------------------------------
#include "common.cuh"

template <typename T> struct LifStep { T h; bool s; T v; };

// Charge + fire + reset, the single source of truth for forward and backward.
// Smooth-mode fire + reset (test mode): S = primitive(H - v_th), V by the reset formula.
template <typename T>
__device__ __forceinline__ T lif_smooth_reset(T h, T s, T v_th, T v_reset, bool hard) {
    return hard ? rn_add(rn_mul(h, rn_sub(T(1), s)), rn_mul(v_reset, s)) : rn_sub(h, rn_mul(v_th, s));
}

template <typename T>
__device__ __forceinline__ LifStep<T> lif_step(T v_prev, T x, T tau, T v_th, T v_r, T v_reset, bool hard,
                                               bool decay_input) {
    LifStep<T> o;
    if (decay_input) o.h = rn_add(v_prev, rn_div(rn_sub(x, rn_sub(v_prev, v_r)), tau));
    else o.h = rn_add(rn_sub(v_prev, rn_div(rn_sub(v_prev, v_r), tau)), x);
    o.s = rn_sub(o.h, v_th) >= T(0);
    o.v = hard ? (o.s ? v_reset : o.h) : (o.s ? rn_sub(o.h, v_th) : o.h);
    return o;
}

// Reset only (backward recomputation of V_{t-1} from the saved H_{t-1}).
template <typename T>
__device__ __forceinline__ T lif_reset_from_h(T h, T v_th, T v_reset, bool hard, bool smooth, int surrogate,
                                              T alpha) {
    if (smooth) return lif_smooth_reset(h, surrogate_primitive(surrogate, alpha, rn_sub(h, v_th)), v_th, v_reset, hard);
    bool s = rn_sub(h, v_th) >= T(0);
    return hard ? (s ? v_reset : h) : (s ? rn_sub(h, v_th) : h);
}

template <typename T>
__device__ void lif_fwd(const T* __restrict__ X, T* __restrict__ S, T* __restrict__ V, T* __restrict__ H,
                        int Tn, int N, const T* tau_ptr, T tau, T v_th, T v_reset, int hard, int decay_input,
                        int smooth, int surrogate, T alpha) {
    if (tau_ptr) tau = *tau_ptr;
    const T v_r = hard ? v_reset : T(0);
    GRID_STRIDE(n, N) {
        T v = v_r;
        for (int t = 0; t < Tn; ++t) {
            const i64 idx = (i64)t * N + n;
            LifStep<T> st = lif_step(v, X[idx], tau, v_th, v_r, v_reset, hard != 0, decay_input != 0);
            T s = st.s ? T(1) : T(0);
            if (smooth) {
                s = surrogate_primitive(surrogate, alpha, rn_sub(st.h, v_th));
                st.v = lif_smooth_reset(st.h, s, v_th, v_reset, hard != 0);
            }
            S[idx] = s;
            if (H) H[idx] = st.h;
            if (V) V[idx] = st.v;
            v = st.v;
        }
    }
}

template <typename T>
__device__ void lif_bwd(const T* __restrict__ H, const T* __restrict__ gS, const T* __restrict__ gV,
                        T* __restrict__ gX, double* __restrict__ gtau_part, int Tn, int N,
                        const T* tau_ptr, T tau, T v_th, T v_reset, int hard, int decay_input, int detach_reset,
                        int surrogate, T alpha, int smooth) {
    if (tau_ptr) tau = *tau_ptr;
    const T v_r = hard ? v_reset : T(0);
    const T inv_tau = T(1) / tau;
    const T keep = T(1) - inv_tau;
    double gtau = 0.0;
    GRID_STRIDE(n, N) {
        T carry = T(0);  // gH_{t+1} * (1 - 1/tau): gradient reaching V_t through the next charge
        for (int t = Tn - 1; t >= 0; --t) {
            const i64 idx = (i64)t * N + n;
            const T h = H[idx];
            const T x = rn_sub(h, v_th);
            const T s = smooth ? surrogate_primitive(surrogate, alpha, x) : (x >= T(0) ? T(1) : T(0));
            const T sg = surrogate_grad(surrogate, alpha, x);
            T dvdh;
            if (hard) dvdh = (T(1) - s) + (detach_reset ? T(0) : (v_reset - h) * sg);
            else dvdh = T(1) - (detach_reset ? T(0) : v_th * sg);
            const T gv_tot = (gV ? gV[idx] : T(0)) + carry;
            const T gh = (gS ? gS[idx] : T(0)) * sg + gv_tot * dvdh;
            gX[idx] = decay_input ? gh / tau : gh;
            carry = gh * keep;
            if (gtau_part) {
                // V_{t-1}: recomputed from H_{t-1} with the forward's arithmetic (V_{-1} = v_r).
                const T vp = t > 0 ? lif_reset_from_h(H[idx - N], v_th, v_reset, hard != 0, smooth != 0,
                                                      surrogate, alpha)
                                   : v_r;
                T dh_dtau;
                if (decay_input) dh_dtau = -(h - vp) / tau;
                else dh_dtau = (vp - v_r) / (tau * tau);
                gtau += (double)(gh * dh_dtau);
            }
        }
    }
    if (gtau_part) {  // uniform branch: every thread of the block reaches block_sum
        double b = block_sum(gtau);
        if (threadIdx.x == 0) gtau_part[blockIdx.x] = b;
    }
}

template <typename T> __device__ void lif_gtau_reduce(const double* __restrict__ part, int nparts, T* __restrict__ g_tau) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) acc += part[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) *g_tau = (T)acc;
}

#define LIF_INST(T, SUF)                                                                                      \
    extern "C" __global__ void lif_fwd_##SUF(const T* X, T* S, T* V, T* H, int Tn, int N, const T* tau_ptr,  \
                                             T tau, T v_th, T v_reset, int hard, int decay_input, int smooth, \
                                             int surrogate, T alpha) {                                       \
        lif_fwd<T>(X, S, V, H, Tn, N, tau_ptr, tau, v_th, v_reset, hard, decay_input, smooth, surrogate,     \
                   alpha);                                                                                    \
    }                                                                                                         \
    extern "C" __global__ void lif_bwd_##SUF(const T* H, const T* gS, const T* gV, T* gX, double* gtau_part, \
                                             int Tn, int N, const T* tau_ptr, T tau, T v_th, T v_reset,     \
                                             int hard, int decay_input, int detach_reset, int surrogate,    \
                                             T alpha, int smooth) {                                          \
        lif_bwd<T>(H, gS, gV, gX, gtau_part, Tn, N, tau_ptr, tau, v_th, v_reset, hard, decay_input,         \
                   detach_reset, surrogate, alpha, smooth);                                                   \
    }                                                                                                         \
    extern "C" __global__ void lif_gtau_reduce_##SUF(const double* part, int nparts, T* g_tau) {            \
        lif_gtau_reduce<T>(part, nparts, g_tau);                                                              \
    }

LIF_INST(float, f32)
LIF_INST(double, f64)
