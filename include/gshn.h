/* gshn.h — C ABI of gshn (Graph Spiking Hybrid Networks): the fused ops' forward and backward
 * on caller-owned buffers. Hand-kept in sync with src/capi.rs (tests/capi.rs compiles a C
 * program against this header and the built libgshn_capi.so).
 *
 * Conventions
 *  - Every function returns GSHN_OK (0) or an error code; gshn_last_error() then describes the
 *    failure (thread-local; valid until the next gshn call on the same thread; never NULL).
 *    No panic or exception crosses the boundary (an internal bug returns GSHN_ERR_PANIC).
 *  - Float buffers: row-major, contiguous, all of one dtype (GSHN_F32, GSHN_F64, GSHN_BF16 or
 *    GSHN_F16), passed as void pointers; the spikes of the *_u8_* entries: uint8_t, 0 or 1.
 *    Index arrays: int32_t. With GSHN_BF16 / GSHN_F16 (16-bit
 *    words; on *_cuda gshn's half-precision kernels, not yet run on a GPU) the op computes in
 *    f32 and the statistics buffers are float (f32): LIF h; GAT lse; InfoNCE loss, lse_row, lse_col,
 *    grad_loss, grad_lse_row, grad_lse_col.
 *  - *_cpu functions: host pointers. *_cuda functions: the same arguments with DEVICE pointers
 *    for every float buffer, plus `device` (CUDA ordinal) and `stream` (a CUstream of the
 *    device's primary context — e.g. PyTorch's current stream; NULL = legacy default stream).
 *    The kernels run on `stream` itself, after what the caller queued on it, and later work
 *    on `stream` sees the results; the host is not blocked (except GAT/aggregate, which upload
 *    the graph from pageable host memory). Index arrays (gshn_graph) are HOST pointers on both
 *    paths. gshn keeps some state per device and stream it is called on (a scratch arena
 *    allocated stream-ordered on that stream, a cuBLAS handle) for the life of the process:
 *    a stream must stay alive while gshn calls on it are queued; after 64 streams on a device,
 *    calls on further streams run on gshn's own stream, ordered with the caller's by events.
 *  - "written" = the function fills the whole buffer; "optional" = may be NULL (not written,
 *    or not given). Sizes are int64_t and must be >= 0.
 *  - The backward functions take the forward's saved outputs (h for LIF; out and lse for GAT;
 *    lse_row/lse_col for InfoNCE) exactly as the forward wrote them.
 *  - Zero-copy on the CUDA path: the kernels read the caller's device buffers and write its
 *    outputs in place (no device-to-device copies); outputs the caller passes as NULL go to
 *    gshn's own memory. Host paths copy their inputs once.
 *  - Aliasing: an output may share memory with an input; the result is the same as with
 *    separate buffers (*_cpu copies its inputs; *_cuda copies just the inputs that overlap an
 *    output, before any output is written). The one exception is gshn_gat_forward_* asked for
 *    alpha (see there): refused, not computed wrong.
 *  - Threads: any thread may call any function. *_cuda calls on the same device and stream
 *    are serialised inside gshn (they share that stream's scratch arena); calls from several
 *    threads, each with its own stream, run at once, and none blocks the host on the device.
 *    The per-thread default stream (CU_STREAM_PER_THREAD) is a stream of each thread's own.
 *  - Checked before any buffer is read or written (an error code, never a crash): NULL for a
 *    required pointer (an optional one may be NULL; a NULL with a zero-element size is accepted),
 *    a negative size, sizes whose element or byte count overflows int64 / size_t, graph sizes
 *    past the int32 range of CSR indices, a pointer misaligned for the dtype, an unknown dtype or
 *    surrogate, non-finite or out-of-range parameters (tau, alpha, negative_slope), and an
 *    invalid CSR. A refused call writes no output. tests/c/capi_test.c holds the whole table.
 *  - The caller's responsibility (gshn cannot see it): every non-NULL buffer holds at least the
 *    elements its declared shape needs (a shorter buffer is read or written past its end), host
 *    pointers are host memory and device pointers belong to `device`, and no other thread
 *    writes the buffers during the call.
 *  Math and semantics: DESIGN.md §3 (LIF = SpikingJelly LIFNode, GAT = PyG GATConv, InfoNCE =
 *  open_clip ClipLoss).
 */
