// infonce.cu — tiled InfoNCE (open_clip ClipLoss semantics, DESIGN §3.4). f32 tensors.
//
//   s = min(exp(logit_scale), 100); logits = s A P^T (never materialised);
//   L = 1/2 (mean_i [lse_row_i - logit_ii] + mean_j [lse_col_j - logit_jj])   (two-directional, A, P: [B,D])
//   L =      mean_i [lse_row_i - logit_i,off+i]                               (one-directional A -> P)
//
// One-directional calls may gather negatives: A [BA,D] (a rank's rows) against P [BP,D] (every rank's
// candidates), row i's positive being P[off + i] (BP >= off + BA). Two-directional calls have BA == BP, off 0.
//
// Precision `prec` (0 = f32, 1 = tf32, 2 = bf16): the operands of every product (A and P for the logits; the
// logit gradient G and A or P for the backward) are rounded as tensor cores read them (tf32: to nearest, ties
// away; bf16: to nearest even), products accumulate in f32, LSE / softmax / loss stay f32. This is the
// reference semantics of src/backend/cpu/infonce.rs, on SIMT tiles (kernels 1-7, every mode) and on the
// one-pass tiles below (8-9: f32 by FMA, tf32 and bf16 on the tensor cores).
//
// Tiling: 64x64 logit tiles, D in chunks of 32 through shared memory, 256 threads = 16x16, each thread
// owns rows ty+16a and columns tx+16b (a, b < 4) of a tile. f32 accumulation everywhere. The logit of
// (i, j) is accumulated over d in increasing order with the same FMA sequence in both orientations
// (A-rows or P-rows), so every kernel sees bit-identical logits.
//
// Orientation trick: the column LSE of s A P^T is the row LSE of s P A^T, so each kernel takes a
// "row side" X [BX,D] and a "column side" Y [BY,D] and is launched once per orientation.
//
// Tile kernels (infonce_lse_partial, infonce_bwd): block = EXACTLY 256 threads, grid = (nrt, KS) with
// nrt = ceil(BX/64) row tiles and KS >= 1 column splits (split ks handles column tiles ks, ks+KS, ...).
// Pick KS = clamp(ceil(2*numSMs / nrt), 1, min(nct, 65535)), nct = ceil(BY/64); use the same KS for the
// same shapes (bit reproducibility). Static shared memory only (17 KB fwd, 33.5 KB bwd). Skip all when BX == 0.
//
// FORWARD (two-dir: steps 1-2 for (X,Y) = (A,P) -> lse_row and for (P,A) -> lse_col; one-dir: only A,P)
// 1. infonce_lse_partial_f32(const float* X, const float* Y, const float* logit_scale,
//        float* pm, float* pl, int BX, int BY, int D, int prec)
//    pm, pl: [KS, BX] scratch: running (max, sum exp(l - max)) of row i over the split's tiles.
// 2. infonce_lse_merge_f32(const float* pm, const float* pl, float* lse, int B, int KS)
//    lse[i] = merged log-sum-exp over the KS partials, in ks order. Flat: block 256, grid ceil(B/256).
// 3. infonce_diag_f32(const float* A, const float* P, const float* logit_scale, float* diag, int B, int D,
//        int off, int prec)
//    diag[i] = s <A_i, P_off+i> (rounded operands). Warp per row: block 256, grid ceil(B*32/256) (any).
// 4. infonce_loss_f32(const float* lse_row, const float* lse_col, const float* diag, float* loss, int B)
//    lse_col nullable (one-directional). loss[0] = the loss (accumulated in f64, fixed order).
//    grid 1, block 256.
//    Saved for the backward: lse_row [BA], lse_col [BA] (two-dir). diag is scratch.
//
// BACKWARD (g = g_loss/(2 BA) two-dir, g_loss/BA one-dir; gLogit_ij = g (p_ij + q_ij - 2 d_ij) or g (p_ij - d_ij))
// 5. infonce_bwd_f32(const float* X, const float* Y, const float* lse_x, const float* lse_y,
//        const float* g_lse_x, const float* g_lse_y,
//        const float* logit_scale, const float* g_loss, float* gXp, float* gscale_part,
//        int BX, int BY, int D, int mode, int doff, int n_mean, int prec)
//    n_mean: BA, the count the loss averages over. doff: the positive of X-row r is Y-column r + doff
//    (0 two-dir; +off for gA one-dir; -off for gP one-dir).
//    g_lse_x, g_lse_y: nullable gradients reaching the saved lse outputs (the 8-input form of
//    Op::InfoNceBackward), on the same side as lse_x / lse_y: the exp(l - lse_x[i]) term is weighted
//    by (g + g_lse_x[i]) and the exp(l - lse_y[j]) term by (g + g_lse_y[j]); the diagonal term stays
//    cd * g.
//    gX_i = s sum_j round(gLogit(X_i, Y_j)) round(Y_j) for the orientation's rows X.
//    mode 0 (two-dir): gLogit = g (exp(l - lse_x[i]) + exp(l - lse_y[j]) - 2 d_ij)
//      gA: X=A, Y=P, lse_x=lse_row, lse_y=lse_col;   gP: X=P, Y=A, lse_x=lse_col, lse_y=lse_row.
//    mode 1 (one-dir, gA): X=A, Y=P, lse_x=lse_row, lse_y=nullptr: gLogit = g (exp(l - lse_x[i]) - d_ij)
//    mode 2 (one-dir, gP): X=P, Y=A, lse_x=nullptr, lse_y=lse_row: gLogit = g (exp(l - lse_y[j]) - d_ij)
//    gXp: [KS, BX, D]; block (rt, ks) fully writes rows of slice ks (zero-initialised in-kernel,
//      then read-modify-write per column tile, so no memset needed and no atomics).
//      KS == 1: pass gX itself. KS > 1: then infonce_sum_parts_f32(gXp, gX, KS, BX*D).
//    gscale_part: [nrt*KS] nullable; per-block partial of sum_ij gLogit_ij * logit_ij, index
//      blockIdx.y*nrt + blockIdx.x. Pass it in exactly one of the two orientations (the gA one).
// 6. infonce_sum_parts_f32(const float* parts, float* out, int KS, int n)
//    out[i] = sum_{k < KS} parts[k*n + i] in k order. Flat: block 256, grid ceil(n/256) (any).
// 7. infonce_gscale_f32(const float* gscale_part, int nparts, const float* logit_scale, float* g_scale)
//    g_scale[0] = (exp(logit_scale) <= 100 ? sum of the partials (f64, fixed order) : 0). grid 1, block 256.
#include "common.cuh"

