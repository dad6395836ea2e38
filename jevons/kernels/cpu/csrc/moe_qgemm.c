/* A MoE layer's routed experts in one call, on qgemm's weight format.
 *
 * out[t] = sum_j w[t, j] * down_e(silu(gate_e(x[t])) * up_e(x[t])),  e = ids[t, j]
 *
 * Each expert's w13 ([2I, H], gate rows then up rows) and w2 ([H, I]) is a
 * qgemm blob (csrc/qgemm.c's header: tiles of 16 output rows, groups of 32
 * along K, 4- or 8-bit levels, half scales and zeros); the experts' blobs are
 * stacked, expert e at e * (bytes of one). One call:
 *   1. counts the (token, expert) pairs per expert and sorts them by expert
 *      (a counting sort, stable, so an expert's rows keep token order);
 *   2. quantizes each token's x to int8 per group once (not once per expert);
 *   3. gate/up: every (active expert, 32 columns of I) is one work item: its
 *      gate and up tiles for the expert's rows (gathered through their token
 *      index), SiLU-and-mul in float32, and that group requantized to int8
 *      for the down projection;
 *   4. down: every 16 columns of H is one work item, over every active
 *      expert, adding weight * result into each token's sum in expert order
 *      (a token's own pairs, ordered by its own ids).
 * Threads share items (OpenMP, PyTorch's libgomp pool, as every kernel here)
 * with two barriers in all (three above 8 tokens, where x is quantized in
 * parallel): on a loaded 2-core machine each barrier can wait out a time
 * slice. Items write disjoint outputs, so a token's result does not depend
 * on which other tokens share the batch.
 *
 * Pairs whose expert id is outside [0, E) contribute nothing: under expert
 * parallelism those are another rank's experts.
 *
 * The per-tile integer and float steps are the same as qgemm.c's: the AVX2
 * integer core is the header both include (qgemm_avx2.h); `half_block` and
 * `quant_row` below are this file's own copies of qgemm.c's drivers, changed
 * to read activation rows through an index.
 * Paths: AVX2 + FMA + F16C (this also runs on AVX-512 machines), else the
 * portable scalar loops; both compute the same integer dot products. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "simd_math.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define MOE_SIMD 1
#include <immintrin.h>

#include "qgemm_avx2.h"
#else
#define MOE_SIMD 0
#endif

#define QG 32 /* k per group */
#define QT 16 /* rows per tile */
#define MB 4  /* activation rows per register block */
#ifndef MOE_BOTH_MAX
#define MOE_BOTH_MAX 3 /* blocks up to this many rows run both halves per group */
#endif

int jv_moe_qgemm_simd(void) { return MOE_SIMD; }

/* qgemm.c's tile_group_bytes and level_offset: a blob without zeros stores
 * only the scales (4-bit levels then sit at offset 8, ggml's Q4_0). */
static inline long tg_bytes(int bits, int has_zero) { return (long)QT * QG * bits / 8 + 2 * QT * (has_zero ? 2 : 1); }
static inline int moe_level_offset(int bits, int has_zero) { return bits == 8 ? 128 : has_zero ? 0 : 8; }

typedef struct {
    int8_t *q;
    float *d, *sum;
    int32_t *start;
} moe_act;

/* qgemm.c's quant_row: per group d = amax / 127, q = rint(x * 127 / amax),
 * d * sum(q) for the zero term, and -off * sum(q). */
#define DEFINE_MOE_QUANT_ROW(SUF, T, LD)                                                      \
    static void moe_quant_row_##SUF(const T *x, int k, int off, int8_t *q, float *d, float *sum, \
                                    int32_t *start) {                                          \
        for (int g = 0; g < k / QG; g++) {                                                     \
            float v[QG], amax = 0.f;                                                           \
            for (int i = 0; i < QG; i++) {                                                     \
                v[i] = LD(x + g * QG + i);                                                     \
                const float a = v[i] < 0.f ? -v[i] : v[i];                                     \
                amax = a > amax ? a : amax;                                                    \
            }                                                                                  \
            const float inv = amax > 0.f ? 127.f / amax : 0.f;                                 \
            int32_t qs = 0;                                                                    \
            for (int i = 0; i < QG; i++) {                                                     \
                const int8_t qi = (int8_t)__builtin_rintf(v[i] * inv);                         \
                q[g * QG + i] = qi;                                                            \
                qs += qi;                                                                      \
            }                                                                                  \
            d[g] = amax / 127.f;                                                               \
            sum[g] = d[g] * (float)qs;                                                         \
            start[g] = -off * qs;                                                              \
        }                                                                                      \
    }