#ifndef GSHN_H
#define GSHN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GSHN_ABI_VERSION 1 /* bumped on an incompatible change; new entry points keep it */

/* Error codes. */
#define GSHN_OK 0
#define GSHN_ERR_INVALID_ARGUMENT 1 /* NULL pointer, negative size, unknown enum value */
#define GSHN_ERR_SHAPE 2            /* sizes that do not fit together */
#define GSHN_ERR_INVALID_VALUE 3    /* a value the op cannot accept: invalid CSR, tau <= 1, ... */
#define GSHN_ERR_UNSUPPORTED 4      /* not in this build / on this backend (e.g. InfoNCE f64 on CUDA) */
#define GSHN_ERR_CUDA 5             /* CUDA driver or kernel failure, no usable GPU */
#define GSHN_ERR_PANIC 6            /* internal bug caught at the boundary */
#define GSHN_ERR_INTERNAL 7
#define GSHN_ERR_OUT_OF_MEMORY 8    /* a buffer gshn needs cannot be allocated */

/* dtypes of the float buffers. */
#define GSHN_F32 0
#define GSHN_F64 1
#define GSHN_BF16 2 /* bfloat16 words; statistics buffers f32 (see Conventions) */
#define GSHN_F16 3  /* IEEE half words; statistics buffers f32 */

/* LIF surrogate derivatives sigma'(x), x = H - v_th. */
#define GSHN_SURROGATE_ATAN 0        /* alpha / (2 (1 + (pi alpha x / 2)^2)), usual alpha 2 */
#define GSHN_SURROGATE_SIGMOID 1     /* alpha s (1 - s), s = sigmoid(alpha x), usual alpha 4 */
#define GSHN_SURROGATE_SUPER_SPIKE 2 /* 1 / (1 + alpha |x|)^2 */
#define GSHN_SURROGATE_RECTANGULAR 3 /* 1/alpha if |x| < alpha/2 else 0 */

/* Message of the last failed call on this thread ("" after a successful call). */
const char *gshn_last_error(void);
/* GSHN_ABI_VERSION of the library (compare with the header's). */
int gshn_abi_version(void);
/* 1 if the library has CUDA support and a usable device, else 0. */
int gshn_cuda_available(void);

/* ---- LIF (DESIGN §3.1), x[T, N] ------------------------------------------------------------ */

typedef struct gshn_lif_params {
    double tau;          /* > 1 */
    double v_th;
    double v_reset;      /* used when hard_reset != 0 */
    int hard_reset;      /* 0 = soft reset (V -= v_th S; leak toward 0) */
    int decay_input;     /* H = V + (X - (V - v_r)) / tau; else H = V - (V - v_r) / tau + X */
    int detach_reset;    /* no surrogate gradient through the reset */
    int surrogate;       /* GSHN_SURROGATE_* */
    double alpha;        /* surrogate parameter (> 0) */
} gshn_lif_params;

/* tau 2, v_th 1, hard reset to 0, decay_input, no detach, ATan(alpha 2). */
gshn_lif_params gshn_lif_params_default(void);

/* In: x[T,N]. Written: spikes[T,N] (optional), v[T,N] membrane after reset (optional),
 * h[T,N] membrane before firing (required: the backward's saved tensor). */
int gshn_lif_forward_cpu(const gshn_lif_params *params, int dtype, int64_t T, int64_t N,
                         const void *x, void *spikes, void *v, void *h);
int gshn_lif_forward_cuda(const gshn_lif_params *params, int dtype, int64_t T, int64_t N,
                          const void *x, void *spikes, void *v, void *h,
                          int device, void *stream);

/* The same, writing spikes[T,N] as uint8_t (exactly 0 or 1: one byte per spike instead of the
 * dtype's 2-8). The backward below is unchanged (it recomputes the spikes from h); the
 * aggregation reads such spikes through gshn_aggregate_*_u8_*. */
int gshn_lif_forward_u8_cpu(const gshn_lif_params *params, int dtype, int64_t T, int64_t N,
                            const void *x, uint8_t *spikes, void *v, void *h);
int gshn_lif_forward_u8_cuda(const gshn_lif_params *params, int dtype, int64_t T, int64_t N,
                             const void *x, uint8_t *spikes, void *v, void *h,
                             int device, void *stream);

