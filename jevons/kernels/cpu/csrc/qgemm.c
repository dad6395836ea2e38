/* Group-quantized weights times int8-quantized activations, for decode.
 *
 * y[M, N] = x[M, K] @ W^T (+ bias), W stored in 4 or 8 bits per weight, in
 * groups of 32 along K, each with a scale (IEEE half) and, in a blob that
 * has zeros, a half zero:
 *
 *     w = (u - off) * scale + zero      with zeros: u 0..15, off 0 (4-bit)
 *     w = (u - off) * scale             without:    u 0..15, off 8 (4-bit)
 *                                       8-bit either way: u 0..255, off 128
 *
 * That is ggml's own grid for its 32-blocks, so a GGUF's Q4_1 (zero = m),
 * Q4_0 (u = q, off 8, no zero) and Q8_0 (u = q + 128, no zero) blocks are
 * repacked without rounding anything (loader/gguf_quant.py). A symmetric
 * grid stores no zeros: that is 4.5 bits a weight for Q4_0 (5 with zeros)
 * and 8.5 for Q8_0 (9), and batch-1 decode is a pass over those bytes.
 *
 * Why: at decode batch sizes a matmul is a pass over its weights, so fewer
 * bytes per weight is less time, and at a few rows the multiply must keep up
 * with the memory. x is quantized per row and group to int8 (d = amax / 127,
 * as ggml's Q8 activations), so each group is integer dot products with
 * AVX512-VNNI (vpdpbusd: 64 u8 x s8 products per instruction into 16 int32
 * lanes; on AVX2 CPUs vpmaddubsw + vpmaddwd, see below), then one float
 * multiply-add per group:
 *
 *     y += d_x * scale * sum((u - off) * xq)  +  zero * d_x * sum(xq)
 *
 * (the zero term only where the blob has zeros; the -off * sum(xq) is exact
 * integer arithmetic, started in the accumulator)
 * which is exactly sum(w * d_x * xq): the product of the true weights with
 * the rounded activations, as ggml's Q4_1 x Q8_1 dot is. The zero term uses
 * the rounded x's sum, not the exact one, on purpose: then the rounding error
 * meets the centered weights w, not the uncentered (u - off) * scale, whose
 * magnitude is several times larger on a min-offset grid (Q4_1, our own
 * int4). With the exact sum, -q int4 on SmolLM2's Q4_1 file scored 1.26%
 * over llama-perplexity; with this one, 0.27% under it.
 *
 * Layout (built by jevons/kernels/cpu/qgemm.py): N is cut into tiles of 16
 * rows; for each tile and group, the weights, then 16 half scales, then
 * (with zeros) 16 half zeros. The weights are eight 64-byte vectors (4-bit: four, each byte
 * holding two); vector j holds, in int32 lane r, row r's four weights at
 * k = 32 g + 4 j .. 4 j + 3, so one vpdpbusd against a broadcast of x's four
 * matching int8 values advances all 16 rows. 4-bit byte r * 4 + b of vector j
 * (j < 4) holds k = 32 g + 4 j + b in its low nibble and k + 16 in its high.
 * One tile-group is read front to back, and tiles are the parallel unit. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"

/* Which path this build runs, chosen by the compiler's -march flags (build.py
 * passes -march=native): 2 AVX512-VNNI, 1 AVX2 + FMA + F16C, 0 the portable
 * scalar loops. All three compute the same integer dot products; the two
 * SIMD paths also apply the float steps in the same order. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define QGEMM_SIMD 2
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define QGEMM_SIMD 1
#include <immintrin.h>

#include "qgemm_avx2.h"
#else
#define QGEMM_SIMD 0
#endif

#define QG 32 /* k per group */
#define QT 16 /* rows per tile */
#if QGEMM_SIMD == 1
#define MB 4 /* activation rows per register block: 16 ymm registers, not 32 zmm */
#else
#define MB 8 /* activation rows per register block */
#endif

int jv_qgemm_simd(void) { return QGEMM_SIMD; }

/* Bytes of one tile-group: weights, then 16 scales and (has_zero) 16 zeros. */
static inline long tile_group_bytes(int bits, int has_zero) { return (long)QT * QG * bits / 8 + 2 * QT * (has_zero ? 2 : 1); }

/* The levels' offset: 8-bit 128; 4-bit 0 beside a zero, 8 without one. */
static inline int level_offset(int bits, int has_zero) { return bits == 8 ? 128 : has_zero ? 0 : 8; }