static inline float moe_ld_f32(const float *p) { return *p; }
static inline float moe_ld_bf16(const uint16_t *p) { return bf16_to_float(*p); }
DEFINE_MOE_QUANT_ROW(f32, float, moe_ld_f32)
DEFINE_MOE_QUANT_ROW(bf16, uint16_t, moe_ld_bf16)

#if MOE_SIMD == 1
/* One step of qgemm.c's half_block: group g of rows 8 h .. 8 h + 7 of one
 * tile for activation rows arow[0 .. mt), added into y[0 .. mt), with the
 * same integer core (qgemm_avx2.h) and the same float order. bits, mt and h
 * are constants at each call site. */
static inline __attribute__((always_inline)) void moe_group_half(const uint8_t *tile, int g, const int bits,
                                                                 int has_zero, const moe_act *a, int k,
                                                                 const int32_t *arow, const int mt, const int h,
                                                                 __m256 *y) {
    qg_avx2_group_half(tile, tg_bytes(bits, has_zero), (long)QT * QG * bits / 8, g, bits, has_zero, a->q, a->d,
                       a->sum, a->start, k, 0, arow, mt, h, y);
}

/* Half h of one tile, every group, for activation rows arow[0 .. mt). */
static inline __attribute__((always_inline)) void moe_half_block(const uint8_t *tile, int groups, const int bits,
                                                                 int has_zero, const moe_act *a, int k,
                                                                 const int32_t *arow, const int mt, const int h,
                                                                 __m256 *y) {
    for (int m = 0; m < mt; m++) y[m] = _mm256_setzero_ps();
    for (int g = 0; g < groups; g++) moe_group_half(tile, g, bits, has_zero, a, k, arow, mt, h, y);
}

/* Both halves of one tile, group by group (h inner), for blocks of up to
 * MOE_BOTH_MAX rows: the tile's bytes are read front to back once with the
 * multiplies in between, where half by half the second pass re-read them
 * from cache with no loads from memory in flight. At a few rows per expert
 * (a routed expert's share of a decode batch) the kernel streams weights
 * from memory with little work per byte, and this order measured 5-10%
 * faster (docs/benchmarks.md, "AVX2 kernels at batch 32"). Each
 * y[h * mt + m] takes the same float steps in the same order as
 * moe_half_block's y[m] of half h, so the results are the same bits. */
static inline __attribute__((always_inline)) void moe_tile_both(const uint8_t *tile, int groups, const int bits,
                                                                int has_zero, const moe_act *a, int k,
                                                                const int32_t *arow, const int mt, __m256 *y) {
    for (int m = 0; m < 2 * mt; m++) y[m] = _mm256_setzero_ps();
    const long tg = tg_bytes(bits, has_zero);
    for (int g = 0; g < groups; g++) {
        qg_prefetch_ahead(tile + g * tg, tg);
        for (int h = 0; h < 2; h++) moe_group_half(tile, g, bits, has_zero, a, k, arow, mt, h, y + h * mt);
    }
}

#define MOE_HALF(BITS, MT, H)                                                                   \
    do {                                                                                        \
        __m256 y[MT];                                                                           \
        moe_half_block(tile, groups, BITS, has_zero, a, k, arow + m0, MT, H, y);               \
        for (int m = 0; m < MT; m++) _mm256_storeu_ps(out + (m0 + m) * ldy + 8 * H, y[m]); \
    } while (0)
#define MOE_BOTH(BITS, MT)                                                                      \
    do {                                                                                        \
        __m256 y[2 * MT];                                                                       \
        moe_tile_both(tile, groups, BITS, has_zero, a, k, arow + m0, MT, y);                   \
        for (int m = 0; m < MT; m++) {                                                          \
            _mm256_storeu_ps(out + (m0 + m) * ldy, y[m]);                                       \
            _mm256_storeu_ps(out + (m0 + m) * ldy + 8, y[MT + m]);                              \
        }                                                                                       \
    } while (0)