/* BPTT. In: h[T,N] from the forward; grad_spikes[T,N] and grad_v[T,N] (each optional = zeros,
 * not both NULL). Written: grad_x[T,N]; grad_tau[1] when non-NULL (PLIF: d loss / d tau at
 * params->tau, reduced deterministically). */
int gshn_lif_backward_cpu(const gshn_lif_params *params, int dtype, int64_t T, int64_t N,
                          const void *h, const void *grad_spikes, const void *grad_v,
                          void *grad_x, void *grad_tau);
int gshn_lif_backward_cuda(const gshn_lif_params *params, int dtype, int64_t T, int64_t N,
                           const void *h, const void *grad_spikes, const void *grad_v,
                           void *grad_x, void *grad_tau, int device, void *stream);

/* PLIF with the time constant read from memory: tau[1], one element of `dtype` where the other
 * tensors are (host for _cpu, device for _cuda); params->tau is not used. A learnable tau kept
 * on the GPU thus needs no host synchronisation. The CPU refuses a tau that is not finite and
 * > 1 (GSHN_ERR_INVALID_VALUE); CUDA cannot check it without a synchronisation, so there such a
 * tau makes v, h, grad_x and grad_tau NaN (and every spike 0). grad_tau is optional here. */
int gshn_lif_forward_tau_cpu(const gshn_lif_params *params, int dtype, int64_t T, int64_t N,
                             const void *tau, const void *x, void *spikes, void *v, void *h);
int gshn_lif_forward_tau_cuda(const gshn_lif_params *params, int dtype, int64_t T, int64_t N,
                              const void *tau, const void *x, void *spikes, void *v, void *h,
                              int device, void *stream);
int gshn_lif_forward_u8_tau_cpu(const gshn_lif_params *params, int dtype, int64_t T, int64_t N,
                                const void *tau, const void *x, uint8_t *spikes, void *v, void *h);
int gshn_lif_forward_u8_tau_cuda(const gshn_lif_params *params, int dtype, int64_t T, int64_t N,
                                 const void *tau, const void *x, uint8_t *spikes, void *v,
                                 void *h, int device, void *stream);
int gshn_lif_backward_tau_cpu(const gshn_lif_params *params, int dtype, int64_t T, int64_t N,
                              const void *tau, const void *h, const void *grad_spikes,
                              const void *grad_v, void *grad_x, void *grad_tau);
int gshn_lif_backward_tau_cuda(const gshn_lif_params *params, int dtype, int64_t T, int64_t N,
                               const void *tau, const void *h, const void *grad_spikes,
                               const void *grad_v, void *grad_x, void *grad_tau,
                               int device, void *stream);

/* ---- graphs ---------------------------------------------------------------------------------- */

/* CSR by destination (HOST pointers): the edges into node i are k in [row_ptr[i], row_ptr[i+1]),
 * from node src[k]. row_ptr[0] = 0, non-decreasing, row_ptr[N] = E; 0 <= src[k] < N.
 * Self-loops are not added. Validated on every call (GSHN_ERR_INVALID_VALUE). */
typedef struct gshn_graph {
    int64_t num_nodes;      /* N */
    int64_t num_edges;      /* E */
    const int32_t *row_ptr; /* [N + 1] */
    const int32_t *src;     /* [E] */
} gshn_graph;

/* ---- GAT (DESIGN §3.2, PyG GATConv before concat/bias) --------------------------------------- */

/* In: z[N,H,F] (= x W), a_src[H,F], a_dst[H,F], edge_bias[E,H] (optional: per-edge logit bias,
 * PyG's edge_dim term), negative_slope (PyG default 0.2).
 * Written: out[N,H,F], lse[N,H] (log-sum-exp of each node's logits; saved for the backward),
 * alpha[E,H] (optional: the attention, in CSR edge order). A node with no in-edge: out = 0.
 * When alpha is wanted, out and lse must not share memory with z, a_src, a_dst or edge_bias
 * (alpha is computed after out and lse are written): GSHN_ERR_INVALID_ARGUMENT otherwise. */
int gshn_gat_forward_cpu(int dtype, const gshn_graph *graph, int64_t heads, int64_t feat,
                         double negative_slope, const void *z, const void *a_src,
                         const void *a_dst, const void *edge_bias, void *out, void *lse,
                         void *alpha);
