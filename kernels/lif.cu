// lif.cu — multi-step LIF neuron (SpikingJelly LIFNode semantics, DESIGN §3.1).
//
// Layout: X, S, V, H, gS, gV, gX are [T, N] row-major (time-major): element (t, n) at t*N + n.
// One thread per neuron, time loop inside; all loads/stores coalesced over n.
//
// Storage E = float (_f32), double (_f64), bf16s (_bf16), f16s (_f16) for X, S, V, gS, gV, gX, tau and
// g_tau; T = Acc<E>::T (double for _f64, float for the others) for H (the backward's exact charge),
// the scalars and the arithmetic. Spikes are exactly 0/1 in every storage type.
//
// Common scalar arguments (type T):
//   tau_ptr     const E*  nullable. When non-null, tau = *tau_ptr (learnable tau, PLIF); else `tau`.
//                         The host cannot check a tau read here: one that is not finite and > 1
//                         (an error on the CPU) becomes NaN, so H, V and every gradient are NaN.
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
// lif_fwd_{f32,f64,bf16,f16}
//   (const E* X, E* S, E* V, T* H, int Tn, int N,
//    const E* tau_ptr, T tau, T v_th, T v_reset, int hard, int decay_input,
//    int smooth, int surrogate, T alpha)
//   X [Tn,N] in; S [Tn,N] out (0/1 spikes); V [Tn,N] out (membrane after reset), nullable;
//   H [Tn,N] out (membrane after charge, saved for backward), nullable.
//   smooth = 1 (test mode, LifConfig::smooth): S = surrogate_primitive(surrogate, alpha, H - v_th)
//   instead of the step, and the reset is the formula H (1 - S) + v_reset S (hard) / H - v_th S
//   (soft), in correctly rounded steps. smooth = 0: surrogate/alpha are ignored.
//   Launch: block 256 (any), grid = ceil(N/256) (any grid >= 1 is correct: grid-stride).
//   Skip when Tn*N == 0.
// lif_fwd_u8s_*, lif_fwd_t8_u8s_*, lif_fwd_t16_u8s_*: the same forward kernels writing S as u8 (u8s,
//   exactly 0/1; LifConfig::u8_spikes); smooth must be 0. The backward never reads S.
// lif_fwd_t8_* / lif_fwd_t16_*, lif_bwd_t8_* / lif_bwd_t16_*: the same kernels for Tn <= 8 / 16,
//   with every step's loads of a neuron issued before its first step's arithmetic (the time loop
//   unrolled into registers): the memory system sees all T loads at once, not one per step.
//   smooth must be 0 (the test mode runs the plain form: its f64 surrogate, unrolled 16 times in
//   four storage types, made these forms slow to assemble).
//
// lif_bwd_{f32,f64,bf16,f16}
//   (const T* H, const E* gS, const E* gV, E* gX, double* gtau_part, int Tn, int N,
//    const E* tau_ptr, T tau, T v_th, T v_reset, int hard, int decay_input,
//    int detach_reset, int surrogate, T alpha, int smooth)
//   H [Tn,N] (saved); gS [Tn,N] nullable (= zeros); gV [Tn,N] nullable (= zeros); gX [Tn,N] out.
//   gtau_part [gridDim.x] double out, nullable: per-block partial sums of dL/dtau (learnable tau),
//     accumulated in double for f32 too (a sum of Tn*N terms of both signs loses digits in f32), with
//     dH_t/dtau = -(H_t - V_{t-1})/tau (decay_input; = -(X_t - (V_{t-1} - v_r))/tau^2) or
//     (V_{t-1} - v_r)/tau^2, V_{t-1} recomputed from H_{t-1} (so X is not needed).
//   surrogate: 0 ATan, 1 Sigmoid, 2 SuperSpike, 3 Rectangular; alpha its parameter.
//   Launch: block 256 (exactly: __launch_bounds__(256)), grid = G >= 1 (grid-stride); with
//   gtau_part the host allocates G partials and then launches lif_gtau_reduce. For bit
//   reproducibility use the same G for the same N (e.g. G = min(ceil(N/256), 1024)).
//   Skip when Tn*N == 0 (then g_tau = 0, gX empty).
//
// lif_gtau_reduce_* (const double* part, int nparts, E* g_tau)
//   g_tau[0] = sum of part[0..nparts] in a fixed order, in double, rounded to T, then to E. Launch: grid 1, block 256 (multiple of 32).
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