/* Quantized activations: per row and group, the int8 values, d = amax / 127,
 * d * sum(xq) (the zero term's sum, see above), and -off * sum(xq) (the integer accumulator's
 * start, so it ends as sum((u - off) * xq)). */
typedef struct {
    int8_t *q;
    float *d, *sum;
    int32_t *start;
} qact;

#define DEFINE_QUANT_ROW(SUF, T, LD)                                                        \
    static void quant_row_##SUF(const T *x, int k, int off, int8_t *q, float *d, float *sum, \
                                int32_t *start) {                                           \
        for (int g = 0; g < k / QG; g++) {                                                  \
            float v[QG], amax = 0.f;                                                        \
            for (int i = 0; i < QG; i++) {                                                  \
                v[i] = LD(x + g * QG + i);                                                  \
                const float a = v[i] < 0.f ? -v[i] : v[i];                                  \
                amax = a > amax ? a : amax;                                                 \
            }                                                                               \
            const float inv = amax > 0.f ? 127.f / amax : 0.f;                              \
            int32_t qs = 0;                                                                 \
            for (int i = 0; i < QG; i++) {                                                  \
                const int8_t qi = (int8_t)__builtin_rintf(v[i] * inv);                      \
                q[g * QG + i] = qi;                                                         \
                qs += qi;                                                                   \
            }                                                                               \
            d[g] = amax / 127.f;                                                            \
            sum[g] = d[g] * (float)qs;                                                      \
            start[g] = -off * qs;                                                           \
        }                                                                                   \
    }

static inline float ld_f32(const float *p) { return *p; }
static inline float ld_bf16(const uint16_t *p) { return bf16_to_float(*p); }
DEFINE_QUANT_ROW(f32, float, ld_f32)
DEFINE_QUANT_ROW(bf16, uint16_t, ld_bf16)