#define MOE_BLOCK(MT)                                                                           \
    do {                                                                                        \
        if (MT <= MOE_BOTH_MAX) {                                                               \
            if (bits == 4) MOE_BOTH(4, MT); else MOE_BOTH(8, MT);                               \
        } else if (bits == 4) { MOE_HALF(4, MT, 0); MOE_HALF(4, MT, 1); }                       \
        else { MOE_HALF(8, MT, 0); MOE_HALF(8, MT, 1); }                                        \
    } while (0)
#endif /* MOE_SIMD == 1 */

/* Tile t (16 outputs) of one expert's weight `w` for `rows` activation rows
 * arow[0 .. rows) -> out[m * ldy + 0 .. 15] (float32; out is the tile's first column). */
static void moe_tile(const uint8_t *w, int t, int groups, int bits, int has_zero, const moe_act *a, int k,
                     const int32_t *arow, long rows, float *out, long ldy) {
    const uint8_t *tile = w + (long)t * groups * tg_bytes(bits, has_zero);
#if MOE_SIMD == 1
    long m0 = 0;
    for (; m0 + MB <= rows; m0 += MB) MOE_BLOCK(MB);
    switch (rows - m0) {
    case 3: MOE_BLOCK(3); break;
    case 2: MOE_BLOCK(2); break;
    case 1: MOE_BLOCK(1); break;
    default: break;
    }
#else
    const long tg = tg_bytes(bits, has_zero), wbytes = (long)QT * QG * bits / 8;
    for (long m = 0; m < rows; m++) {
        float y[QT] = {0};
        for (int g = 0; g < groups; g++) {
            const uint8_t *p = tile + g * tg;
            const uint16_t *sz = (const uint16_t *)(p + wbytes);
            const long row = (long)arow[m] * groups + g;
            const int8_t *xq = a->q + (long)arow[m] * k + (long)g * QG;
            for (int r = 0; r < QT; r++) {
                int32_t acc = a->start[row];
                for (int kk = 0; kk < QG; kk++) {
                    const int j = kk / 4, b = kk % 4;
                    int u;
                    if (bits == 8) u = p[64 * j + r * 4 + b];
                    else u = j < 4 ? p[64 * j + r * 4 + b] & 15 : p[64 * (j - 4) + r * 4 + b] >> 4;
                    acc += u * xq[kk];
                }
                y[r] += (float)acc * fp16_to_float(sz[r]) * a->d[row];
                if (has_zero) y[r] += fp16_to_float(sz[QT + r]) * a->sum[row];
            }
        }
        for (int r = 0; r < QT; r++) out[m * ldy + r] = y[r];
    }
#endif
}

/* Parallelize only when the expert weights touched pay for waking threads. */
#define MOE_PAR_MIN_WEIGHTS 65536L
/* Up to this many tokens, x is quantized before the parallel region (a few
 * microseconds), saving the threads one barrier. */
#define MOE_SERIAL_QUANT_TOKENS 8

static inline void moe_st_f32(float *p, float v) { *p = v; }
static inline void moe_st_bf16(uint16_t *p, float v) { *p = float_to_bf16(v); }

/* Gate/up for one active expert's rows and one group of 32 columns c of I:
 * gate tiles 2c, 2c + 1 and the matching up tiles, SiLU-and-mul in float32,
 * and that group of the product quantized for the down projection (a group
 * is all one K-group of the down GEMM needs, so no barrier in between). */
static void moe_gate_up_group(const uint8_t *w, int c, int g13, int bits13, int hz13, const moe_act *ax,
                              int hidden, int inter, const int32_t *tok_rows, long rows, float *h, moe_act *ah,
                              long first, int off2) {
    const int n13 = 2 * inter, up0 = inter / QT, g2 = inter / QG;
    for (int s = 0; s < 2; s++) {
        moe_tile(w, 2 * c + s, g13, bits13, hz13, ax, hidden, tok_rows, rows, h + (2 * c + s) * QT, n13);
        moe_tile(w, up0 + 2 * c + s, g13, bits13, hz13, ax, hidden, tok_rows, rows, h + inter + (2 * c + s) * QT, n13);
    }
    for (long m = 0; m < rows; m++) {
        const long r = first + m;
        float *g = h + m * n13 + c * QG;
        const float *u = g + inter;
        for (int i = 0; i < QG; i++) g[i] = g[i] / (1.f + expf(-g[i])) * u[i];
        moe_quant_row_f32(g, QG, off2, ah->q + r * inter + c * QG, ah->d + r * g2 + c, ah->sum + r * g2 + c,
                          ah->start + r * g2 + c);
    }
}