// One forward step of one neuron from V_{t-1} = v: stores S (as P), H, V of step t and returns V_t.
template <typename E, typename P, typename T>
__device__ __forceinline__ T lif_fwd_step(T v, T x, i64 idx, P* __restrict__ S, E* __restrict__ V,
                                          T* __restrict__ H, T tau, T v_th, T v_r, T v_reset, int hard,
                                          int decay_input, int smooth, int surrogate, T alpha) {
    LifStep<T> st = lif_step(v, x, tau, v_th, v_r, v_reset, hard != 0, decay_input != 0);
    T s = st.s ? T(1) : T(0);
    if (smooth) {
        s = surrogate_primitive(surrogate, alpha, rn_sub(st.h, v_th));
        st.v = lif_smooth_reset(st.h, s, v_th, v_reset, hard != 0);
    }
    S[idx] = narrow<P>(s);
    if (H) H[idx] = st.h;
    if (V) V[idx] = narrow<E>(st.v);
    return st.v;
}

// The time constant: `tau`, or the fed one at tau_ptr, NaN unless finite and > 1 (see the top).
template <typename E>
__device__ __forceinline__ typename Acc<E>::T lif_tau(const E* tau_ptr, typename Acc<E>::T tau) {
    typedef typename Acc<E>::T T;
    if (!tau_ptr) return tau;
    const T t = widen(*tau_ptr);
    return (t > T(1) && isfinite(t)) ? t : T(NAN);
}

// Up to TM steps: every X of the neuron is loaded before the first step's arithmetic, so the
// loads are in flight together instead of one per step (the time loop is unrolled).
template <typename E, typename P, int TM>
__device__ void lif_fwd_regs(const E* __restrict__ X, P* __restrict__ S, E* __restrict__ V,
                             typename Acc<E>::T* __restrict__ H, int Tn, int N, typename Acc<E>::T tau,
                             typename Acc<E>::T v_th, typename Acc<E>::T v_r, typename Acc<E>::T v_reset, int hard,
                             int decay_input, int smooth, int surrogate, typename Acc<E>::T alpha) {
    typedef typename Acc<E>::T T;
    GRID_STRIDE(n, N) {
        T x[TM];
#pragma unroll
        for (int t = 0; t < TM; ++t)
            if (t < Tn) x[t] = widen(X[(i64)t * N + n]);
        T v = v_r;
#pragma unroll
        for (int t = 0; t < TM; ++t)
            if (t < Tn)
                v = lif_fwd_step(v, x[t], (i64)t * N + n, S, V, H, tau, v_th, v_r, v_reset, hard, decay_input,
                                 smooth, surrogate, alpha);
    }
}

// TM = 0: any number of steps, one load per step; TM > 0: Tn <= TM, loads up front. P: the spikes'
// storage (E, or u8s).
template <typename E, typename P, int TM>
__device__ void lif_fwd(const E* __restrict__ X, P* __restrict__ S, E* __restrict__ V,
                        typename Acc<E>::T* __restrict__ H, int Tn, int N, const E* tau_ptr, typename Acc<E>::T tau,
                        typename Acc<E>::T v_th, typename Acc<E>::T v_reset, int hard, int decay_input, int smooth,
                        int surrogate, typename Acc<E>::T alpha) {
    typedef typename Acc<E>::T T;
    tau = lif_tau(tau_ptr, tau);
    const T v_r = hard ? v_reset : T(0);
    if constexpr (TM > 0) {
        // smooth = 0 as a constant: the test mode's f64 surrogate stays out of the unrolled body
        lif_fwd_regs<E, P, TM>(X, S, V, H, Tn, N, tau, v_th, v_r, v_reset, hard, decay_input, 0, surrogate, alpha);
    } else {
        GRID_STRIDE(n, N) {
            T v = v_r;
            for (int t = 0; t < Tn; ++t) {
                const i64 idx = (i64)t * N + n;
                v = lif_fwd_step(v, widen(X[idx]), idx, S, V, H, tau, v_th, v_r, v_reset, hard, decay_input, smooth,
                                 surrogate, alpha);
            }
        }
    }
}

// The neuron constants of the backward.
template <typename T> struct LifBwdArgs {
    T tau, v_th, v_r, v_reset, keep, alpha;
    int hard, decay_input, detach_reset, surrogate, smooth;
    bool want_gtau;
};