#define IT 64   // tile edge
#define IK 32   // D chunk
#define INEG (-__int_as_float(0x7f800000))

__device__ __forceinline__ float clip_scale(const float* logit_scale) { return fminf(expf(*logit_scale), 100.f); }

// An operand as the tensor cores of mode `prec` read it (the bit operations of Precision::round_f32).
// tf32: 10 mantissa bits, to nearest, ties away from zero (cvt.rna); bf16: 7 bits, to nearest even.
// inf / NaN pass through (a NaN made quiet: the tensor cores drop the low mantissa bits, which may be all
// of its payload, and would read inf); a carry past the largest finite value gives inf, as the conversions do.
__device__ __forceinline__ float round_operand(float x, int prec) {
    if (prec == 0) return x;
    const unsigned u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return (u & 0x007fffffu) ? __uint_as_float(u | 0x00400000u) : x;
    if (prec == 1) return __uint_as_float((u + 0x1000u) & 0xffffe000u);
    return __uint_as_float((u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u);
}

// acc[a][b] = <X[r0+ty+16a], Y[c0+tx+16b]> over all D, on rounded operands (zero outside BX / BY / D).
__device__ __forceinline__ void tile_dot(const float* __restrict__ X, const float* __restrict__ Y, int r0, int c0,
                                         int BX, int BY, int D, int prec, float (*Xs)[IK + 1], float (*Ys)[IK + 1],
                                         float acc[4][4]) {
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] = 0.f;
    for (int d0 = 0; d0 < D; d0 += IK) {
#pragma unroll
        for (int l = 0; l < (IT * IK) / 256; ++l) {
            const int idx = threadIdx.x + 256 * l;
            const int r = idx >> 5, c = idx & 31;
            const int gd = d0 + c;
            const int gr = r0 + r, gc = c0 + r;
            Xs[r][c] = (gr < BX && gd < D) ? round_operand(X[(i64)gr * D + gd], prec) : 0.f;
            Ys[r][c] = (gc < BY && gd < D) ? round_operand(Y[(i64)gc * D + gd], prec) : 0.f;
        }
        __syncthreads();
#pragma unroll 8
        for (int c = 0; c < IK; ++c) {
            float xa[4], yb[4];
#pragma unroll
            for (int a = 0; a < 4; ++a) xa[a] = Xs[ty + 16 * a][c];
#pragma unroll
            for (int b = 0; b < 4; ++b) yb[b] = Ys[tx + 16 * b][c];
#pragma unroll
            for (int a = 0; a < 4; ++a)
#pragma unroll
                for (int b = 0; b < 4; ++b) acc[a][b] = fmaf(xa[a], yb[b], acc[a][b]);
        }
        __syncthreads();
    }
}

// Reductions over the 16 threads (tx) that share a tile row: xor offsets < 16 stay in the half-warp.
__device__ __forceinline__ float half_max(float v) {
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(GSHN_FULL_MASK, v, o));
    return v;
}
__device__ __forceinline__ float half_sum(float v) {
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(GSHN_FULL_MASK, v, o);
    return v;
}