#if QGEMM_SIMD == 2
static inline __m512 bf16x16_to_ps(const uint16_t *p) {
    const __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
static inline __m512 fp16x16_to_ps(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

/* One tile (16 output rows) for rows m0 .. m0 + mt of x, every group; mt is a
 * constant at each call site, so the loops over it unroll into registers. */
static inline __attribute__((always_inline)) void tile_block(const uint8_t *tile, int groups, int bits,
                                                             int has_zero, const qact *a, int k, long m0,
                                                             const int mt, __m512 *y) {
    const long tg = tile_group_bytes(bits, has_zero), wbytes = (long)QT * QG * bits / 8;
    const __m512i low = _mm512_set1_epi8(0x0f);
    for (int m = 0; m < mt; m++) y[m] = _mm512_setzero_ps();
    for (int g = 0; g < groups; g++) {
        const uint8_t *p = tile + g * tg;
        __m512i w[8];
        if (bits == 4) {
            for (int j = 0; j < 4; j++) {
                const __m512i v = _mm512_loadu_si512((const void *)(p + 64 * j));
                w[j] = _mm512_and_si512(v, low);
                w[j + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
            }
        } else {
            for (int j = 0; j < 8; j++) w[j] = _mm512_loadu_si512((const void *)(p + 64 * j));
        }
        const __m512 scale = fp16x16_to_ps((const uint16_t *)(p + wbytes));
#pragma GCC unroll 8
        for (int m = 0; m < mt; m++) {
            const long row = (m0 + m) * (long)(k / QG) + g;
            const int32_t *xq = (const int32_t *)(a->q + (m0 + m) * (long)k + (long)g * QG);
            /* Two chains so a single row is not one 8-deep dependency. */
            __m512i acc0 = _mm512_set1_epi32(a->start[row]), acc1 = _mm512_setzero_si512();
            for (int j = 0; j < 8; j += 2) {
                acc0 = _mm512_dpbusd_epi32(acc0, w[j], _mm512_set1_epi32(xq[j]));
                acc1 = _mm512_dpbusd_epi32(acc1, w[j + 1], _mm512_set1_epi32(xq[j + 1]));
            }
            const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(acc0, acc1)), scale);
            y[m] = _mm512_fmadd_ps(f, _mm512_set1_ps(a->d[row]), y[m]);
        }
        if (has_zero) {
            const __m512 zero = fp16x16_to_ps((const uint16_t *)(p + wbytes + 2 * QT));
            for (int m = 0; m < mt; m++)
                y[m] = _mm512_fmadd_ps(zero, _mm512_set1_ps(a->sum[(m0 + m) * (long)(k / QG) + g]), y[m]);
        }
    }
}

static inline void store_f32(float *dst, __m512 v) { _mm512_storeu_ps(dst, v); }
static inline void store_bf16(uint16_t *dst, __m512 v) {
#if defined(__AVX512BF16__)
    _mm256_storeu_si256((__m256i *)dst, (__m256i)_mm512_cvtneps_pbh(v));
#else
    float t[QT];
    _mm512_storeu_ps(t, v);
    for (int i = 0; i < QT; i++) dst[i] = float_to_bf16(t[i]);
#endif
}
static inline __m512 load_f32(const float *p) { return _mm512_loadu_ps(p); }
static inline __m512 load_bf16(const uint16_t *p) { return bf16x16_to_ps(p); }

#define RUN_BLOCK(MT)                                                                      \
    do {                                                                                   \
        __m512 y[MT];                                                                      \
        tile_block(tile, groups, bits, has_zero, &a, k, m0, MT, y);                       \
        for (int m = 0; m < MT; m++) {                                                     \
            __m512 v = bias ? _mm512_add_ps(y[m], bias_v) : y[m];                          \
            STORE(out + (m0 + m) * ldy + (long)t * QT, v);                                \
        }                                                                                  \
    } while (0)
#endif /* QGEMM_SIMD == 2 */

#if QGEMM_SIMD == 1
/* AVX2 has no vpdpbusd, and a 64-byte vector of the layout is two 32-byte
 * halves: rows 0-7, then rows 8-15 of the tile. Per half and activation row,
 * vector j against a broadcast of x's four int8 values at 32 g + 4 j:
 * vpmaddubsw (u8 x s8, adjacent pairs summed to int16), then vpmaddwd
 * against ones (int16 pairs to int32 lanes, one per output row). Every
 * integer is exact:
 *   4-bit: u <= 15, |xq| <= 127, so a pair is at most 3810 and the eight
 *          vectors' pairs add up in int16 (<= 30480) before one vpmaddwd;
 *   8-bit: u up to 255 would saturate an int16 pair, so the level is made
 *          signed (w = u - 128, the xor), and vpmaddubsw takes |w| against
 *          xq * sign(w) (|w| <= 128, a pair <= 32512); each vector goes to
 *          int32 before the next is added. That sum is already
 *          sum((u - 128) * xq), so the -off * sum(xq) start is not added;
 *          a 4-bit blob without zeros (off 8) adds it after the vpmaddwd.
 * The float steps are the VNNI path's, in its order. The integer core (the
 * weight loads and these dot products) is qgemm_avx2.h, shared with
 * moe_qgemm.c. */
static inline __m256 bf16x8_to_ps(const uint16_t *p) {
    const __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* One group g of rows 8 h .. 8 h + 7 of one tile, for x rows m0 .. m0 + mt
 * (qgemm_avx2.h's group step, shared with moe_qgemm.c). */
static inline __attribute__((always_inline)) void group_half(const uint8_t *tile, int g, const int bits,
                                                             int has_zero, const qact *a, int k, long m0,
                                                             const int mt, const int h, __m256 *y) {
    qg_avx2_group_half(tile, tile_group_bytes(bits, has_zero), (long)QT * QG * bits / 8, g, bits, has_zero, a->q,
                       a->d, a->sum, a->start, k, m0, NULL, mt, h, y);
}

/* Rows 8 h .. 8 h + 7 of one tile, every group: the weights of the other
 * half come again from the L1/L2 cache on the second pass. */
static inline __attribute__((always_inline)) void half_block(const uint8_t *tile, int groups, const int bits,
                                                             int has_zero, const qact *a, int k, long m0,
                                                             const int mt, const int h, __m256 *y) {
    for (int m = 0; m < mt; m++) y[m] = _mm256_setzero_ps();
    for (int g = 0; g < groups; g++) group_half(tile, g, bits, has_zero, a, k, m0, mt, h, y);
}

/* Both halves group by group (y: mt accumulators for half 0, then mt for
 * half 1), for a block of few rows. Why: at one row half_block's two passes
 * leave memory idle during the second (it reads the cache), so a tile
 * streamed from DRAM at about half the rate a plain read gets here; one pass
 * keeps the stream going. The same float steps per output in the same order. */
static inline __attribute__((always_inline)) void both_block(const uint8_t *tile, int groups, const int bits,
                                                             int has_zero, const qact *a, int k, long m0,
                                                             const int mt, __m256 *y) {
    for (int m = 0; m < 2 * mt; m++) y[m] = _mm256_setzero_ps();
    const long tg = tile_group_bytes(bits, has_zero);
    for (int g = 0; g < groups; g++) {
        qg_prefetch_ahead(tile + g * tg, tg);
        for (int h = 0; h < 2; h++) group_half(tile, g, bits, has_zero, a, k, m0, mt, h, y + h * mt);
    }
}

static inline void store_f32(float *dst, __m256 v) { _mm256_storeu_ps(dst, v); }
static inline void store_bf16(uint16_t *dst, __m256 v) {
    float t[8];
    _mm256_storeu_ps(t, v);
    for (int i = 0; i < 8; i++) dst[i] = float_to_bf16(t[i]);
}
static inline __m256 load_f32(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 load_bf16(const uint16_t *p) { return bf16x8_to_ps(p); }

#define RUN_HALF(BITS, MT, H)                                                              \
    do {                                                                                   \
        __m256 y[MT];                                                                      \
        half_block(tile, groups, BITS, has_zero, &a, k, m0, MT, H, y);                    \
        for (int m = 0; m < MT; m++) {                                                     \
            const __m256 v = bias ? _mm256_add_ps(y[m], bias_v[H]) : y[m];                 \
            STORE(out + (m0 + m) * ldy + (long)t * QT + 8 * H, v);                        \
        }                                                                                  \
    } while (0)
#define RUN_BOTH(BITS, MT)                                                                 \
    do {                                                                                   \
        __m256 y[2 * (MT)];                                                                \
        both_block(tile, groups, BITS, has_zero, &a, k, m0, (MT), y);                     \
        for (int hh = 0; hh < 2; hh++)                                                     \
            for (int m = 0; m < (MT); m++) {                                               \
                const __m256 yv = y[hh * (MT) + m];                                        \
                const __m256 v = bias ? _mm256_add_ps(yv, bias_v[hh]) : yv;                \
                STORE(out + (m0 + m) * ldy + (long)t * QT + 8 * hh, v);                   \
            }                                                                              \
    } while (0)
/* Blocks of up to BOTH_MAX rows run both halves per group (both_block). */
#ifndef BOTH_MAX
#define BOTH_MAX 2
#endif
#define RUN_BLOCK(MT)                                                                      \
    do {                                                                                   \
        if ((MT) <= BOTH_MAX) {                                                            \
            if (bits == 4) RUN_BOTH(4, (MT) <= BOTH_MAX ? (MT) : 1);                       \
            else RUN_BOTH(8, (MT) <= BOTH_MAX ? (MT) : 1);                                 \
        } else if (bits == 4) { RUN_HALF(4, MT, 0); RUN_HALF(4, MT, 1); }                  \
        else { RUN_HALF(8, MT, 0); RUN_HALF(8, MT, 1); }                                   \
    } while (0)
#endif /* QGEMM_SIMD == 1 */

/* The portable path (neither AVX2 nor VNNI): the same arithmetic, one weight at a time. */
#define DEFINE_SCALAR_TILE(SUF, T)                                                                      \
    static void scalar_tile_##SUF(const uint8_t *tile, int groups, int bits, int has_zero, const qact *a, \
                                  int k, long rows, const T *bias, T *out, long ldy, int t) {             \
        const long tg = tile_group_bytes(bits, has_zero), wbytes = (long)QT * QG * bits / 8;                      \
        for (long m = 0; m < rows; m++) {                                                               \
            float y[QT] = {0};                                                                          \
            for (int g = 0; g < groups; g++) {                                                          \
                const uint8_t *p = tile + g * tg;                                                       \
                const uint16_t *sz = (const uint16_t *)(p + wbytes);                                    \
                const long row = m * (long)(k / QG) + g;                                                \
                const int8_t *xq = a->q + m * (long)k + (long)g * QG;                                   \
                for (int r = 0; r < QT; r++) {                                                          \
                    int32_t acc = a->start[row];                                                        \
                    for (int kk = 0; kk < QG; kk++) {                                                   \
                        const int j = kk / 4, b = kk % 4;                                               \
                        int u;                                                                          \
                        if (bits == 8) u = p[64 * j + r * 4 + b];                                       \
                        else u = j < 4 ? p[64 * j + r * 4 + b] & 15 : p[64 * (j - 4) + r * 4 + b] >> 4; \
                        acc += u * xq[kk];                                                              \
                    }                                                                                   \
                    y[r] += (float)acc * fp16_to_float(sz[r]) * a->d[row];                              \
                    if (has_zero) y[r] += fp16_to_float(sz[QT + r]) * a->sum[row];                      \
                }                                                                                       \
            }                                                                                           \
            for (int r = 0; r < QT; r++) {                                                              \
                const float v = y[r] + (bias ? ld_##SUF(bias + (long)t * QT + r) : 0.f);                \
                st_##SUF(out + m * ldy + (long)t * QT + r, v);                                          \
            }                                                                                           \
        }                                                                                               \
    }
static inline void st_f32(float *p, float x) { *p = x; }
static inline void st_bf16(uint16_t *p, float x) { *p = float_to_bf16(x); }
DEFINE_SCALAR_TILE(f32, float)
DEFINE_SCALAR_TILE(bf16, uint16_t)

/* Parallelize only when the weights are big enough to pay for waking a thread. */
#define PAR_MIN_WEIGHTS 65536L

#if QGEMM_SIMD == 1
#define SIMD_TILE(SUF)                                                                    \
    do {                                                                                  \
        __m256 bias_v[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};                    \
        if (bias) {                                                                       \
            bias_v[0] = load_##SUF(bias + (long)t * QT);                                  \
            bias_v[1] = load_##SUF(bias + (long)t * QT + 8);                              \
        }                                                                                 \
        long m0 = 0;                                                                      \
        for (; m0 + MB <= rows; m0 += MB) RUN_BLOCK(MB);                                  \
        switch (rows - m0) {                                                              \
        case 3: RUN_BLOCK(3); break;                                                      \
        case 2: RUN_BLOCK(2); break;                                                      \
        case 1: RUN_BLOCK(1); break;                                                      \
        default: break;                                                                   \
        }                                                                                 \
    } while (0)
#elif QGEMM_SIMD == 2
#define SIMD_TILE(SUF)                                                                    \
    do {                                                                                  \
        const __m512 bias_v = bias ? load_##SUF(bias + (long)t * QT) : _mm512_setzero_ps(); \
        long m0 = 0;                                                                      \
        for (; m0 + MB <= rows; m0 += MB) RUN_BLOCK(MB);                                  \
        switch (rows - m0) {                                                              \
        case 7: RUN_BLOCK(7); break;                                                      \
        case 6: RUN_BLOCK(6); break;                                                      \
        case 5: RUN_BLOCK(5); break;                                                      \
        case 4: RUN_BLOCK(4); break;                                                      \
        case 3: RUN_BLOCK(3); break;                                                      \
        case 2: RUN_BLOCK(2); break;                                                      \
        case 1: RUN_BLOCK(1); break;                                                      \
        default: break;                                                                   \
        }                                                                                 \
    } while (0)
#else
#define SIMD_TILE(SUF) scalar_tile_##SUF(tile, groups, bits, has_zero, &a, k, rows, bias, out, ldy, t)
#endif

/* x [rows, k] (row stride ldx) -> out [rows, n] (row stride ldy). n must be a
 * multiple of 16 and k of 32; w is the packed layout above. Returns 0, or -1
 * when the scratch for the quantized activations cannot be allocated. */
#define DEFINE_QGEMM(SUF, T)                                                                           \
    int jv_qgemm_##SUF(const T *x, long ldx, const uint8_t *w, int bits, int has_zero, const T *bias,  \
                       T *out, long ldy, long rows, int n, int k, int nthreads) {                      \
        const int groups = k / QG, off = level_offset(bits, has_zero);                                 \
        const long ngroups = rows * groups;                                                            \
        qact a;                                                                                        \
        char *scratch = malloc(rows * (long)k + ngroups * 12 + 64);                                    \
        if (!scratch) return -1;                                                                       \
        a.d = (float *)scratch;                                                                        \
        a.sum = a.d + ngroups;                                                                         \
        a.start = (int32_t *)(a.sum + ngroups);                                                        \
        a.q = (int8_t *)(a.start + ngroups);                                                           \
        const long tg = tile_group_bytes(bits, has_zero);                                              \
        _Pragma("omp parallel num_threads(nthreads) if ((long)n * k >= PAR_MIN_WEIGHTS)")             \
        {                                                                                              \
            _Pragma("omp for schedule(static)")                                                        \
            for (long m = 0; m < rows; m++)                                                            \
                quant_row_##SUF(x + m * ldx, k, off, a.q + m * (long)k, a.d + m * groups,            \
                                a.sum + m * groups, a.start + m * groups);                             \
            _Pragma("omp for schedule(static)")                                                        \
            for (int t = 0; t < n / QT; t++) {                                                         \
                const uint8_t *tile = w + (long)t * groups * tg;                                       \
                SIMD_TILE(SUF);                                                                        \
            }                                                                                          \
        }                                                                                              \
        free(scratch);                                                                                 \
        return 0;                                                                                      \
    }

#define STORE store_f32
DEFINE_QGEMM(f32, float)
#undef STORE
#define STORE store_bf16
DEFINE_QGEMM(bf16, uint16_t)
#undef STORE
