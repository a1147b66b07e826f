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
// reference semantics of src/backend/cpu/infonce.rs on SIMT tiles (correct in every mode; the tensor-core
// path is separate work).
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
// inf / NaN pass through; a carry past the largest finite value gives inf, as the conversions do.
__device__ __forceinline__ float round_operand(float x, int prec) {
    if (prec == 0) return x;
    const unsigned u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return x;
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