extern "C" __global__ void __launch_bounds__(256) infonce_lse_partial_f32(const float* __restrict__ X,
                                                                         const float* __restrict__ Y,
                                                                         const float* __restrict__ logit_scale,
                                                                         float* __restrict__ pm, float* __restrict__ pl,
                                                                         int BX, int BY, int D, int prec) {
    __shared__ float Xs[IT][IK + 1], Ys[IT][IK + 1];
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const float s = clip_scale(logit_scale);
    const int r0 = blockIdx.x * IT, ks = blockIdx.y, KS = gridDim.y;
    const int nct = (BY + IT - 1) / IT;
    float m[4], l[4];
#pragma unroll
    for (int a = 0; a < 4; ++a) { m[a] = INEG; l[a] = 0.f; }
    for (int ct = ks; ct < nct; ct += KS) {
        const int c0 = ct * IT;
        float acc[4][4];
        tile_dot(X, Y, r0, c0, BX, BY, D, prec, Xs, Ys, acc);
#pragma unroll
        for (int a = 0; a < 4; ++a) {
            float v[4];
            float tm = INEG;
#pragma unroll
            for (int b = 0; b < 4; ++b) {
                v[b] = (c0 + tx + 16 * b < BY) ? s * acc[a][b] : INEG;
                tm = fmaxf(tm, v[b]);
            }
            tm = half_max(tm);  // finite: column c0 < B is always valid
            float ts = 0.f;
#pragma unroll
            for (int b = 0; b < 4; ++b) ts += expf(v[b] - tm);
            ts = half_sum(ts);
            const float mn = fmaxf(m[a], tm);
            l[a] = l[a] * expf(m[a] - mn) + ts * expf(tm - mn);
            m[a] = mn;
        }
    }
    if (tx == 0) {
#pragma unroll
        for (int a = 0; a < 4; ++a) {
            const int row = r0 + ty + 16 * a;
            if (row < BX) {
                pm[(i64)ks * BX + row] = m[a];
                pl[(i64)ks * BX + row] = l[a];
            }
        }
    }
}

extern "C" __global__ void infonce_lse_merge_f32(const float* __restrict__ pm, const float* __restrict__ pl,
                                                 float* __restrict__ lse, int B, int KS) {
    GRID_STRIDE(i, B) {
        float m = INEG, l = 0.f;
        for (int k = 0; k < KS; ++k) {
            const float lk = pl[(i64)k * B + i];
            if (lk > 0.f) {  // skip empty splits (KS > nct)
                const float mk = pm[(i64)k * B + i];
                const float mn = fmaxf(m, mk);
                l = l * expf(m - mn) + lk * expf(mk - mn);
                m = mn;
            }
        }
        lse[i] = m + logf(l);
    }
}

extern "C" __global__ void infonce_diag_f32(const float* __restrict__ A, const float* __restrict__ P,
                                            const float* __restrict__ logit_scale, float* __restrict__ diag, int B,
                                            int D, int off, int prec) {
    const float s = clip_scale(logit_scale);
    const int lane = lane_id();
    WARP_STRIDE(i, B) {
        float acc = 0.f;
        for (int d = lane; d < D; d += 32)
            acc += round_operand(A[(i64)i * D + d], prec) * round_operand(P[(i64)(i + off) * D + d], prec);
        acc = warp_sum(acc);
        if (lane == 0) diag[i] = s * acc;
    }
}

extern "C" __global__ void infonce_loss_f32(const float* __restrict__ lse_row, const float* __restrict__ lse_col,
                                            const float* __restrict__ diag, float* __restrict__ loss, int B) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < B; i += blockDim.x) {
        acc += (double)lse_row[i] - (double)diag[i];
        if (lse_col) acc += (double)lse_col[i] - (double)diag[i];
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) loss[0] = (float)(lse_col ? 0.5 * acc / B : acc / B);
}