/* x [tokens, hidden] (row stride ldx), ids / topw [tokens, topk] (int64,
 * float32), w13 / w2 the stacked blobs of `experts` experts -> out [tokens,
 * hidden] (row stride ldo). hidden and inter must be multiples of 32.
 * Two barriers: gate/up items (expert, 32 columns of I), then down items
 * (16 columns of H, every active expert), each adding its columns into the
 * tokens' sums in expert order: a token's own pairs, in an order fixed by its
 * own ids. Returns 0, or -1 when scratch cannot be had. */
#define DEFINE_MOE(SUF, T)                                                                              \
    int jv_moe_qgemm_##SUF(const T *x, long ldx, long tokens, int topk, const int64_t *ids,              \
                           const float *topw, int experts, const uint8_t *w13, int bits13, int hz13,    \
                           const uint8_t *w2, int bits2, int hz2, int hidden, int inter, T *out,       \
                           long ldo, int nthreads) {                                                    \
        const long pairs = tokens * topk;                                                               \
        const int g13 = hidden / QG, g2 = inter / QG, n13 = 2 * inter, tiles2 = hidden / QT;            \
        const long ebytes13 = (long)(n13 / QT) * g13 * tg_bytes(bits13, hz13);                          \
        const long ebytes2 = (long)tiles2 * g2 * tg_bytes(bits2, hz2);                                  \
        /* Counting sort of the pairs by expert (stable: slot order within a token). */                 \
        long *first = calloc((size_t)experts + 1, sizeof(long));                                        \
        long *fill = malloc((size_t)experts * sizeof(long) + 16);                                       \
        int32_t *idx = malloc((size_t)(pairs ? pairs : 1) * 2 * sizeof(int32_t) + 16);                  \
        float *wt_of = malloc((size_t)(pairs ? pairs : 1) * sizeof(float) + 16);                        \
        int *active = malloc((size_t)experts * sizeof(int) + 16);                                       \
        char *scratch = NULL;                                                                           \
        int rc = -1;                                                                                    \
        if (!first || !fill || !idx || !wt_of || !active) goto done_##SUF;                              \
        int32_t *tok_of = idx, *iota = idx + pairs;                                                     \
        for (long p = 0; p < pairs; p++)                                                                \
            if (ids[p] >= 0 && ids[p] < experts) first[ids[p] + 1]++;                                   \
        int nact = 0;                                                                                   \
        long maxrows = 0;                                                                               \
        for (int e = 0; e < experts; e++) {                                                             \
            if (first[e + 1]) active[nact++] = e;                                                       \
            if (first[e + 1] > maxrows) maxrows = first[e + 1];                                         \
            first[e + 1] += first[e];                                                                   \
        }                                                                                               \
        const long rows = first[experts];                                                               \
        memcpy(fill, first, (size_t)experts * sizeof(long));                                            \
        for (long p = 0; p < pairs; p++) {                                                              \
            if (ids[p] < 0 || ids[p] >= experts) continue;                                              \
            const long r = fill[ids[p]]++;                                                              \
            tok_of[r] = (int32_t)(p / topk);                                                            \
            wt_of[r] = topw[p];                                                                         \
        }                                                                                               \
        for (long r = 0; r < rows; r++) iota[r] = (int32_t)r;                                           \
        /* Scratch: x's int8 rows, h [rows, 2I] float, its int8 rows, the sums [tokens, H]. */          \
        const long nx = tokens * g13, nh = rows * g2;                                                   \
        const size_t bytes = (size_t)tokens * hidden + (size_t)nx * 12 + (size_t)rows * n13 * 4 +        \
                             (size_t)rows * inter + (size_t)nh * 12 + (size_t)tokens * hidden * 4 + 256; \
        scratch = malloc(bytes);                                                                        \
        if (!scratch) goto done_##SUF;                                                                  \
        float *h = (float *)scratch, *acc = h + rows * n13;                                             \
        moe_act ax, ah;                                                                                 \
        ax.d = acc + tokens * (long)hidden; ax.sum = ax.d + nx; ax.start = (int32_t *)(ax.sum + nx);    \
        ah.d = (float *)(ax.start + nx); ah.sum = ah.d + nh; ah.start = (int32_t *)(ah.sum + nh);       \
        ax.q = (int8_t *)(ah.start + nh); ah.q = ax.q + tokens * (long)hidden;                          \
        const int off13 = moe_level_offset(bits13, hz13), off2 = moe_level_offset(bits2, hz2);          \
        const int serial = tokens <= MOE_SERIAL_QUANT_TOKENS;                                           \
        if (serial)                                                                                     \
            for (long t = 0; t < tokens; t++)                                                           \
                moe_quant_row_##SUF(x + t * ldx, hidden, off13, ax.q + t * (long)hidden,                \
                                    ax.d + t * g13, ax.sum + t * g13, ax.start + t * g13);              \
        const long work = (long)nact * n13 * hidden;                                                    \
        int failed = 0;                                                                                 \
        _Pragma("omp parallel num_threads(nthreads) if (work >= MOE_PAR_MIN_WEIGHTS)")                  \
        {                                                                                               \
            if (!serial) {                                                                              \
                _Pragma("omp for schedule(static)")                                                     \
                for (long t = 0; t < tokens; t++)                                                       \
                    moe_quant_row_##SUF(x + t * ldx, hidden, off13, ax.q + t * (long)hidden,            \
                                        ax.d + t * g13, ax.sum + t * g13, ax.start + t * g13);          \
            }                                                                                           \
            _Pragma("omp for schedule(dynamic, 1)")                                                     \
            for (long it = 0; it < (long)nact * g2; it++) {                                             \
                const int e = active[it / g2], c = (int)(it % g2);                                      \
                moe_gate_up_group(w13 + e * ebytes13, c, g13, bits13, hz13, &ax, hidden, inter,         \
                                  tok_of + first[e], first[e + 1] - first[e], h + first[e] * n13, &ah,  \
                                  first[e], off2);                                                      \
            }                                                                                           \
            float *y = malloc((size_t)(maxrows ? maxrows : 1) * QT * sizeof(float));                    \
            if (!y) {                                                                                   \
                _Pragma("omp atomic write")                                                             \
                failed = 1;                                                                             \
            }                                                                                           \
            _Pragma("omp for schedule(dynamic, 1)")                                                     \
            for (int t = 0; t < tiles2; t++) {                                                          \
                if (!y) continue;                                                                       \
                for (long tk = 0; tk < tokens; tk++)                                                    \
                    for (int i = 0; i < QT; i++) acc[tk * hidden + t * QT + i] = 0.f;                   \
                for (int a = 0; a < nact; a++) {                                                        \
                    const int e = active[a];                                                            \
                    const long r0 = first[e], nr = first[e + 1] - r0;                                   \
                    moe_tile(w2 + e * ebytes2, t, g2, bits2, hz2, &ah, inter, iota + r0, nr, y, QT);    \
                    for (long m = 0; m < nr; m++) {                                                     \
                        float *dst = acc + (long)tok_of[r0 + m] * hidden + t * QT;                      \
                        const float wt = wt_of[r0 + m];                                                 \
                        for (int i = 0; i < QT; i++) dst[i] += wt * y[m * QT + i];                      \
                    }                                                                                   \
                }                                                                                       \
                for (long tk = 0; tk < tokens; tk++)                                                    \
                    for (int i = 0; i < QT; i++)                                                        \
                        moe_st_##SUF(out + tk * ldo + t * QT + i, acc[tk * hidden + t * QT + i]);       \
            }                                                                                           \
            free(y);                                                                                    \
        }                                                                                               \
        rc = failed ? -1 : 0;                                                                           \
    done_##SUF:                                                                                         \
        free(scratch);                                                                                  \
        free(first);                                                                                    \
        free(fill);                                                                                     \
        free(idx);                                                                                      \
        free(wt_of);                                                                                    \
        free(active);                                                                                   \
        return rc;                                                                                      \
    }

DEFINE_MOE(f32, float)
DEFINE_MOE(bf16, uint16_t)
