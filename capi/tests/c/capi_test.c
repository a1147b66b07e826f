/* Exercises include/gshn.h on the CPU path: runs every entry point on deterministic inputs and
 * writes inputs and results to argv[1] ("name count v0 v1 ..." per line) for tests/capi.rs to
 * check against the Rust ops; checks the error paths. Exit 0 on success. */
#include "gshn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint32_t state = 12345u;
static float rnd(void) { /* uniform in [-1, 1) */
    state = state * 1664525u + 1013904223u;
    return (float)((state >> 8) / 16777216.0) * 2.0f - 1.0f;
}
static void fill(float *v, int n, float scale, float shift) {
    for (int i = 0; i < n; i++) v[i] = scale * rnd() + shift;
}
static void dump(FILE *f, const char *name, const float *v, int n) {
    fprintf(f, "%s %d", name, n);
    for (int i = 0; i < n; i++) fprintf(f, " %.9g", v[i]);
    fprintf(f, "\n");
}
static void dumpi(FILE *f, const char *name, const int32_t *v, int n) {
    fprintf(f, "%s %d", name, n);
    for (int i = 0; i < n; i++) fprintf(f, " %d", v[i]);
    fprintf(f, "\n");
}

#define CHECK(call)                                                                         \
    do {                                                                                    \
        int rc_ = (call);                                                                   \
        if (rc_ != GSHN_OK) {                                                               \
            fprintf(stderr, "%s:%d: %s returned %d: %s\n", __FILE__, __LINE__, #call, rc_,  \
                    gshn_last_error());                                                     \
            return 1;                                                                       \
        }                                                                                   \
        if (gshn_last_error()[0] != 0) {                                                    \
            fprintf(stderr, "%s:%d: success left an error message\n", __FILE__, __LINE__); \
            return 1;                                                                       \
        }                                                                                   \
    } while (0)