extern "C" __global__ void __launch_bounds__(256) infonce_bwd_f32(
    const float* __restrict__ X, const float* __restrict__ Y, const float* __restrict__ lse_x,
    const float* __restrict__ lse_y, const float* __restrict__ g_lse_x, const float* __restrict__ g_lse_y,
    const float* __restrict__ logit_scale, const float* __restrict__ g_loss,
    float* __restrict__ gXp, float* __restrict__ gscale_part, int BX, int BY, int D, int mode, int doff, int n_mean,
    int prec) {
    __shared__ float Xs[IT][IK + 1], Ys[IT][IK + 1];
    __shared__ float Gs[IT][IT + 1];
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const float s = clip_scale(logit_scale);
    const float g = mode == 0 ? *g_loss / (2.f * (float)n_mean) : *g_loss / (float)n_mean;
    const bool use_x = mode != 2, use_y = mode != 1;
    const float cd = mode == 0 ? 2.f : 1.f;
    const int r0 = blockIdx.x * IT, ks = blockIdx.y, KS = gridDim.y;
    const int nct = (BY + IT - 1) / IT;
    float* out = gXp + (i64)ks * BX * D;

    // Zero this block's rows of its slice (same element -> thread mapping as the accumulation below).
    for (int d0 = 0; d0 < D; d0 += IK)
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int b = 0; b < 2; ++b) {
                const int row = r0 + ty + 16 * a, d = d0 + tx + 16 * b;
                if (row < BX && d < D) out[(i64)row * D + d] = 0.f;
            }
    float lx[4], wx[4];
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const int row = r0 + ty + 16 * a;
        lx[a] = (use_x && row < BX) ? lse_x[row] : 0.f;
        wx[a] = (g_lse_x && use_x && row < BX) ? g + g_lse_x[row] : g;
    }
    float gsc = 0.f;
    for (int ct = ks; ct < nct; ct += KS) {
        const int c0 = ct * IT;
        float acc[4][4];
        tile_dot(X, Y, r0, c0, BX, BY, D, prec, Xs, Ys, acc);
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            const int col = c0 + tx + 16 * b;
            const float ly = (use_y && col < BY) ? lse_y[col] : 0.f;
            const float wy = (g_lse_y && use_y && col < BY) ? g + g_lse_y[col] : g;
#pragma unroll
            for (int a = 0; a < 4; ++a) {
                const int row = r0 + ty + 16 * a;
                float gl = 0.f;
                if (row < BX && col < BY) {
                    const float lg = s * acc[a][b];
                    if (use_x) gl += wx[a] * expf(lg - lx[a]);
                    if (use_y) gl += wy * expf(lg - ly);
                    if (col - row == doff) gl -= cd * g;
                    gsc += gl * lg;
                }
                Gs[ty + 16 * a][tx + 16 * b] = round_operand(gl, prec);
            }
        }
        __syncthreads();
        // out[rows, :] += s Gs[64 x 64] . Y[c0 .. c0+63, :], 32 dims at a time.
        for (int d0 = 0; d0 < D; d0 += IK) {
#pragma unroll
            for (int l = 0; l < (IT * IK) / 256; ++l) {
                const int idx = threadIdx.x + 256 * l;
                const int r = idx >> 5, c = idx & 31;
                const int gc = c0 + r, gd = d0 + c;
                Ys[r][c] = (gc < BY && gd < D) ? round_operand(Y[(i64)gc * D + gd], prec) : 0.f;
            }
            __syncthreads();
            float o[4][2];
#pragma unroll
            for (int a = 0; a < 4; ++a) { o[a][0] = 0.f; o[a][1] = 0.f; }
#pragma unroll 8
            for (int c = 0; c < IT; ++c) {
                const float y0 = Ys[c][tx], y1 = Ys[c][tx + 16];
#pragma unroll
                for (int a = 0; a < 4; ++a) {
                    const float gv = Gs[ty + 16 * a][c];
                    o[a][0] = fmaf(gv, y0, o[a][0]);
                    o[a][1] = fmaf(gv, y1, o[a][1]);
                }
            }
#pragma unroll
            for (int a = 0; a < 4; ++a)
#pragma unroll
                for (int b = 0; b < 2; ++b) {
                    const int row = r0 + ty + 16 * a, d = d0 + tx + 16 * b;
                    if (row < BX && d < D) out[(i64)row * D + d] += s * o[a][b];
                }
            __syncthreads();
        }
    }
    if (gscale_part) {
        const float tot = block_sum(gsc);
        if (threadIdx.x == 0) gscale_part[(i64)blockIdx.y * gridDim.x + blockIdx.x] = tot;
    }
}

extern "C" __global__ void infonce_sum_parts_f32(const float* __restrict__ parts, float* __restrict__ out, int KS,
                                                 int n) {
    GRID_STRIDE(i, n) {
        float acc = 0.f;
        for (int k = 0; k < KS; ++k) acc += parts[(i64)k * n + i];
        out[i] = acc;
    }
}

extern "C" __global__ void infonce_gscale_f32(const float* __restrict__ gscale_part, int nparts,
                                              const float* __restrict__ logit_scale, float* __restrict__ g_scale) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) acc += (double)gscale_part[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) g_scale[0] = expf(*logit_scale) <= 100.f ? (float)acc : 0.f;
}