int gshn_gat_forward_cuda(int dtype, const gshn_graph *graph, int64_t heads, int64_t feat,
                          double negative_slope, const void *z, const void *a_src,
                          const void *a_dst, const void *edge_bias, void *out, void *lse,
                          void *alpha, int device, void *stream);

/* In: the forward's inputs, its out and lse, grad_out[N,H,F]. Written: grad_z[N,H,F],
 * grad_a_src[H,F], grad_a_dst[H,F], grad_edge_bias[E,H] (optional; only with edge_bias).
 * Deterministic (no float atomics). */
int gshn_gat_backward_cpu(int dtype, const gshn_graph *graph, int64_t heads, int64_t feat,
                          double negative_slope, const void *z, const void *a_src,
                          const void *a_dst, const void *edge_bias, const void *out,
                          const void *lse, const void *grad_out, void *grad_z,
                          void *grad_a_src, void *grad_a_dst, void *grad_edge_bias);
int gshn_gat_backward_cuda(int dtype, const gshn_graph *graph, int64_t heads, int64_t feat,
                           double negative_slope, const void *z, const void *a_src,
                           const void *a_dst, const void *edge_bias, const void *out,
                           const void *lse, const void *grad_out, void *grad_z,
                           void *grad_a_src, void *grad_a_dst, void *grad_edge_bias,
                           int device, void *stream);

/* ---- fixed-attention aggregation (DESIGN §3.3) ----------------------------------------------- */

/* y[t,i,c] = sum_{k into i} alpha[k, c / (C/H)] s[t, src_k, c]; C a multiple of H.
 * In: alpha[E,H] (CSR edge order), s[T,N,C]. Written: y[T,N,C]. */
int gshn_aggregate_forward_cpu(int dtype, const gshn_graph *graph, int64_t heads, int64_t T,
                               int64_t C, const void *alpha, const void *s, void *y);
int gshn_aggregate_forward_cuda(int dtype, const gshn_graph *graph, int64_t heads, int64_t T,
                                int64_t C, const void *alpha, const void *s, void *y,
                                int device, void *stream);
/* In: alpha, s, grad_y[T,N,C]. Written: grad_alpha[E,H] (optional), grad_s[T,N,C] (optional). */
int gshn_aggregate_backward_cpu(int dtype, const gshn_graph *graph, int64_t heads, int64_t T,
                                int64_t C, const void *alpha, const void *s,
                                const void *grad_y, void *grad_alpha, void *grad_s);
int gshn_aggregate_backward_cuda(int dtype, const gshn_graph *graph, int64_t heads, int64_t T,
                                 int64_t C, const void *alpha, const void *s,
                                 const void *grad_y, void *grad_alpha, void *grad_s,
                                 int device, void *stream);

/* The same on u8 spikes s[T,N,C] (0 or 1, as gshn_lif_forward_u8_* writes them), read exactly
 * as `dtype`, the type of every float buffer; grad_s (optional) is in `dtype`: the gradient
 * gshn_lif_backward_* takes as grad_spikes. */
int gshn_aggregate_forward_u8_cpu(int dtype, const gshn_graph *graph, int64_t heads, int64_t T,
                                  int64_t C, const void *alpha, const uint8_t *s, void *y);
int gshn_aggregate_forward_u8_cuda(int dtype, const gshn_graph *graph, int64_t heads, int64_t T,
                                   int64_t C, const void *alpha, const uint8_t *s, void *y,
                                   int device, void *stream);
int gshn_aggregate_backward_u8_cpu(int dtype, const gshn_graph *graph, int64_t heads, int64_t T,
                                   int64_t C, const void *alpha, const uint8_t *s,
                                   const void *grad_y, void *grad_alpha, void *grad_s);
int gshn_aggregate_backward_u8_cuda(int dtype, const gshn_graph *graph, int64_t heads, int64_t T,
                                    int64_t C, const void *alpha, const uint8_t *s,
                                    const void *grad_y, void *grad_alpha, void *grad_s,
                                    int device, void *stream);

/* ---- InfoNCE (DESIGN §3.4, open_clip ClipLoss), chunked: never materialises B x B ------------ */