// One backward step t of one neuron: from H_t, H_{t-1} (read only for dL/dtau; t > 0), the
// upstream gradients and the carry gH_{t+1}·(1 − 1/tau), returns gX_t; updates carry and gtau.
template <typename T>
__device__ __forceinline__ T lif_bwd_step(const LifBwdArgs<T>& a, int t, T h, T h_prev, T gs, T gv, T& carry,
                                          double& gtau) {
    const T x = rn_sub(h, a.v_th);
    const T s = a.smooth ? surrogate_primitive(a.surrogate, a.alpha, x) : (x >= T(0) ? T(1) : T(0));
    const T sg = surrogate_grad(a.surrogate, a.alpha, x);
    T dvdh;
    if (a.hard) dvdh = (T(1) - s) + (a.detach_reset ? T(0) : (a.v_reset - h) * sg);
    else dvdh = T(1) - (a.detach_reset ? T(0) : a.v_th * sg);
    const T gv_tot = gv + carry;
    const T gh = gs * sg + gv_tot * dvdh;
    carry = gh * a.keep;
    if (a.want_gtau) {
        // V_{t-1}: recomputed from H_{t-1} with the forward's arithmetic (V_{-1} = v_r).
        const T vp = t > 0 ? lif_reset_from_h(h_prev, a.v_th, a.v_reset, a.hard != 0, a.smooth != 0, a.surrogate,
                                              a.alpha)
                           : a.v_r;
        T dh_dtau;
        if (a.decay_input) dh_dtau = -(h - vp) / a.tau;
        else dh_dtau = (vp - a.v_r) / (a.tau * a.tau);
        gtau += (double)(gh * dh_dtau);
    }
    return a.decay_input ? gh / a.tau : gh;
}

// Up to TM steps: every H, gS and gV of the neuron is loaded before the first (last in time)
// step's arithmetic, so no step waits on its own loads behind the previous step's math.
template <typename E, int TM>
__device__ double lif_bwd_regs(const LifBwdArgs<typename Acc<E>::T>& a, const typename Acc<E>::T* __restrict__ H,
                               const E* __restrict__ gS, const E* __restrict__ gV, E* __restrict__ gX, int Tn,
                               int N) {
    typedef typename Acc<E>::T T;
    double gtau = 0.0;
    GRID_STRIDE(n, N) {
        T h[TM], gs[TM], gv[TM];
#pragma unroll
        for (int t = 0; t < TM; ++t) {
            if (t < Tn) {
                const i64 idx = (i64)t * N + n;
                h[t] = H[idx];
                gs[t] = gS ? widen(gS[idx]) : T(0);
                gv[t] = gV ? widen(gV[idx]) : T(0);
            }
        }
        T carry = T(0);
#pragma unroll
        for (int t = TM - 1; t >= 0; --t)
            if (t < Tn)
                gX[(i64)t * N + n] = narrow<E>(lif_bwd_step(a, t, h[t], t > 0 ? h[t - 1] : T(0), gs[t], gv[t],
                                                            carry, gtau));
    }
    return gtau;
}

// TM = 0: any number of steps, loads step by step; TM > 0: Tn <= TM, loads up front.
template <typename E, int TM>
__device__ void lif_bwd(const typename Acc<E>::T* __restrict__ H, const E* __restrict__ gS, const E* __restrict__ gV,
                        E* __restrict__ gX, double* __restrict__ gtau_part, int Tn, int N, const E* tau_ptr,
                        typename Acc<E>::T tau, typename Acc<E>::T v_th, typename Acc<E>::T v_reset, int hard,
                        int decay_input, int detach_reset, int surrogate, typename Acc<E>::T alpha, int smooth) {
    typedef typename Acc<E>::T T;
    tau = lif_tau(tau_ptr, tau);
    LifBwdArgs<T> a;
    a.tau = tau;
    a.v_th = v_th;
    a.v_r = hard ? v_reset : T(0);
    a.v_reset = v_reset;
    a.keep = T(1) - T(1) / tau;
    a.alpha = alpha;
    a.hard = hard;
    a.decay_input = decay_input;
    a.detach_reset = detach_reset;
    a.surrogate = surrogate;
    a.smooth = smooth;
    a.want_gtau = gtau_part != nullptr;
    double gtau = 0.0;
    if constexpr (TM > 0) {
        a.smooth = 0;  // a constant, as in the forward: the unrolled forms have no test mode
        gtau = lif_bwd_regs<E, TM>(a, H, gS, gV, gX, Tn, N);
    } else {
        GRID_STRIDE(n, N) {
            T carry = T(0);  // gH_{t+1} * (1 - 1/tau): gradient reaching V_t through the next charge
            for (int t = Tn - 1; t >= 0; --t) {
                const i64 idx = (i64)t * N + n;
                const T h_prev = (a.want_gtau && t > 0) ? H[idx - N] : T(0);
                gX[idx] = narrow<E>(lif_bwd_step(a, t, H[idx], h_prev, gS ? widen(gS[idx]) : T(0),
                                                 gV ? widen(gV[idx]) : T(0), carry, gtau));
            }
        }
    }
    if (gtau_part) {  // uniform branch: every thread of the block reaches block_sum
        double b = block_sum(gtau);
        if (threadIdx.x == 0) gtau_part[blockIdx.x] = b;
    }
}