// ================================================================================================
// One-pass tile path (the CPU's algorithm): prec 0 = f32 by FMA, 1 = tf32 via mma.sync.m16n8k8, 2 = bf16
// via mma.sync.m16n8k16 (sm_80+); the same contract as above, on 64x64 tiles, block = EXACTLY 128 threads
// (4 warps, 2x2, each warp a 32x32 sub-tile: 2 m16 x 4 n8 accumulators in the mma.sync C layout).
// Operands are rounded to the mode on their way into shared memory (round_operand), so the tensor cores
// read exactly the CPU reference's operands; accumulation is f32. Static shared memory only.
//
// 8. infonce_tc_lse_f32(const float* X, const float* Y, const float* logit_scale,
//        float* row_pm, float* row_pl, float* col_pm, float* col_pl, int BX, int BY, int D, int prec, int G)
//    ONE pass for both statistics. grid = (G, KS): block (g, ks) takes the row tiles
//    [g*nrt/G, (g+1)*nrt/G) in order and, for each, the column tiles ks, ks+KS, ... in order.
//    row_pm/row_pl [KS, BX]: the row statistics of split ks (merge with infonce_lse_merge over KS).
//    col_pm/col_pl [G, BY] (nullable: one-directional): the column statistics of group g over its
//    rows, read-modify-written only by the blocks (g, ks) that own the column (merge over G).
//    Every sum has a fixed order: the result depends only on (BX, BY, D, G, KS).
// 9. infonce_tc_bwd_f32(const float* X, const float* Y, const float* lse_x, const float* lse_y,
//        const float* g_lse_x, const float* g_lse_y, const float* logit_scale, const float* g_loss,
//        float* gX, float* gY, float* gscale_part, int BX, int BY, int D, int sym, int doff, int step,
//        int t_lo, int prec)
//    One anti-diagonal step of the backward: block b takes tile (t, u) = (t_lo + b, step - t_lo - b),
//    recomputes its logits once and adds both its gX rows (s G Y_u) and its gY rows (s G^T X_t). Launch
//    steps 0 .. nrt+nct-2 in order with grid = the tiles on that anti-diagonal: no two blocks of a
//    launch share a gX or gY row block, and every row block sums its tiles in index order (u == 0 /
//    t == 0 writes instead of adding). gscale_part [nrt*nct]: tile (t, u) writes its sum of
//    gLogit * logit at t*nct + u (reduce with infonce_gscale over nrt*nct).
//    X = A (rows BX = B), Y = P (BY = B or B_all); lse_y / g_lse_y nullable when sym == 0;
//    gLogit = wx_i exp(l - lse_x_i) [+ wy_j exp(l - lse_y_j)] - cd g [j - i == doff].

#define TT 64   // tile edge
#define TK 32   // D chunk of the logits
#define TS (TK + 4)
#define GS (TT + 4)

// 32-bit register holding two bf16 (lo = the first): inputs are already rounded to bf16, so this is exact.
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    return (__float_as_uint(lo) >> 16) | (__float_as_uint(hi) & 0xffff0000u);
}

// acc += A(16 x k) B(k x 8) for one k step of the mode. `a(r, k)` and `b(k, n)` read the operands
// (already rounded) from shared memory; (r0, n0, k0) place the step.
template <int PREC, typename FA, typename FB>
__device__ __forceinline__ void mma_step(float acc[4], FA a, FB b, int r0, int n0, int k0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    if (PREC == 1) {
        const unsigned a0 = __float_as_uint(a(r0 + g, k0 + t)), a1 = __float_as_uint(a(r0 + g + 8, k0 + t));
        const unsigned a2 = __float_as_uint(a(r0 + g, k0 + t + 4)), a3 = __float_as_uint(a(r0 + g + 8, k0 + t + 4));
        const unsigned b0 = __float_as_uint(b(k0 + t, n0 + g)), b1 = __float_as_uint(b(k0 + t + 4, n0 + g));
        asm volatile(
            "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    } else {
        const int c = 2 * t;
        const unsigned a0 = pack_bf16(a(r0 + g, k0 + c), a(r0 + g, k0 + c + 1));
        const unsigned a1 = pack_bf16(a(r0 + g + 8, k0 + c), a(r0 + g + 8, k0 + c + 1));
        const unsigned a2 = pack_bf16(a(r0 + g, k0 + c + 8), a(r0 + g, k0 + c + 9));
        const unsigned a3 = pack_bf16(a(r0 + g + 8, k0 + c + 8), a(r0 + g + 8, k0 + c + 9));
        const unsigned b0 = pack_bf16(b(k0 + c, n0 + g), b(k0 + c + 1, n0 + g));
        const unsigned b1 = pack_bf16(b(k0 + c + 8, n0 + g), b(k0 + c + 9, n0 + g));
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
}

// Where accumulator element (mi, ni, r) of this thread sits in the 64x64 tile (the mma.sync C layout,
// kept by the f32 path too).
__device__ __forceinline__ int acc_row(int mi, int r) {
    return ((threadIdx.x >> 5) >> 1) * 32 + 16 * mi + ((threadIdx.x & 31) >> 2) + 8 * (r >> 1);
}
__device__ __forceinline__ int acc_col(int ni, int r) {
    return ((threadIdx.x >> 5) & 1) * 32 + 8 * ni + 2 * (threadIdx.x & 3) + (r & 1);
}

// The warp's 32x32 part of a 64x64 product over k = 0 .. K-1 (K a multiple of the mode's k step):
// acc[mi][ni][4] += A[wr + 16 mi .. , k] B[k, wc + 8 ni ..]. PREC 0 (exact f32): each thread's 32
// elements by FMA in k order, from its 4 rows and 8 columns; 1 and 2: tensor cores.
template <int PREC, typename FA, typename FB>
__device__ __forceinline__ void warp_tile(float acc[2][4][4], FA a, FB b, int K) {
    if (PREC == 0) {
        for (int k = 0; k < K; ++k) {
            float av[2][2], bv[4][2];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int h = 0; h < 2; ++h) av[mi][h] = a(acc_row(mi, 2 * h), k);
#pragma unroll
            for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                for (int q = 0; q < 2; ++q) bv[ni][q] = b(k, acc_col(ni, q));
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                    for (int r = 0; r < 4; ++r)
                        acc[mi][ni][r] = fmaf(av[mi][r >> 1], bv[ni][r & 1], acc[mi][ni][r]);
        }
        return;
    }
    const int warp = threadIdx.x >> 5, wr = (warp >> 1) * 32, wc = (warp & 1) * 32;
    const int KSTEP = PREC == 1 ? 8 : 16;
    for (int k0 = 0; k0 < K; k0 += KSTEP)
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) mma_step<PREC>(acc[mi][ni], a, b, wr + 16 * mi, wc + 8 * ni, k0);
}


