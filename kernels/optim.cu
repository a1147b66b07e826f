// optim.cu — the optim family (src/ops/optim.rs): fused AdamW update and the deterministic global
// squared-norm for gradient clipping (DESIGN §3.6, PyTorch torch.optim.AdamW + clip_grad_norm_ semantics). T = float / double.
//
// sqnorm_partial_{f32,f64}(const T* x, int n, double* part)
//   part[blockIdx.x] = sum_i x[i]^2 in f64, as the CPU (a gradient whose f32 sum of squares would
//   overflow still clips, not skips), grid-stride, fixed order. grid = G (any >= 1; e.g.
//   min(ceil(n/2048), 256)), block 256 (multiple of 32). For a global norm over many tensors, give each
//   tensor its own slice of one partial buffer (pass part + offset) and then one clip_coef over all.
//   Same sizes -> same G (bit reproducibility). n == 0 gives a 0 partial.
// clip_coef_{f32,f64}(const double* part, int nparts, double max_norm, T* coef, T* total_norm)
//   total = sqrt(sum of partials) (fixed order, f64); coef[0] = min(1, max_norm / (total + 1e-6))
//   in f64, or 0 when total is not finite (crate::ops::optim::clip_factor); total_norm nullable.
//   grid 1, block 256.
// adamw_coefs_{f32,f64}(const T* hyper, T* coefs, double beta1, double beta2, double wd)
//   From the device hyper-parameters hyper[2] = (lr, step) (Op::AdamW input, no host read), in f64
//   and then rounded to T (as the CPU backend): coefs[0] = decay = 1 - lr*wd,
//   coefs[1] = step_size = lr / (1 - beta1^step), coefs[2] = sqrt(1 - beta2^step).
//   grid 1, block 32 (one thread works).
// adamw_step_{f32,f64}(T* p, const T* g, T* m, T* v, int n, const T* coefs, T beta1, T obeta1, T beta2,
//                      T obeta2, T eps, const T* gscale)
//   obeta1, obeta2 = 1 - beta1, 1 - beta2 taken in f64 and rounded once (as the CPU and PyTorch;
//   1 - (float)0.999 is 1.3e-5 off).
//   coefs from adamw_coefs:  p = p*decay - step_size * m / (sqrt(v)/coefs[2] + eps).
//   gscale[0] == 0 or non-finite (ClipScale of a non-finite gradient norm): the step is SKIPPED
//   (p, m, v unchanged), as on the CPU.
//   In place on p, m, v (elementwise, flat grid-stride; block 256, grid any; skip when n == 0):
//     gg = g * (gscale ? gscale[0] : 1)          (gscale = clip coefficient, device scalar)
//     p  = p * (1 - lr*wd)                        (decoupled weight decay; pass wd = 0 to exclude)
//     m  = beta1*m + (1-beta1)*gg;  v = beta2*v + (1-beta2)*gg*gg
//     p  = p - (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
//   bc1 = 1 - beta1^t, bc2 = 1 - beta2^t for step t >= 1 (computed by the host in f64).
#include "common.cuh"

template <typename T> __device__ void sqnorm_partial(const T* __restrict__ x, int n, double* __restrict__ part) {
    double acc = 0.0;
    GRID_STRIDE(i, n) { const double v = (double)x[i]; acc += v * v; }
    acc = block_sum(acc);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

template <typename T>
__device__ void clip_coef(const double* __restrict__ part, int nparts, double max_norm, T* __restrict__ coef,
                          T* __restrict__ total_norm) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) acc += part[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) {
        const double tot = sqrt(acc);
        const bool finite = tot - tot == 0.0;
        coef[0] = finite ? (T)fmin(1.0, max_norm / (tot + 1e-6)) : T(0);
        if (total_norm) total_norm[0] = (T)tot;
    }
}

template <typename T>
__device__ void adamw_coefs(const T* __restrict__ hyper, T* __restrict__ coefs, double beta1, double beta2,
                            double wd) {
    if (threadIdx.x == 0 && blockIdx.x == 0) {
        const double lr = (double)hyper[0], t = (double)hyper[1];
        coefs[0] = (T)(1.0 - lr * wd);
        coefs[1] = (T)(lr / (1.0 - pow(beta1, t)));
        coefs[2] = (T)sqrt(1.0 - pow(beta2, t));
    }
}

template <typename T>
__device__ void adamw_step(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v, int n,
                           const T* __restrict__ coefs, T beta1, T obeta1, T beta2, T obeta2, T eps,
                           const T* __restrict__ gscale) {
    const T decay = coefs[0], step = coefs[1], bc2s = coefs[2];
    const T gs = gscale ? gscale[0] : T(1);
    if (!(gs != T(0) && gs - gs == T(0))) return;  // 0, NaN or +-inf: skip the step
    GRID_STRIDE(i, n) {
        const T gg = g[i] * gs;
        const T mi = beta1 * m[i] + obeta1 * gg;
        const T vi = beta2 * v[i] + obeta2 * gg * gg;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step * mi / (g_sqrt(vi) / bc2s + eps);
    }
}

#define ADAMW_INST(T, SUF)                                                                                       \
    extern "C" __global__ void sqnorm_partial_##SUF(const T* x, int n, double* part) {                          \
        sqnorm_partial<T>(x, n, part);                                                                           \
    }                                                                                                            \
    extern "C" __global__ void clip_coef_##SUF(const double* part, int nparts, double max_norm, T* coef,        \
                                               T* total_norm) {                                                  \
        clip_coef<T>(part, nparts, max_norm, coef, total_norm);                                                  \
    }                                                                                                            \
    extern "C" __global__ void adamw_coefs_##SUF(const T* hyper, T* coefs, double beta1, double beta2,          \
                                                 double wd) {                                                    \
        adamw_coefs<T>(hyper, coefs, beta1, beta2, wd);                                                          \
    }                                                                                                            \
    extern "C" __global__ void adamw_step_##SUF(T* p, const T* g, T* m, T* v, int n, const T* coefs, T beta1,   \
                                                T obeta1, T beta2, T obeta2, T eps, const T* gscale) {           \
        adamw_step<T>(p, g, m, v, n, coefs, beta1, obeta1, beta2, obeta2, eps, gscale);                          \
    }

ADAMW_INST(float, f32)
ADAMW_INST(double, f64)