#define EXPECT_ERR(call, code)                                                              \
    do {                                                                                    \
        int rc_ = (call);                                                                   \
        if (rc_ != (code) || gshn_last_error()[0] == 0) {                                   \
            fprintf(stderr, "%s:%d: %s returned %d (want %d), message \"%s\"\n", __FILE__,  \
                    __LINE__, #call, rc_, (code), gshn_last_error());                       \
            return 1;                                                                       \
        }                                                                                   \
        printf("expected error %d: %s\n", rc_, gshn_last_error());                         \
    } while (0)

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    FILE *f = fopen(argv[1], "w");
    if (!f) return 2;
    if (gshn_abi_version() != GSHN_ABI_VERSION) {
        fprintf(stderr, "ABI version %d, header %d\n", gshn_abi_version(), GSHN_ABI_VERSION);
        return 1;
    }

    /* ---- LIF: T=5, N=7, soft reset, sigmoid surrogate, PLIF gradient ---- */
    enum { T = 5, NN = 7, TN = T * NN };
    float x[TN], spikes[TN], v[TN], h[TN], gs[TN], gv[TN], gx[TN], gtau = 0;
    fill(x, TN, 1.2f, 0.8f);
    fill(gs, TN, 1.0f, 0.0f);
    fill(gv, TN, 1.0f, 0.0f);
    gshn_lif_params lp = gshn_lif_params_default();
    lp.hard_reset = 0;
    lp.surrogate = GSHN_SURROGATE_SIGMOID;
    lp.alpha = 4.0;
    lp.tau = 2.5;
    CHECK(gshn_lif_forward_cpu(&lp, GSHN_F32, T, NN, x, spikes, v, h));
    CHECK(gshn_lif_backward_cpu(&lp, GSHN_F32, T, NN, h, gs, gv, gx, &gtau));
    dump(f, "lif.x", x, TN);
    dump(f, "lif.grad_spikes", gs, TN);
    dump(f, "lif.grad_v", gv, TN);
    dump(f, "lif.spikes", spikes, TN);
    dump(f, "lif.v", v, TN);
    dump(f, "lif.h", h, TN);
    dump(f, "lif.grad_x", gx, TN);
    dump(f, "lif.grad_tau", &gtau, 1);

    /* ---- GAT: N=6 (node 5 has no in-edge), H=2, F=3, E=10, with edge bias ---- */
    enum { N = 6, H = 2, F = 3, E = 10, NHF = N * H * F };
    int32_t row_ptr[N + 1] = {0, 2, 5, 6, 8, 10, 10};
    int32_t src[E] = {0, 1, 1, 2, 0, 2, 3, 0, 4, 1};
    gshn_graph g = {N, E, row_ptr, src};
    float z[NHF], as[H * F], ad[H * F], eb[E * H], out[NHF], lse[N * H], alpha[E * H];
    float gout[NHF], gz[NHF], gas[H * F], gad[H * F], geb[E * H];
    fill(z, NHF, 1.0f, 0.0f);
    fill(as, H * F, 1.0f, 0.0f);
    fill(ad, H * F, 1.0f, 0.0f);
    fill(eb, E * H, 0.5f, 0.0f);
    fill(gout, NHF, 1.0f, 0.0f);
    CHECK(gshn_gat_forward_cpu(GSHN_F32, &g, H, F, 0.2, z, as, ad, eb, out, lse, alpha));
    CHECK(gshn_gat_backward_cpu(GSHN_F32, &g, H, F, 0.2, z, as, ad, eb, out, lse, gout, gz, gas,
                                gad, geb));
    dumpi(f, "gat.row_ptr", row_ptr, N + 1);
    dumpi(f, "gat.src", src, E);
    dump(f, "gat.z", z, NHF);
    dump(f, "gat.a_src", as, H * F);
    dump(f, "gat.a_dst", ad, H * F);
    dump(f, "gat.edge_bias", eb, E * H);
    dump(f, "gat.grad_out", gout, NHF);
    dump(f, "gat.out", out, NHF);
    dump(f, "gat.lse", lse, N * H);
    dump(f, "gat.alpha", alpha, E * H);
    dump(f, "gat.grad_z", gz, NHF);
    dump(f, "gat.grad_a_src", gas, H * F);
    dump(f, "gat.grad_a_dst", gad, H * F);
    dump(f, "gat.grad_edge_bias", geb, E * H);

    /* ---- aggregation with GAT's alpha: T=2, C=4 ---- */
    enum { AT = 2, C = 4, TNC = AT * N * C };
    float s[TNC], y[TNC], gy[TNC], galpha[E * H], gsg[TNC];
    fill(s, TNC, 1.0f, 0.0f);
    fill(gy, TNC, 1.0f, 0.0f);
    CHECK(gshn_aggregate_forward_cpu(GSHN_F32, &g, H, AT, C, alpha, s, y));
    CHECK(gshn_aggregate_backward_cpu(GSHN_F32, &g, H, AT, C, alpha, s, gy, galpha, gsg));
    dump(f, "agg.s", s, TNC);
    dump(f, "agg.grad_y", gy, TNC);
    dump(f, "agg.y", y, TNC);
    dump(f, "agg.grad_alpha", galpha, E * H);
    dump(f, "agg.grad_s", gsg, TNC);

    /* ---- u8 spikes: the LIF above writing one byte per spike, and the aggregation (GAT's
     * alpha) on 0/1 spikes as bytes and as floats: the same bits ---- */
    uint8_t spikes8[TN], s8[TNC];
    float v8[TN], h8[TN], sf[TNC], y8[TNC], yf[TNC], ga8[E * H], gaf[E * H], gs8[TNC], gsf[TNC];
    CHECK(gshn_lif_forward_u8_cpu(&lp, GSHN_F32, T, NN, x, spikes8, v8, h8));
    for (int i = 0; i < TN; i++) {
        if (spikes8[i] > 1 || (float)spikes8[i] != spikes[i] || v8[i] != v[i] || h8[i] != h[i]) {
            fprintf(stderr, "u8 LIF differs from the float LIF at %d\n", i);
            return 1;
        }
    }
    for (int i = 0; i < TNC; i++) s8[i] = s[i] > 0.0f, sf[i] = s8[i];
    CHECK(gshn_aggregate_forward_cpu(GSHN_F32, &g, H, AT, C, alpha, sf, yf));
    CHECK(gshn_aggregate_forward_u8_cpu(GSHN_F32, &g, H, AT, C, alpha, s8, y8));
    CHECK(gshn_aggregate_backward_cpu(GSHN_F32, &g, H, AT, C, alpha, sf, gy, gaf, gsf));
    CHECK(gshn_aggregate_backward_u8_cpu(GSHN_F32, &g, H, AT, C, alpha, s8, gy, ga8, gs8));
    if (memcmp(y8, yf, sizeof yf) || memcmp(ga8, gaf, sizeof gaf) || memcmp(gs8, gsf, sizeof gsf)) {
        fprintf(stderr, "the aggregation on u8 spikes differs from float spikes\n");
        return 1;
    }

    /* ---- PLIF with tau read from memory: the LIF above with tau 2.5 as a tensor gives the same
     * bits (params->tau is not used: set to another valid value) ---- */
    {
        float tau_t = 2.5f, st[TN], vt[TN], ht[TN], gxt[TN], gtaut = 0;
        gshn_lif_params other = lp;
        other.tau = 7.0;
        CHECK(gshn_lif_forward_tau_cpu(&other, GSHN_F32, T, NN, &tau_t, x, st, vt, ht));
        CHECK(gshn_lif_backward_tau_cpu(&other, GSHN_F32, T, NN, &tau_t, h, gs, gv, gxt, &gtaut));
        if (memcmp(st, spikes, sizeof st) || memcmp(vt, v, sizeof vt) || memcmp(ht, h, sizeof ht) ||
            memcmp(gxt, gx, sizeof gxt) || gtaut != gtau) {
            fprintf(stderr, "the LIF with tau from memory differs from params->tau\n");
            return 1;
        }
        uint8_t st8[TN];
        CHECK(gshn_lif_forward_u8_tau_cpu(&other, GSHN_F32, T, NN, &tau_t, x, st8, vt, ht));
        for (int i = 0; i < TN; i++) {
            if ((float)st8[i] != spikes[i] || vt[i] != v[i] || ht[i] != h[i]) {
                fprintf(stderr, "the u8 LIF with tau from memory differs at %d\n", i);
                return 1;
            }
        }
        CHECK(gshn_lif_backward_tau_cpu(&other, GSHN_F32, T, NN, &tau_t, h, gs, gv, gxt, NULL));
        if (memcmp(gxt, gx, sizeof gxt)) {
            fprintf(stderr, "grad_x of the tau backward depends on grad_tau being wanted\n");
            return 1;
        }
    }

    /* ---- InfoNCE: B=5, D=4, symmetric, grad_loss 1.3 ---- */
    enum { B = 5, D = 4 };
    float a[B * D], p[B * D], ls = 2.0f, loss = 0, lr[B], lc[B], gl = 1.3f;
    float ga[B * D], gp[B * D], gls = 0;
    fill(a, B * D, 1.0f, 0.0f);
    fill(p, B * D, 1.0f, 0.0f);
    for (int i = 0; i < B; i++) { /* L2-normalise the rows */
        float na = 0, np = 0;
        for (int j = 0; j < D; j++) na += a[i * D + j] * a[i * D + j], np += p[i * D + j] * p[i * D + j];
        for (int j = 0; j < D; j++) a[i * D + j] /= sqrtf(na), p[i * D + j] /= sqrtf(np);
    }
    CHECK(gshn_infonce_forward_cpu(GSHN_F32, B, D, 1, a, p, &ls, &loss, lr, lc));
    CHECK(gshn_infonce_backward_cpu(GSHN_F32, B, D, 1, a, p, &ls, lr, lc, &gl, ga, gp, &gls));
    dump(f, "nce.a", a, B * D);
    dump(f, "nce.p", p, B * D);
    dump(f, "nce.logit_scale", &ls, 1);
    dump(f, "nce.grad_loss", &gl, 1);
    dump(f, "nce.loss", &loss, 1);
    dump(f, "nce.lse_row", lr, B);
    dump(f, "nce.lse_col", lc, B);
    dump(f, "nce.grad_a", ga, B * D);
    dump(f, "nce.grad_p", gp, B * D);
    dump(f, "nce.grad_logit_scale", &gls, 1);

    /* ---- InfoNCE with gathered negatives: a = rows 1..2 of a's batch against all B rows of
     * p (positives p[1], p[2]), bf16 products, grad_loss 1.3 ---- */
    enum { BL = 2, OFF = 1 };
    gshn_infonce_params np = gshn_infonce_params_default();
    np.precision = GSHN_PRECISION_BF16;
    np.offset = OFF;
    float gloss = 0, glr[BL], gga[BL * D], ggp[B * D], ggls = 0;
    CHECK(gshn_infonce_1d_forward_cpu(&np, GSHN_F32, BL, B, D, a + OFF * D, p, &ls, &gloss, glr));
    CHECK(gshn_infonce_1d_backward_cpu(&np, GSHN_F32, BL, B, D, a + OFF * D, p, &ls, glr, &gl, gga,
                                       ggp, &ggls));
    dump(f, "nce1d.loss", &gloss, 1);
    dump(f, "nce1d.lse_row", glr, BL);
    dump(f, "nce1d.grad_a", gga, BL * D);
    dump(f, "nce1d.grad_p", ggp, B * D);
    dump(f, "nce1d.grad_logit_scale", &ggls, 1);

    /* ---- error paths: codes and messages, never a crash ---- */
    EXPECT_ERR(gshn_lif_forward_cpu(&lp, GSHN_F32, T, NN, NULL, spikes, v, h),
               GSHN_ERR_INVALID_ARGUMENT);
    EXPECT_ERR(gshn_lif_forward_cpu(NULL, GSHN_F32, T, NN, x, spikes, v, h),
               GSHN_ERR_INVALID_ARGUMENT);

    EXPECT_ERR(gshn_lif_forward_cpu(&lp, 7, T, NN, x, spikes, v, h), GSHN_ERR_INVALID_ARGUMENT);
    EXPECT_ERR(gshn_lif_forward_cpu(&lp, GSHN_F32, -1, NN, x, spikes, v, h),
               GSHN_ERR_INVALID_ARGUMENT);
    EXPECT_ERR(gshn_lif_forward_cpu(&lp, GSHN_F32, T, NN, (const char *)x + 1, spikes, v, h),
               GSHN_ERR_INVALID_ARGUMENT); /* misaligned */
    EXPECT_ERR(gshn_lif_backward_cpu(&lp, GSHN_F32, T, NN, h, NULL, NULL, gx, NULL),
               GSHN_ERR_INVALID_ARGUMENT);
    gshn_lif_params bad = lp;
    bad.tau = 0.5;
    EXPECT_ERR(gshn_lif_forward_cpu(&bad, GSHN_F32, T, NN, x, spikes, v, h),
               GSHN_ERR_INVALID_VALUE);
    int32_t bad_row_ptr[N + 1] = {0, 2, 1, 6, 8, 10, 10};
    gshn_graph bg = {N, E, bad_row_ptr, src};
    EXPECT_ERR(gshn_gat_forward_cpu(GSHN_F32, &bg, H, F, 0.2, z, as, ad, eb, out, lse, alpha),
               GSHN_ERR_INVALID_VALUE);
    int32_t bad_src[E] = {0, 1, 1, 2, 0, 2, 3, 0, 4, 99};
    gshn_graph bs = {N, E, row_ptr, bad_src};
    EXPECT_ERR(gshn_gat_forward_cpu(GSHN_F32, &bs, H, F, 0.2, z, as, ad, eb, out, lse, alpha),
               GSHN_ERR_INVALID_VALUE);
    EXPECT_ERR(gshn_aggregate_forward_cpu(GSHN_F32, &g, H, AT, 3, alpha, s, y), GSHN_ERR_SHAPE);
    EXPECT_ERR(gshn_infonce_forward_cpu(GSHN_F32, 0, D, 1, a, p, &ls, &loss, lr, lc),
               GSHN_ERR_SHAPE);
    np.offset = B - BL + 1; /* the positives would run past p */
    EXPECT_ERR(gshn_infonce_1d_forward_cpu(&np, GSHN_F32, BL, B, D, a, p, &ls, &gloss, glr),
               GSHN_ERR_SHAPE);
    np.offset = OFF;
    np.precision = 9;
    EXPECT_ERR(gshn_infonce_1d_forward_cpu(&np, GSHN_F32, BL, B, D, a, p, &ls, &gloss, glr),
               GSHN_ERR_INVALID_ARGUMENT);
    np.precision = GSHN_PRECISION_BF16;
    /* A successful call clears the message. */
    CHECK(gshn_lif_forward_cpu(&lp, GSHN_F32, T, NN, x, NULL, NULL, h));

    /* ---- hostile arguments: every entry point refuses them with an error code and a message
     * before reading or writing any buffer (the whole arena is compared byte for byte), and no
     * call gets as far as a panic (GSHN_ERR_PANIC). ---- */
    static float arena[4096];
    static float before[4096];
    fill(arena, 4096, 1.0f, 0.5f);
    memcpy(before, arena, sizeof arena);
    float *w = arena;                            /* outputs: scratch that must stay untouched */
    const char *odd = (const char *)arena + 1;   /* misaligned for every dtype */
    const int64_t HUGE = (INT64_C(1) << 62) + 1; /* products overflow int64 and size_t */
    const int64_t BIG = INT64_C(1) << 32;        /* squares overflow int64; past int32 */
    int hostile = 0;
#define HOSTILE(call)                                                                       \
    do {                                                                                    \
        int rc_ = (call);                                                                   \
        hostile++;                                                                          \
        if (rc_ == GSHN_OK || rc_ == GSHN_ERR_PANIC || gshn_last_error()[0] == 0 ||          \
            memcmp(arena, before, sizeof arena) != 0) {                                     \
            fprintf(stderr, "%s:%d: hostile %s returned %d, message \"%s\"%s\n", __FILE__,    \
                    __LINE__, #call, rc_, gshn_last_error(),                                \
                    memcmp(arena, before, sizeof arena) ? " (and wrote a buffer)" : "");    \
            return 1;                                                                       \
        }                                                                                   \
    } while (0)
    gshn_lif_params badsur = lp;
    badsur.surrogate = 99;
    gshn_lif_params badalpha = lp;
    badalpha.alpha = NAN;
    gshn_lif_params badtau = lp;
    badtau.tau = 1.00000001;
    /* LIF forward */
    HOSTILE(gshn_lif_forward_cpu(NULL, GSHN_F32, T, NN, x, w, w, w));
    HOSTILE(gshn_lif_forward_cpu(&lp, GSHN_F32, T, NN, NULL, w, w, w));
    HOSTILE(gshn_lif_forward_cpu(&lp, GSHN_F32, T, NN, x, w, w, NULL));
    HOSTILE(gshn_lif_forward_cpu(&lp, GSHN_F32, -1, NN, x, w, w, w));
    HOSTILE(gshn_lif_forward_cpu(&lp, GSHN_F32, T, INT64_MIN, x, w, w, w));
    HOSTILE(gshn_lif_forward_cpu(&lp, GSHN_F32, BIG, BIG, x, w, w, w));
    HOSTILE(gshn_lif_forward_cpu(&lp, GSHN_F32, 4, HUGE, x, w, w, w));
    HOSTILE(gshn_lif_forward_cpu(&lp, GSHN_F32, HUGE, 1, x, w, w, w));
    HOSTILE(gshn_lif_forward_cpu(&lp, GSHN_F64, T, NN, odd, w, w, w));
    HOSTILE(gshn_lif_forward_cpu(&lp, GSHN_F32, T, NN, x, w, w, (void *)odd));
    HOSTILE(gshn_lif_forward_cpu(&lp, -1, T, NN, x, w, w, w));
    HOSTILE(gshn_lif_forward_cpu(&lp, 4, T, NN, x, w, w, w));
    HOSTILE(gshn_lif_forward_cpu(&badsur, GSHN_F32, T, NN, x, w, w, w));
    HOSTILE(gshn_lif_forward_cpu(&badalpha, GSHN_F32, T, NN, x, w, w, w));
    HOSTILE(gshn_lif_forward_cpu(&badtau, GSHN_F32, T, NN, x, w, w, w));
    /* LIF forward with u8 spikes */
    uint8_t *w8 = (uint8_t *)arena;
    HOSTILE(gshn_lif_forward_u8_cpu(NULL, GSHN_F32, T, NN, x, w8, w, w));
    HOSTILE(gshn_lif_forward_u8_cpu(&lp, GSHN_F32, T, NN, x, w8, w, NULL));
    HOSTILE(gshn_lif_forward_u8_cpu(&lp, GSHN_F32, HUGE, 1, x, w8, w, w));
    HOSTILE(gshn_lif_forward_u8_cpu(&lp, GSHN_F64, T, NN, odd, w8, w, w));
    HOSTILE(gshn_lif_forward_u8_cpu(&lp, 4, T, NN, x, w8, w, w));
    HOSTILE(gshn_lif_forward_u8_cpu(&badtau, GSHN_F32, T, NN, x, w8, w, w));
    /* LIF backward */
    HOSTILE(gshn_lif_backward_cpu(NULL, GSHN_F32, T, NN, h, gs, gv, w, w));
    HOSTILE(gshn_lif_backward_cpu(&lp, GSHN_F32, T, NN, NULL, gs, gv, w, w));
    HOSTILE(gshn_lif_backward_cpu(&lp, GSHN_F32, T, NN, h, gs, gv, NULL, w));
    HOSTILE(gshn_lif_backward_cpu(&lp, GSHN_F32, T, NN, h, NULL, NULL, w, w));
    HOSTILE(gshn_lif_backward_cpu(&lp, GSHN_F32, -5, NN, h, gs, gv, w, w));
    HOSTILE(gshn_lif_backward_cpu(&lp, GSHN_F32, INT64_MAX, INT64_MAX, h, gs, gv, w, w));
    HOSTILE(gshn_lif_backward_cpu(&lp, GSHN_F32, HUGE, 4, h, gs, gv, w, w));
    HOSTILE(gshn_lif_backward_cpu(&lp, GSHN_F32, T, NN, h, odd, gv, w, w));
    HOSTILE(gshn_lif_backward_cpu(&lp, 9, T, NN, h, gs, gv, w, w));
    HOSTILE(gshn_lif_backward_cpu(&badsur, GSHN_F32, T, NN, h, gs, gv, w, w));
    HOSTILE(gshn_lif_backward_cpu(&badtau, GSHN_F32, T, NN, h, gs, gv, w, w));
    /* LIF with tau from memory: no tau, a misaligned one, one that is not > 1 or not finite */
    const float tau_ok = 2.0f, tau_one = 1.0f, tau_nan = NAN, tau_inf = INFINITY;
    HOSTILE(gshn_lif_forward_tau_cpu(&lp, GSHN_F32, T, NN, NULL, x, w, w, w));
    HOSTILE(gshn_lif_forward_tau_cpu(&lp, GSHN_F32, T, NN, odd, x, w, w, w));
    HOSTILE(gshn_lif_forward_tau_cpu(&lp, GSHN_F32, T, NN, &tau_one, x, w, w, w));
    HOSTILE(gshn_lif_forward_tau_cpu(&lp, GSHN_F32, T, NN, &tau_nan, x, w, w, w));
    HOSTILE(gshn_lif_forward_tau_cpu(&lp, GSHN_F32, T, NN, &tau_inf, x, w, w, w));
    HOSTILE(gshn_lif_forward_tau_cpu(&badsur, GSHN_F32, T, NN, &tau_ok, x, w, w, w));
    HOSTILE(gshn_lif_forward_tau_cpu(&lp, GSHN_F32, T, NN, &tau_ok, x, w, w, NULL));
    HOSTILE(gshn_lif_forward_u8_tau_cpu(&lp, GSHN_F32, T, NN, NULL, x, w8, w, w));
    HOSTILE(gshn_lif_forward_u8_tau_cpu(&lp, GSHN_F32, T, NN, &tau_one, x, w8, w, w));
    HOSTILE(gshn_lif_backward_tau_cpu(&lp, GSHN_F32, T, NN, NULL, h, gs, gv, w, w));
    HOSTILE(gshn_lif_backward_tau_cpu(&lp, GSHN_F32, T, NN, &tau_one, h, gs, gv, w, w));
    HOSTILE(gshn_lif_backward_tau_cpu(&lp, GSHN_F32, T, NN, &tau_nan, h, gs, gv, w, NULL));
    HOSTILE(gshn_lif_backward_tau_cpu(&lp, GSHN_F32, T, NN, &tau_ok, h, NULL, NULL, w, w));
    HOSTILE(gshn_lif_backward_tau_cpu(&lp, GSHN_F32, T, NN, &tau_ok, h, gs, gv, NULL, w));
    /* GAT forward: graph sizes past int32, NULL arrays, sizes that overflow */
    gshn_graph g_neg = {-1, E, row_ptr, src};
    gshn_graph g_big = {INT64_C(1) << 40, E, row_ptr, src};
    gshn_graph g_max = {INT64_MAX, E, row_ptr, src};
    gshn_graph g_edges = {N, INT64_C(1) << 31, row_ptr, src};
    gshn_graph g_nullrp = {N, E, NULL, src};
    gshn_graph g_nullsrc = {N, E, row_ptr, NULL};
    gshn_graph g_count = {N, E - 1, row_ptr, src}; /* row_ptr[N] != E */
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, NULL, H, F, 0.2, z, as, ad, eb, w, w, w));
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, &g_neg, H, F, 0.2, z, as, ad, eb, w, w, w));
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, &g_big, H, F, 0.2, z, as, ad, eb, w, w, w));
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, &g_max, H, F, 0.2, z, as, ad, eb, w, w, w));
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, &g_edges, H, F, 0.2, z, as, ad, eb, w, w, w));
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, &g_nullrp, H, F, 0.2, z, as, ad, eb, w, w, w));
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, &g_nullsrc, H, F, 0.2, z, as, ad, eb, w, w, w));
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, &g_count, H, F, 0.2, z, as, ad, eb, w, w, w));
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, &g, INT64_C(1) << 62, F, 0.2, z, as, ad, eb, w, w, w));
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, &g, H, HUGE, 0.2, z, as, ad, eb, w, w, w));
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, &g, -H, F, 0.2, z, as, ad, eb, w, w, w));
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, &g, H, F, NAN, z, as, ad, eb, w, w, w));
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, &g, H, F, INFINITY, z, as, ad, eb, w, w, w));
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, &g, H, F, 0.2, NULL, as, ad, eb, w, w, w));
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, &g, H, F, 0.2, z, NULL, ad, eb, w, w, w));
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, &g, H, F, 0.2, z, as, NULL, eb, w, w, w));
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, &g, H, F, 0.2, z, as, ad, eb, NULL, w, w));
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, &g, H, F, 0.2, z, as, ad, eb, w, NULL, w));
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, &g, H, F, 0.2, z, odd, ad, eb, w, w, w));
    HOSTILE(gshn_gat_forward_cpu(5, &g, H, F, 0.2, z, as, ad, eb, w, w, w));
    /* alpha wanted while out aliases an input (issue 23, D7) */
    HOSTILE(gshn_gat_forward_cpu(GSHN_F32, &g, H, F, 0.2, w, as, ad, eb, w, w + 64, w + 128));
    /* GAT backward */
    HOSTILE(gshn_gat_backward_cpu(GSHN_F32, NULL, H, F, 0.2, z, as, ad, eb, out, lse, gout, w, w,
                                  w, w));
    HOSTILE(gshn_gat_backward_cpu(GSHN_F32, &g_big, H, F, 0.2, z, as, ad, eb, out, lse, gout, w,
                                  w, w, w));
    HOSTILE(gshn_gat_backward_cpu(GSHN_F32, &g_edges, H, F, 0.2, z, as, ad, eb, out, lse, gout,
                                  w, w, w, w));
    HOSTILE(gshn_gat_backward_cpu(GSHN_F32, &g, HUGE, 1, 0.2, z, as, ad, eb, out, lse, gout, w,
                                  w, w, w));
    HOSTILE(gshn_gat_backward_cpu(GSHN_F32, &g, H, F, NAN, z, as, ad, eb, out, lse, gout, w, w,
                                  w, w));
    HOSTILE(gshn_gat_backward_cpu(GSHN_F32, &g, H, F, 0.2, z, as, ad, eb, NULL, lse, gout, w, w,
                                  w, w));
    HOSTILE(gshn_gat_backward_cpu(GSHN_F32, &g, H, F, 0.2, z, as, ad, eb, out, NULL, gout, w, w,
                                  w, w));
    HOSTILE(gshn_gat_backward_cpu(GSHN_F32, &g, H, F, 0.2, z, as, ad, eb, out, lse, NULL, w, w,
                                  w, w));
    HOSTILE(gshn_gat_backward_cpu(GSHN_F32, &g, H, F, 0.2, z, as, ad, eb, out, lse, odd, w, w,
                                  w, w));
    HOSTILE(gshn_gat_backward_cpu(-1, &g, H, F, 0.2, z, as, ad, eb, out, lse, gout, w, w, w, w));
    /* aggregation */
    HOSTILE(gshn_aggregate_forward_cpu(GSHN_F32, NULL, H, AT, C, alpha, s, w));
    HOSTILE(gshn_aggregate_forward_cpu(GSHN_F32, &g_big, H, AT, C, alpha, s, w));
    HOSTILE(gshn_aggregate_forward_cpu(GSHN_F32, &g_max, H, AT, C, alpha, s, w));
    HOSTILE(gshn_aggregate_forward_cpu(GSHN_F32, &g, H, AT, INT64_C(1) << 62, alpha, s, w));
    HOSTILE(gshn_aggregate_forward_cpu(GSHN_F32, &g, 2, 1, (INT64_C(1) << 62) + 2, alpha, s, w));
    HOSTILE(gshn_aggregate_forward_cpu(GSHN_F32, &g, H, HUGE, C, alpha, s, w));
    HOSTILE(gshn_aggregate_forward_cpu(GSHN_F32, &g, 0, AT, C, alpha, s, w));
    HOSTILE(gshn_aggregate_forward_cpu(GSHN_F32, &g, H, -AT, C, alpha, s, w));
    HOSTILE(gshn_aggregate_forward_cpu(GSHN_F32, &g, H, AT, C, NULL, s, w));
    HOSTILE(gshn_aggregate_forward_cpu(GSHN_F32, &g, H, AT, C, alpha, NULL, w));
    HOSTILE(gshn_aggregate_forward_cpu(GSHN_F32, &g, H, AT, C, alpha, s, NULL));
    HOSTILE(gshn_aggregate_forward_cpu(GSHN_F32, &g, H, AT, C, alpha, odd, w));
    HOSTILE(gshn_aggregate_forward_cpu(9, &g, H, AT, C, alpha, s, w));
    HOSTILE(gshn_aggregate_backward_cpu(GSHN_F32, &g_edges, H, AT, C, alpha, s, gy, w, w));
    HOSTILE(gshn_aggregate_backward_cpu(GSHN_F32, &g, H, AT, HUGE, alpha, s, gy, w, w));
    HOSTILE(gshn_aggregate_backward_cpu(GSHN_F32, &g, H, AT, C, alpha, s, NULL, w, w));
    HOSTILE(gshn_aggregate_backward_cpu(GSHN_F32, &g, H, AT, C, alpha, s, gy, (void *)odd, w));
    HOSTILE(gshn_aggregate_backward_cpu(GSHN_F16 + 1, &g, H, AT, C, alpha, s, gy, w, w));
    /* InfoNCE (issue 23, D1: [4, 2^62 + 1] once counted as 4 elements) */
    HOSTILE(gshn_infonce_forward_cpu(GSHN_F32, 4, HUGE, 1, a, p, &ls, w, w, w));
    HOSTILE(gshn_infonce_forward_cpu(GSHN_F32, 4, INT64_C(1) << 62, 1, NULL, NULL, &ls, w, w, w));
    HOSTILE(gshn_infonce_forward_cpu(GSHN_F32, INT64_MAX, 2, 1, a, p, &ls, w, w, w));
    HOSTILE(gshn_infonce_forward_cpu(GSHN_F32, -B, D, 1, a, p, &ls, w, w, w));
    HOSTILE(gshn_infonce_forward_cpu(GSHN_F32, B, -1, 1, a, p, &ls, w, w, w));
    HOSTILE(gshn_infonce_forward_cpu(GSHN_F32, B, D, 1, NULL, p, &ls, w, w, w));
    HOSTILE(gshn_infonce_forward_cpu(GSHN_F32, B, D, 1, a, NULL, &ls, w, w, w));
    HOSTILE(gshn_infonce_forward_cpu(GSHN_F32, B, D, 1, a, p, NULL, w, w, w));
    HOSTILE(gshn_infonce_forward_cpu(GSHN_F32, B, D, 1, a, p, &ls, NULL, w, w));
    HOSTILE(gshn_infonce_forward_cpu(GSHN_F32, B, D, 1, a, p, &ls, w, NULL, w));
    HOSTILE(gshn_infonce_forward_cpu(GSHN_F32, B, D, 1, a, p, &ls, w, w, NULL));
    HOSTILE(gshn_infonce_forward_cpu(GSHN_F32, B, D, 1, odd, p, &ls, w, w, w));
    HOSTILE(gshn_infonce_forward_cpu(-7, B, D, 1, a, p, &ls, w, w, w));
    HOSTILE(gshn_infonce_backward_cpu(GSHN_F32, 4, HUGE, 1, a, p, &ls, lr, lc, &gl, w, w, w));
    HOSTILE(gshn_infonce_1d_forward_cpu(NULL, GSHN_F32, BL, B, D, a, p, &ls, w, w));
    HOSTILE(gshn_infonce_1d_forward_cpu(&np, GSHN_F32, BL, HUGE, D, a, p, &ls, w, w));
    HOSTILE(gshn_infonce_1d_forward_cpu(&np, GSHN_F32, BL, -1, D, a, p, &ls, w, w));
    HOSTILE(gshn_infonce_1d_forward_cpu(&np, GSHN_F32, BL, B, D, a, odd, &ls, w, w));
    HOSTILE(gshn_infonce_1d_backward_cpu(&np, GSHN_F32, BL, B, D, a, p, &ls, NULL, &gl, w, w, w));
    HOSTILE(gshn_infonce_1d_backward_cpu(&np, GSHN_F32, BL, BIG, D, a, p, &ls, lr, &gl, w, w, w));
    HOSTILE(gshn_infonce_backward_cpu(GSHN_F32, B, D, 1, a, p, &ls, NULL, lc, &gl, w, w, w));
    HOSTILE(gshn_infonce_backward_cpu(GSHN_F32, B, D, 1, a, p, &ls, lr, NULL, &gl, w, w, w));
    HOSTILE(gshn_infonce_backward_cpu(GSHN_F32, B, D, 1, a, p, &ls, lr, lc, NULL, w, w, w));
    HOSTILE(gshn_infonce_backward_cpu(GSHN_F32, B, D, 1, a, p, &ls, lr, lc, &gl, (void *)odd, w, w));
    HOSTILE(gshn_infonce_backward_cpu(GSHN_F16 + 1, B, D, 1, a, p, &ls, lr, lc, &gl, w, w, w));
    /* The aggregation on u8 spikes */
    HOSTILE(gshn_aggregate_forward_u8_cpu(GSHN_F32, &g, H, AT, C, alpha, NULL, w));
    HOSTILE(gshn_aggregate_forward_u8_cpu(GSHN_F32, &g, H, AT, 3, alpha, s8, w));
    HOSTILE(gshn_aggregate_forward_u8_cpu(GSHN_F32, &g_count, H, AT, C, alpha, s8, w));
    HOSTILE(gshn_aggregate_forward_u8_cpu(7, &g, H, AT, C, alpha, s8, w));
    HOSTILE(gshn_aggregate_backward_u8_cpu(GSHN_F32, &g, H, AT, C, alpha, s8, NULL, w, w));
    HOSTILE(gshn_aggregate_backward_u8_cpu(GSHN_F32, &g, H, HUGE, C, alpha, s8, gy, w, w));
    HOSTILE(gshn_aggregate_backward_u8_cpu(GSHN_F64, &g, H, AT, C, odd, s8, gy, w, w));
    /* The CUDA entry points refuse the same arguments before touching a device. */
    HOSTILE(gshn_lif_forward_cuda(&lp, GSHN_F32, -1, NN, x, w, w, w, 0, NULL));
    HOSTILE(gshn_lif_backward_cuda(NULL, GSHN_F32, T, NN, h, gs, gv, w, w, 0, NULL));
    HOSTILE(gshn_gat_forward_cuda(GSHN_F32, &g_big, H, F, 0.2, z, as, ad, eb, w, w, w, 0, NULL));
    HOSTILE(gshn_gat_backward_cuda(9, &g, H, F, 0.2, z, as, ad, eb, out, lse, gout, w, w, w, w, 0,
                                   NULL));
    HOSTILE(gshn_aggregate_forward_cuda(GSHN_F32, NULL, H, AT, C, alpha, s, w, 0, NULL));
    HOSTILE(gshn_aggregate_backward_cuda(GSHN_F32, &g, H, AT, HUGE, alpha, s, gy, w, w, 0, NULL));
    HOSTILE(gshn_infonce_forward_cuda(GSHN_F32, 4, HUGE, 1, a, p, &ls, w, w, w, 0, NULL));
    HOSTILE(gshn_infonce_backward_cuda(GSHN_F32, -1, D, 1, a, p, &ls, lr, lc, &gl, w, w, w, 0,
                                       NULL));
    HOSTILE(gshn_lif_forward_cuda(&lp, GSHN_F32, T, NN, x, w, w, w, -3, NULL));
    HOSTILE(gshn_lif_forward_u8_cuda(&lp, GSHN_F32, T, NN, x, w8, w, NULL, 0, NULL));
    HOSTILE(gshn_aggregate_forward_u8_cuda(GSHN_F32, &g, H, AT, 3, alpha, s8, w, 0, NULL));
    HOSTILE(gshn_aggregate_backward_u8_cuda(GSHN_F32, &g_neg, H, AT, C, alpha, s8, gy, w, w, 0,
                                            NULL));
    /* After the failures, a good call succeeds and clears the message. */
    CHECK(gshn_infonce_forward_cpu(GSHN_F32, B, D, 1, a, p, &ls, &loss, lr, lc));
    printf("hostile arguments: %d cases refused, none reached a panic\n", hostile);

    /* CUDA entry points: without a usable GPU, an error code with a message (never a crash). */
    if (!gshn_cuda_available()) {
        int rc = gshn_lif_forward_cuda(&lp, GSHN_F32, T, NN, x, spikes, v, h, 0, NULL);
        if ((rc != GSHN_ERR_CUDA && rc != GSHN_ERR_UNSUPPORTED) || gshn_last_error()[0] == 0) {
            fprintf(stderr, "cuda without a GPU returned %d: %s\n", rc, gshn_last_error());
            return 1;
        }
        printf("no GPU: gshn_lif_forward_cuda -> %d: %s\n", rc, gshn_last_error());
    }
    fprintf(f, "done 0\n");
    fclose(f);
    printf("capi_test: ok\n");
    return 0;
}