// acc = X[r0 .. r0+63] . Y[c0 .. c0+63]^T over all D on rounded operands (zero outside BX / BY / D).
// smem: 2 * TT * TS floats.
template <int PREC>
__device__ __forceinline__ void tc_logits(const float* __restrict__ X, const float* __restrict__ Y, int r0, int c0,
                                          int BX, int BY, int D, float* smem, float acc[2][4][4]) {
    float* Xs = smem;
    float* Ys = smem + TT * TS;
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.f;
    for (int d0 = 0; d0 < D; d0 += TK) {
        for (int idx = threadIdx.x; idx < TT * TK; idx += blockDim.x) {
            const int r = idx / TK, c = idx % TK, gd = d0 + c;
            Xs[r * TS + c] = (r0 + r < BX && gd < D) ? round_operand(X[(i64)(r0 + r) * D + gd], PREC) : 0.f;
            Ys[r * TS + c] = (c0 + r < BY && gd < D) ? round_operand(Y[(i64)(c0 + r) * D + gd], PREC) : 0.f;
        }
        __syncthreads();
        warp_tile<PREC>(
            acc, [&](int r, int k) { return Xs[r * TS + k]; }, [&](int k, int n) { return Ys[n * TS + k]; }, TK);
        __syncthreads();
    }
}

// (m, l) = (max, sum exp(v - max)) of this thread's N values and those of the lanes xor o, o = o0, 2 o0,
// ... < o1 (the lanes holding the same tile row or column). All -inf gives (-inf, 0).
template <int N>
__device__ __forceinline__ void lanes_lse(const float (&v)[N], int o0, int o1, float& m, float& l) {
    m = INEG;
#pragma unroll
    for (int k = 0; k < N; ++k) m = fmaxf(m, v[k]);
    for (int o = o0; o < o1; o <<= 1) m = fmaxf(m, __shfl_xor_sync(GSHN_FULL_MASK, m, o));
    l = 0.f;
    if (m != INEG)
#pragma unroll
        for (int k = 0; k < N; ++k) l += expf(v[k] - m);
    for (int o = o0; o < o1; o <<= 1) l += __shfl_xor_sync(GSHN_FULL_MASK, l, o);
}

// Online (max, sum) merge that treats an empty side (max -inf) as nothing.
__device__ __forceinline__ void ms_merge(float& m, float& l, float m2, float l2) {
    const float mn = fmaxf(m, m2);
    if (mn == INEG) return;
    l = (m == INEG ? 0.f : l * expf(m - mn)) + (m2 == INEG ? 0.f : l2 * expf(m2 - mn));
    m = mn;
}