// g_tau rounded to T first, then to the storage type (as the CPU backend).
template <typename E> __device__ void lif_gtau_reduce(const double* __restrict__ part, int nparts, E* __restrict__ g_tau) {
    typedef typename Acc<E>::T T;
    double acc = 0.0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) acc += part[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) *g_tau = narrow<E>((T)acc);
}

// Entry points: lif_fwd / lif_bwd (any Tn) and their _t8 / _t16 forms (Tn <= 8 / 16, every
// step's loads issued up front; separate kernels, so the plain form keeps its low register
// count). The backward's unrolled steps hoist their surrogate math ahead of the serial carry
// chain; in f32, two blocks of 256 per SM cap them at 128 registers (16 warps to hide the loads).
#define LIF_FWD(E, P, SUF, NAME, TM)                                                                                \
    extern "C" __global__ void lif_fwd##NAME##_##SUF(const E* X, P* S, E* V, T_##SUF* H, int Tn, int N,              \
                                                     const E* tau_ptr, T_##SUF tau, T_##SUF v_th, T_##SUF v_reset,   \
                                                     int hard, int decay_input, int smooth, int surrogate,           \
                                                     T_##SUF alpha) {                                                \
        lif_fwd<E, P, TM>(X, S, V, H, Tn, N, tau_ptr, tau, v_th, v_reset, hard, decay_input, smooth, surrogate,     \
                          alpha);                                                                                    \
    }
#define LIF_ENTRY(E, SUF, NAME, TM, BLOCKS)                                                                         \
    LIF_FWD(E, E, SUF, NAME, TM)                                                                                     \
    LIF_FWD(E, u8s, SUF, NAME##_u8s, TM)                                                                             \
    extern "C" __global__ void __launch_bounds__(256, BLOCKS)                                                       \
        lif_bwd##NAME##_##SUF(const T_##SUF* H, const E* gS, const E* gV, E* gX, double* gtau_part, int Tn, int N,   \
                              const E* tau_ptr, T_##SUF tau, T_##SUF v_th, T_##SUF v_reset, int hard,                \
                              int decay_input, int detach_reset, int surrogate, T_##SUF alpha, int smooth) {         \
        lif_bwd<E, TM>(H, gS, gV, gX, gtau_part, Tn, N, tau_ptr, tau, v_th, v_reset, hard, decay_input,             \
                       detach_reset, surrogate, alpha, smooth);                                                      \
    }

// E: the storage type of X, S, V, gS, gV, gX, tau and g_tau; T_<SUF> = Acc<E>::T: H, the scalars and
// the arithmetic.
#define LIF_INST(E, SUF, BLOCKS)                                                                              \
    typedef Acc<E>::T T_##SUF;                                                                                \
    LIF_ENTRY(E, SUF, , 0, BLOCKS)                                                                            \
    LIF_ENTRY(E, SUF, _t8, 8, BLOCKS)                                                                         \
    LIF_ENTRY(E, SUF, _t16, 16, BLOCKS)                                                                       \
    extern "C" __global__ void lif_gtau_reduce_##SUF(const double* part, int nparts, E* g_tau) {            \
        lif_gtau_reduce<E>(part, nparts, g_tau);                                                              \
    }

LIF_INST(float, f32, 2)
LIF_INST(double, f64, 1)  // two blocks would spill the f64 _t16 form
LIF_INST(bf16s, bf16, 2)
LIF_INST(f16s, f16, 2)