/* s = min(exp(logit_scale), 100), logits = s a p^T. symmetric != 0: the two-way ClipLoss;
 * 0: one-directional a -> p (mean row cross-entropy).
 * In: a[B,D], p[B,D] (rows i are the positive pairs; pass L2-normalised features),
 * logit_scale[1]. Written: loss[1], lse_row[B] (LSE_j logits_ij), lse_col[B] (LSE_i logits_ij;
 * symmetric only — NULL otherwise). f64 is CPU only (GSHN_ERR_UNSUPPORTED on CUDA). */
int gshn_infonce_forward_cpu(int dtype, int64_t B, int64_t D, int symmetric, const void *a,
                             const void *p, const void *logit_scale, void *loss, void *lse_row,
                             void *lse_col);
int gshn_infonce_forward_cuda(int dtype, int64_t B, int64_t D, int symmetric, const void *a,
                              const void *p, const void *logit_scale, void *loss,
                              void *lse_row, void *lse_col, int device, void *stream);
/* In: a, p, logit_scale, lse_row, lse_col (NULL when one-directional) from the forward;
 * grad_loss[1] (upstream gradient of the loss, in the same memory as the other buffers).
 * Written (each optional): grad_a[B,D], grad_p[B,D], grad_logit_scale[1]. */
int gshn_infonce_backward_cpu(int dtype, int64_t B, int64_t D, int symmetric, const void *a,
                              const void *p, const void *logit_scale, const void *lse_row,
                              const void *lse_col, const void *grad_loss, void *grad_a,
                              void *grad_p, void *grad_logit_scale);
int gshn_infonce_backward_cuda(int dtype, int64_t B, int64_t D, int symmetric, const void *a,
                               const void *p, const void *logit_scale, const void *lse_row,
                               const void *lse_col, const void *grad_loss, void *grad_a,
                               void *grad_p, void *grad_logit_scale, int device,
                               void *stream);
/* One-directional InfoNCE a -> p with gathered negatives and a precision mode (open_clip
 * local_loss + gather_with_grad: a data-parallel rank passes its own rows as a and every rank's
 * candidates as p, and never forms a B_all x B_all matrix). */
#define GSHN_PRECISION_F32 0  /* exact f32 products */
#define GSHN_PRECISION_TF32 1 /* operands rounded to tf32 (ties away), f32 accumulation and LSE */
#define GSHN_PRECISION_BF16 2 /* operands rounded to bf16 (ties to even), f32 accumulation and LSE */
typedef struct gshn_infonce_params {
    int precision;  /* GSHN_PRECISION_* */
    int64_t offset; /* row i of a is positive with row offset + i of p */
} gshn_infonce_params;
/* GSHN_PRECISION_F32, offset 0. */
gshn_infonce_params gshn_infonce_params_default(void);
/* In: a[B,D], p[P,D] (P >= offset + B), logit_scale[1]. Written: loss[1] (mean over the B rows
 * of LSE_j logits_ij - logits_i,offset+i), lse_row[B]. */
int gshn_infonce_1d_forward_cpu(const gshn_infonce_params *params, int dtype, int64_t B,
                                int64_t P, int64_t D, const void *a, const void *p,
                                const void *logit_scale, void *loss, void *lse_row);
int gshn_infonce_1d_forward_cuda(const gshn_infonce_params *params, int dtype, int64_t B,
                                 int64_t P, int64_t D, const void *a, const void *p,
                                 const void *logit_scale, void *loss, void *lse_row,
                                 int device, void *stream);
/* In: a, p, logit_scale, lse_row from the forward; grad_loss[1]. Written (each optional):
 * grad_a[B,D], grad_p[P,D] (every candidate), grad_logit_scale[1]. */
int gshn_infonce_1d_backward_cpu(const gshn_infonce_params *params, int dtype, int64_t B,
                                 int64_t P, int64_t D, const void *a, const void *p,
                                 const void *logit_scale, const void *lse_row,
                                 const void *grad_loss, void *grad_a, void *grad_p,
                                 void *grad_logit_scale);
int gshn_infonce_1d_backward_cuda(const gshn_infonce_params *params, int dtype, int64_t B,
                                  int64_t P, int64_t D, const void *a, const void *p,
                                  const void *logit_scale, const void *lse_row,
                                  const void *grad_loss, void *grad_a, void *grad_p,
                                  void *grad_logit_scale, int device, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* GSHN_H */