template <int PREC>
__device__ void tc_lse(const float* __restrict__ X, const float* __restrict__ Y, const float* __restrict__ logit_scale,
                       float* __restrict__ row_pm, float* __restrict__ row_pl, float* __restrict__ col_pm,
                       float* __restrict__ col_pl, int BX, int BY, int D, int G, float* smem,
                       float (*part_m)[TT], float (*part_l)[TT], float* run_m, float* run_l) {
    const float s = clip_scale(logit_scale);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nrt = (BX + TT - 1) / TT, nct = (BY + TT - 1) / TT;
    const int g = blockIdx.x, ks = blockIdx.y, KS = gridDim.y;
    const int t0 = (int)((i64)g * nrt / G), t1 = (int)((i64)(g + 1) * nrt / G);
    for (int t = t0; t < t1; ++t) {
        const int r0 = t * TT;
        if (threadIdx.x < TT) { run_m[threadIdx.x] = INEG; run_l[threadIdx.x] = 0.f; }
        for (int u = ks; u < nct; u += KS) {
            const int c0 = u * TT;
            float acc[2][4][4];
            tc_logits<PREC>(X, Y, r0, c0, BX, BY, D, smem, acc);
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                    for (int r = 0; r < 4; ++r) {
                        const bool in = r0 + acc_row(mi, r) < BX && c0 + acc_col(ni, r) < BY;
                        acc[mi][ni][r] = in ? s * acc[mi][ni][r] : INEG;
                    }
            // Rows: this thread's 8 values of each of its 4 rows, then the quad, then the two column warps.
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    float v[8];
#pragma unroll
                    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                        for (int q = 0; q < 2; ++q) v[2 * ni + q] = acc[mi][ni][2 * h + q];
                    float m, l;
                    lanes_lse(v, 1, 4, m, l);
                    if ((lane & 3) == 0) {
                        part_m[warp & 1][acc_row(mi, 2 * h)] = m;
                        part_l[warp & 1][acc_row(mi, 2 * h)] = l;
                    }
                }
            __syncthreads();
            if (threadIdx.x < TT) {
                const int i = threadIdx.x;
                ms_merge(run_m[i], run_l[i], part_m[0][i], part_l[0][i]);
                ms_merge(run_m[i], run_l[i], part_m[1][i], part_l[1][i]);
            }
            __syncthreads();
            if (col_pm) {
                // Columns: this thread's 4 values of each of its 8 columns, then the 8 lanes sharing
                // the column, then the two row warps, then the group's running statistics.
#pragma unroll
                for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                    for (int q = 0; q < 2; ++q) {
                        float v[4];
#pragma unroll
                        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                            for (int h = 0; h < 2; ++h) v[2 * mi + h] = acc[mi][ni][2 * h + q];
                        float m, l;
                        lanes_lse(v, 4, 32, m, l);
                        if ((lane >> 2) == 0) {
                            part_m[warp >> 1][acc_col(ni, q)] = m;
                            part_l[warp >> 1][acc_col(ni, q)] = l;
                        }
                    }
                __syncthreads();
                if (threadIdx.x < TT && c0 + threadIdx.x < BY) {
                    const int j = threadIdx.x;
                    const i64 at = (i64)g * BY + c0 + j;
                    float m = t == t0 ? INEG : col_pm[at], l = t == t0 ? 0.f : col_pl[at];
                    ms_merge(m, l, part_m[0][j], part_l[0][j]);
                    ms_merge(m, l, part_m[1][j], part_l[1][j]);
                    col_pm[at] = m;
                    col_pl[at] = l;
                }
                __syncthreads();
            }
        }
        if (threadIdx.x < TT && r0 + threadIdx.x < BX) {
            row_pm[(i64)ks * BX + r0 + threadIdx.x] = run_m[threadIdx.x];
            row_pl[(i64)ks * BX + r0 + threadIdx.x] = run_l[threadIdx.x];
        }
        __syncthreads();
    }
}

extern "C" __global__ void __launch_bounds__(128) infonce_tc_lse_f32(
    const float* __restrict__ X, const float* __restrict__ Y, const float* __restrict__ logit_scale,
    float* __restrict__ row_pm, float* __restrict__ row_pl, float* __restrict__ col_pm, float* __restrict__ col_pl,
    int BX, int BY, int D, int prec, int G) {
    // Declared here, not in the templates, so both instantiations share them.
    __shared__ float smem[2 * TT * TS];
    __shared__ float part_m[2][TT], part_l[2][TT];  // per-warp-half partials (rows or columns)
    __shared__ float run_m[TT], run_l[TT];          // running row statistics of the current row tile
    if (prec == 0)
        tc_lse<0>(X, Y, logit_scale, row_pm, row_pl, col_pm, col_pl, BX, BY, D, G, smem, part_m, part_l, run_m, run_l);
    else if (prec == 1)
        tc_lse<1>(X, Y, logit_scale, row_pm, row_pl, col_pm, col_pl, BX, BY, D, G, smem, part_m, part_l, run_m, run_l);
    else
        tc_lse<2>(X, Y, logit_scale, row_pm, row_pl, col_pm, col_pl, BX, BY, D, G, smem, part_m, part_l, run_m, run_l);
}

// out[rows o0 .., 0 .. D) (+)= s * L(64 x 64) . R(64 x D), L read from shared `l(r, k)`, R's rows from
// global `Rg` starting at row q0 (valid below BR), 64 dims at a time through `Rs` (TT * GS floats).
template <int PREC, typename FL>
__device__ __forceinline__ void tc_product(FL l, const float* __restrict__ Rg, int q0, int BR, float* __restrict__ out,
                                           int o0, int BO, int D, float s, bool first, float* Rs) {
    for (int d0 = 0; d0 < D; d0 += TT) {
        for (int idx = threadIdx.x; idx < TT * TT; idx += blockDim.x) {
            const int k = idx / TT, c = idx % TT, gd = d0 + c;
            Rs[k * GS + c] = (q0 + k < BR && gd < D) ? round_operand(Rg[(i64)(q0 + k) * D + gd], PREC) : 0.f;
        }
        __syncthreads();
        float acc[2][4][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.f;
        warp_tile<PREC>(acc, l, [&](int k, int n) { return Rs[k * GS + n]; }, TT);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int row = o0 + acc_row(mi, r), d = d0 + acc_col(ni, r);
                    if (row < BO && d < D) {
                        float* o = out + (i64)row * D + d;
                        *o = (first ? 0.f : *o) + s * acc[mi][ni][r];
                    }
                }
        __syncthreads();
    }
}

template <int PREC>
__device__ void tc_bwd(const float* __restrict__ X, const float* __restrict__ Y, const float* __restrict__ lse_x,
                       const float* __restrict__ lse_y, const float* __restrict__ g_lse_x,
                       const float* __restrict__ g_lse_y, const float* __restrict__ logit_scale,
                       const float* __restrict__ g_loss, float* __restrict__ gX, float* __restrict__ gY,
                       float* __restrict__ gscale_part, int BX, int BY, int D, int sym, int doff, int step, int t_lo,
                       float* smem, float* Gs) {
    const float s = clip_scale(logit_scale);
    const float g = sym ? *g_loss / (2.f * (float)BX) : *g_loss / (float)BX;
    const float cd = sym ? 2.f : 1.f;
    const int nct = (BY + TT - 1) / TT;
    const int t = t_lo + blockIdx.x, u = step - t;
    const int r0 = t * TT, c0 = u * TT;
    float acc[2][4][4];
    tc_logits<PREC>(X, Y, r0, c0, BX, BY, D, smem, acc);
    float gsc = 0.f;
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int i = acc_row(mi, r), j = acc_col(ni, r), row = r0 + i, col = c0 + j;
                float gl = 0.f;
                if (row < BX && col < BY) {
                    const float lg = s * acc[mi][ni][r];
                    const float wx = g_lse_x ? g + g_lse_x[row] : g;
                    gl = wx * expf(lg - lse_x[row]);
                    if (sym) gl += (g_lse_y ? g + g_lse_y[col] : g) * expf(lg - lse_y[col]);
                    if (col - row == doff) gl -= cd * g;
                    gsc += gl * lg;
                }
                Gs[i * GS + j] = round_operand(gl, PREC);
            }
    const float tot = block_sum(gsc);  // synchronises the block: Gs is complete
    if (threadIdx.x == 0) gscale_part[(i64)t * nct + u] = tot;
    __syncthreads();
    float* Rs = smem;
    // gX[t rows] (+)= s G Y_u ;  gY[u rows] (+)= s G^T X_t.
    tc_product<PREC>([&](int r, int k) { return Gs[r * GS + k]; }, Y, c0, BY, gX, r0, BX, D, s, u == 0, Rs);
    tc_product<PREC>([&](int r, int k) { return Gs[k * GS + r]; }, X, r0, BX, gY, c0, BY, D, s, t == 0, Rs);
}

extern "C" __global__ void __launch_bounds__(128) infonce_tc_bwd_f32(
    const float* __restrict__ X, const float* __restrict__ Y, const float* __restrict__ lse_x,
    const float* __restrict__ lse_y, const float* __restrict__ g_lse_x, const float* __restrict__ g_lse_y,
    const float* __restrict__ logit_scale, const float* __restrict__ g_loss, float* __restrict__ gX,
    float* __restrict__ gY, float* __restrict__ gscale_part, int BX, int BY, int D, int sym, int doff, int step,
    int t_lo, int prec) {
    __shared__ float smem[2 * TT * TS];  // the logits' operands, then the products' right-hand side
    __shared__ float Gs[TT * GS];        // the rounded logit gradient of the tile
    if (prec == 0)
        tc_bwd<0>(X, Y, lse_x, lse_y, g_lse_x, g_lse_y, logit_scale, g_loss, gX, gY, gscale_part, BX, BY, D, sym, doff,
                  step, t_lo, smem, Gs);
    else if (prec == 1)
        tc_bwd<1>(X, Y, lse_x, lse_y, g_lse_x, g_lse_y, logit_scale, g_loss, gX, gY, gscale_part, BX, BY, D, sym, doff,
                  step, t_lo, smem, Gs);
    else
        tc_bwd<2>(X, Y, lse_x, lse_y, g_lse_x, g_lse_y, logit_scale, g_loss, gX, gY, gscale_part, BX, BY, D, sym, doff,
                  step, t_lo, smem, Gs);
}
