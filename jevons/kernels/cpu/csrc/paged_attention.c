/* Paged decode attention for the CPU: one query token per sequence, keys and
 * values read in place from the paged cache through the block table.
 *
 * Why C: the torch reference gathers every sequence's K/V into a contiguous
 * copy and repeats them per query head (GQA) in every layer of every step;
 * that copying costs more than the attention. Here each (sequence, kv head)
 * pair reads its blocks once and serves all query heads of its group.
 *
 * Layouts (elements, row-major):
 *   q, out        decode row b reads q row q_rows[b]: [Hq, D] at q + q_rows[b] * q_stride
 *   seq_rows[b]   its row in block_tables / seq_lens
 *   k/v cache     [num_blocks, block_size, Hkv, D]
 *   block_tables  [num_seqs, bt_stride] int64
 *   seq_lens      [num_seqs] int64, keys visible to each sequence (its new token included)
 * Every sum is float32; bf16 inputs are widened on load and the output is
 * rounded to nearest even, as torch rounds. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "simd_math.h"

/* Which vector path this build runs (-march flags): 2 AVX-512, 1 AVX2 + FMA, 0 plain loops. */
int jv_attention_simd(void) {
#if defined(__AVX512F__)
    return 2;
#elif defined(__AVX2__) && defined(__FMA__)
    return 1;
#else
    return 0;
#endif
}

/* Widen n elements to float. Separate loops per type so gcc vectorizes each. */
static inline void widen_f32(const float *src, float *dst, int n) { memcpy(dst, src, (size_t)n * sizeof(float)); }
static inline void widen_bf16(const uint16_t *src, float *dst, int n) {
    uint32_t *d = (uint32_t *)dst;
    for (int i = 0; i < n; i++) d[i] = (uint32_t)src[i] << 16;
}
static inline void store_f32(float *dst, const float *src, int n) { memcpy(dst, src, (size_t)n * sizeof(float)); }
static inline void store_bf16(uint16_t *dst, const float *src, int n) {
    for (int i = 0; i < n; i++) dst[i] = float_to_bf16(src[i]);
}

/* One key row against every query head of its group (scores at s[g * s_stride]),
 * and one value row into every head's accumulator (acc[g * d ...] += p[g] * v).
 * AVX-512 versions for head sizes that are a multiple of 16 (all common ones);
 * the plain loops are the fallback and the reference for the rest. On AVX2
 * CPUs the 16-token score chunks and the value blocks below come from
 * attention_avx2.h, and these row versions stay the compiler's loops. */
#ifdef __AVX512F__
#include <immintrin.h>
#define JV_MAX_VECS 16 /* head_dim up to 256 */
static inline __m512 ld16_f32(const float *p) { return _mm512_loadu_ps(p); }
static inline __m512 ld16_bf16(const uint16_t *p) {
    const __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
#define SIMD_OK(d) ((d) % 16 == 0 && (d) <= 16 * JV_MAX_VECS)
#else
#define SIMD_OK(d) 0
#endif

#ifdef __AVX512F__
/* Bodies take the vector count as a parameter and are always inlined: called
 * with a constant (head_dim 32, 64, 128) the loops unroll and the row stays in
 * registers; any other multiple of 16 takes the same code with a runtime count. */
#define DEFINE_SIMD_ROWS(SUF, T)                                                                     \
    static inline __attribute__((always_inline)) void score_simd_##SUF(                             \
        const float *qf, const T *k, int nv, int groups, float *s, long s_stride) {                  \
        __m512 kv[JV_MAX_VECS];                                                                      \
        for (int j = 0; j < nv; j++) kv[j] = ld16_##SUF(k + 16 * j);                                 \
        for (int g = 0; g < groups; g++) {                                                           \
            const float *qg = qf + (long)g * nv * 16;                                                \
            __m512 a = _mm512_mul_ps(_mm512_loadu_ps(qg), kv[0]);                                    \
            for (int j = 1; j < nv; j++) a = _mm512_fmadd_ps(_mm512_loadu_ps(qg + 16 * j), kv[j], a); \
            s[g * s_stride] = _mm512_reduce_add_ps(a);                                               \
        }                                                                                            \
    }                                                                                                \
    static inline __attribute__((always_inline)) void accum_simd_##SUF(                             \
        float *acc, const T *v, int nv, int groups, const float *p, long p_stride) {                 \
        __m512 vv[JV_MAX_VECS];                                                                      \
        for (int j = 0; j < nv; j++) vv[j] = ld16_##SUF(v + 16 * j);                                 \
        for (int g = 0; g < groups; g++) {                                                           \
            const __m512 pg = _mm512_set1_ps(p[g * p_stride]);                                       \
            float *ag = acc + (long)g * nv * 16;                                                     \
            for (int j = 0; j < nv; j++)                                                             \
                _mm512_storeu_ps(ag + 16 * j, _mm512_fmadd_ps(pg, vv[j], _mm512_loadu_ps(ag + 16 * j))); \
        }                                                                                            \
    }
DEFINE_SIMD_ROWS(f32, float)
DEFINE_SIMD_ROWS(bf16, uint16_t)

#define SIMD_DISPATCH(FN, ...)                                                                       \
    if (SIMD_OK(d)) {                                                                                \
        switch (d / 16) {                                                                            \
            case 2: FN(__VA_ARGS__, 2, groups); break;                                               \
            case 4: FN(__VA_ARGS__, 4, groups); break;                                               \
            case 8: FN(__VA_ARGS__, 8, groups); break;                                               \
            default: FN(__VA_ARGS__, d / 16, groups); break;                                         \
        }                                                                                            \
        return;                                                                                      \
    }
#define SCORE_CALL(SUF, qf, k, nv, groups) score_simd_##SUF(qf, k, nv, groups, s, s_stride)
#define ACCUM_CALL(SUF, acc, v, nv, groups) accum_simd_##SUF(acc, v, nv, groups, p, p_stride)
#define SIMD_SCORE(SUF) SIMD_DISPATCH(SCORE_CALL, SUF, qf, k)
#define SIMD_ACCUM(SUF) SIMD_DISPATCH(ACCUM_CALL, SUF, acc, v)
#else
#define SIMD_SCORE(SUF)
#define SIMD_ACCUM(SUF)
#endif

#define DEFINE_ROW_OPS(SUF, T)                                                                       \
    static inline void score_row_##SUF(const float *qf, const T *k, int d, int groups, float *s,     \
                                       long s_stride, float *row) {                                  \
        SIMD_SCORE(SUF)                                                                              \
        widen_##SUF(k, row, d);                                                                      \
        for (int g = 0; g < groups; g++) {                                                           \
            const float *qg = qf + (long)g * d;                                                      \
            float sum = 0.f;                                                                         \
            for (int i = 0; i < d; i++) sum += qg[i] * row[i];                                       \
            s[g * s_stride] = sum;                                                                   \
        }                                                                                            \
    }                                                                                                \
    static inline void accum_row_##SUF(float *acc, const T *v, int d, int groups, const float *p,    \
                                       long p_stride, float *row) {                                  \
        SIMD_ACCUM(SUF)                                                                              \
        widen_##SUF(v, row, d);                                                                      \
        for (int g = 0; g < groups; g++) {                                                           \
            const float pg = p[g * p_stride];                                                        \
            float *ag = acc + (long)g * d;                                                           \
            for (int i = 0; i < d; i++) ag[i] += pg * row[i];                                        \
        }                                                                                            \
    }

DEFINE_ROW_OPS(f32, float)
DEFINE_ROW_OPS(bf16, uint16_t)

#ifdef __AVX512F__
/* Sum each of 16 vectors: r[t] = sum of a[t]'s 16 lanes, as one vector. A
 * transpose-and-add tree (45 ops) instead of 16 horizontal reductions (~150). */
static inline __m512 sum16(const __m512 a[16]) {
    __m512 b[8], c[4];
    for (int i = 0; i < 8; i++) /* per 128-bit lane: [x0+x2, y0+y2, x1+x3, y1+y3] */
        b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++) { /* per 128-bit lane: the lane's sums of tokens 4i..4i+3 */
        const __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(b[2 * i]), _mm512_castps_pd(b[2 * i + 1]));
        const __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(b[2 * i]), _mm512_castps_pd(b[2 * i + 1]));
        c[i] = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
    }
    /* Add the four 128-bit lanes of each c[i], keeping tokens in order. */
    const __m512 e0 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xDD));
    const __m512 e1 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], 0x88), _mm512_shuffle_f32x4(c[2], c[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(e0, e1, 0x88), _mm512_shuffle_f32x4(e0, e1, 0xDD));
}

/* Scores of up to 16 consecutive tokens of one kv head against every query
 * head of its group: the rows are widened once into kbuf, then each query
 * head takes 16 dot products and one sum16. */
#define DEFINE_CHUNK16(SUF, T)                                                                      \
    static inline __attribute__((always_inline)) void chunk16_##SUF(                               \
        const float *qf, const T *k, long tok_stride, int n, int nv, int groups, float *s,          \
        long s_stride, float *kbuf) {                                                               \
        for (int t = 0; t < 16; t++)                                                                \
            for (int j = 0; j < nv; j++)                                                            \
                _mm512_storeu_ps(kbuf + (t * nv + j) * 16,                                          \
                                 t < n ? ld16_##SUF(k + t * tok_stride + 16 * j) : _mm512_setzero_ps()); \
        const __mmask16 keep = (__mmask16)((1u << n) - 1u);                                         \
        for (int g = 0; g < groups; g++) {                                                          \
            const float *qg = qf + (long)g * nv * 16;                                               \
            __m512 qv[JV_MAX_VECS], a[16];                                                          \
            for (int j = 0; j < nv; j++) qv[j] = _mm512_loadu_ps(qg + 16 * j);                      \
            for (int t = 0; t < 16; t++) {                                                          \
                __m512 acc = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kbuf + t * nv * 16));             \
                for (int j = 1; j < nv; j++)                                                        \
                    acc = _mm512_fmadd_ps(qv[j], _mm512_loadu_ps(kbuf + (t * nv + j) * 16), acc);   \
                a[t] = acc;                                                                         \
            }                                                                                       \
            _mm512_mask_storeu_ps(s + g * s_stride, keep, sum16(a));                                \
        }                                                                                           \
    }                                                                                               \
    /* 1 when done here; 0 sends the caller to the row-by-row path. */                              \
    static inline int score_chunk_##SUF(const float *qf, const T *k, long tok_stride, int n, int d,  \
                                        int groups, float *s, long s_stride, float *kbuf) {         \
        switch (SIMD_OK(d) ? d / 16 : 0) {                                                          \
            case 2: chunk16_##SUF(qf, k, tok_stride, n, 2, groups, s, s_stride, kbuf); return 1;    \
            case 4: chunk16_##SUF(qf, k, tok_stride, n, 4, groups, s, s_stride, kbuf); return 1;    \
            case 8: chunk16_##SUF(qf, k, tok_stride, n, 8, groups, s, s_stride, kbuf); return 1;    \
            default: return 0;                                                                      \
        }                                                                                           \
    }
#elif defined(__AVX2__) && defined(__FMA__)
#include "attention_avx2.h" /* its DEFINE_CHUNK16 and DEFINE_ACCUM_BLOCK */
#else
#define DEFINE_CHUNK16(SUF, T)                                                                      \
    static inline int score_chunk_##SUF(const float *qf, const T *k, long tok_stride, int n, int d,  \
                                        int groups, float *s, long s_stride, float *kbuf) {         \
        return 0;                                                                                   \
    }
#endif
DEFINE_CHUNK16(f32, float)
DEFINE_CHUNK16(bf16, uint16_t)

/* Up to a block of value rows (n tokens, one kv head) into the accumulators of
 * every query head of its group, which stay in registers across the block:
 * per token one widened row and groups x nv fmas, instead of loading and
 * storing each head's accumulator for every token. Query heads are taken
 * 16 / nv at a time so accumulators and the row fit the register file. */
#ifdef __AVX512F__
#define DEFINE_ACCUM_BLOCK(SUF, T)                                                                  \
    static inline __attribute__((always_inline)) void accum_block_simd_##SUF(                      \
        float *acc, const T *v, long tok_stride, int n, const int nv, int groups, const float *p,   \
        long p_stride) {                                                                            \
        enum { GC_MAX = 8 };                                                                        \
        const int gc = 16 / nv;                                                                     \
        for (int g0 = 0; g0 < groups; g0 += gc) {                                                   \
            const int gn = groups - g0 < gc ? groups - g0 : gc;                                     \
            __m512 a[GC_MAX * 2];                                                                   \
            for (int g = 0; g < gc; g++)                                                            \
                if (g < gn)                                                                         \
                    for (int j = 0; j < nv; j++)                                                    \
                        a[g * nv + j] = _mm512_loadu_ps(acc + (long)(g0 + g) * nv * 16 + 16 * j);   \
            for (int t = 0; t < n; t++) {                                                           \
                __m512 vv[JV_MAX_VECS];                                                             \
                for (int j = 0; j < nv; j++) vv[j] = ld16_##SUF(v + t * tok_stride + 16 * j);       \
                for (int g = 0; g < gc; g++) {                                                      \
                    if (g >= gn) break;                                                             \
                    const __m512 pg = _mm512_set1_ps(p[(long)(g0 + g) * p_stride + t]);             \
                    for (int j = 0; j < nv; j++) a[g * nv + j] = _mm512_fmadd_ps(pg, vv[j], a[g * nv + j]); \
                }                                                                                   \
            }                                                                                       \
            for (int g = 0; g < gc; g++)                                                            \
                if (g < gn)                                                                         \
                    for (int j = 0; j < nv; j++)                                                    \
                        _mm512_storeu_ps(acc + (long)(g0 + g) * nv * 16 + 16 * j, a[g * nv + j]);   \
        }                                                                                           \
    }                                                                                               \
    /* 1 when done here; 0 sends the caller to the row-by-row path. */                              \
    static inline int accum_block_##SUF(float *acc, const T *v, long tok_stride, int n, int d,       \
                                        int groups, const float *p, long p_stride) {                \
        switch (SIMD_OK(d) ? d / 16 : 0) {                                                          \
            case 2: accum_block_simd_##SUF(acc, v, tok_stride, n, 2, groups, p, p_stride); return 1; \
            case 4: accum_block_simd_##SUF(acc, v, tok_stride, n, 4, groups, p, p_stride); return 1; \
            case 8: accum_block_simd_##SUF(acc, v, tok_stride, n, 8, groups, p, p_stride); return 1; \
            default: return 0;                                                                      \
        }                                                                                           \
    }
#elif defined(__AVX2__) && defined(__FMA__)
/* DEFINE_ACCUM_BLOCK: attention_avx2.h */
#else
#define DEFINE_ACCUM_BLOCK(SUF, T)                                                                  \
    static inline int accum_block_##SUF(float *acc, const T *v, long tok_stride, int n, int d,       \
                                        int groups, const float *p, long p_stride) {                \
        return 0;                                                                                   \
    }
#endif
DEFINE_ACCUM_BLOCK(f32, float)
DEFINE_ACCUM_BLOCK(bf16, uint16_t)

/* The largest of n floats. Written out because the plain loop's NaN
 * semantics keep gcc from vectorizing it, and a serial vmaxss chain was a
 * sixth of the kernel's time. */
static inline float max_of(const float *x, long n) {
    float m = -INFINITY;
    long i = 0;
#ifdef __AVX512F__
    __m512 v = _mm512_set1_ps(-INFINITY);
    for (; i + 16 <= n; i += 16) v = _mm512_max_ps(v, _mm512_loadu_ps(x + i));
    m = _mm512_reduce_max_ps(v);
#elif defined(__AVX2__) && defined(__FMA__)
    m = max_of_avx2(x, n, &i);
#endif
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* Ask for the next block's rows while this one is computed: blocks sit at
 * scattered addresses, so the hardware prefetchers only catch on after the
 * first misses of each. ntok rows of row_bytes, tok_bytes apart. */
static inline void prefetch_rows(const void *base, long tok_bytes, int ntok, long row_bytes) {
    const char *p = (const char *)base;
    for (int t = 0; t < ntok; t++)
        for (long off = 0; off < row_bytes; off += 64) __builtin_prefetch(p + t * tok_bytes + off, 0, 3);
}

/* Work items are a sequence and a range of its kv heads: the whole sequence
 * when there are enough sequences to keep every thread busy, else one kv head
 * each. Within an item, tokens are walked block by block (no division per
 * slot) and, per token, across the item's heads, so the cache is read in
 * address order: one token's [Hkv, D] keys are contiguous. Every kv head's
 * rows serve all the query heads of its group. */
#define DEFINE_DECODE(NAME, SUF, T, WIDEN, STORE)                                                      \
    int NAME(const T *q, long q_stride, const int64_t *q_rows, const int64_t *seq_rows,               \
             const T *k_cache, const T *v_cache, const int64_t *block_tables, long bt_stride,         \
             const int64_t *seq_lens, T *out, long out_stride, int batch, int hq, int hkv, int d,      \
             int block_size, float scale, int nthreads) {                               \
        const int groups = hq / hkv;                                                                  \
        const int per_item = batch >= 2 * nthreads ? hkv : 1; /* kv heads per work item */            \
        const int rows = per_item * groups;                   /* query heads per work item */         \
        const long tok_stride = (long)hkv * d; /* elements between consecutive tokens in a block */   \
        const long blk_stride = (long)block_size * tok_stride;                                        \
        long max_len = 1; /* from the lengths themselves: scratch is sized by what is read */        \
        for (int b = 0; b < batch; b++)                                                               \
            max_len = seq_lens[seq_rows[b]] > max_len ? seq_lens[seq_rows[b]] : max_len;              \
        const long padded = (max_len + block_size - 1) / block_size * block_size;                     \
        int failed = 0;                                                                               \
        _Pragma("omp parallel num_threads(nthreads)") {                                               \
            float *scores = malloc(sizeof(float) * (size_t)rows * (size_t)padded);                    \
            float *qf = malloc(sizeof(float) * (size_t)rows * d);                                     \
            float *acc = malloc(sizeof(float) * (size_t)rows * d);                                    \
            float *row = malloc(sizeof(float) * (size_t)d);                                           \
            float *kbuf = malloc(sizeof(float) * 16 * (size_t)d); /* 16 widened key rows */           \
            if (!scores || !qf || !acc || !row || !kbuf) failed = 1;                                  \
            _Pragma("omp for schedule(dynamic, 1)")                                                   \
            for (long item = 0; item < (long)batch * (hkv / per_item); item++) {                      \
                if (failed) continue;                                                                 \
                const long b = item / (hkv / per_item);                                               \
                const int h0 = (int)(item % (hkv / per_item)) * per_item;                             \
                const long len = seq_lens[seq_rows[b]];                                               \
                const int64_t *table = block_tables + seq_rows[b] * bt_stride;                        \
                const T *qb = q + q_rows[b] * q_stride + (long)h0 * groups * d;                       \
                for (int r = 0; r < rows; r++) {                                                      \
                    WIDEN(qb + (long)r * d, qf + (long)r * d, d);                                     \
                    for (int i = 0; i < d; i++) qf[(long)r * d + i] *= scale;                         \
                }                                                                                     \
                const long nblocks = (len + block_size - 1) / block_size;                             \
                for (long blk = 0; blk < nblocks; blk++) {                                            \
                    const T *kb = k_cache + table[blk] * blk_stride + (long)h0 * d;                   \
                    /* the next key block, or after the last one the first value block */           \
                    prefetch_rows((blk + 1 < nblocks ? k_cache + table[blk + 1] * blk_stride          \
                                                     : v_cache + table[0] * blk_stride) + (long)h0 * d, \
                                  tok_stride * (long)sizeof(T), block_size, (long)per_item * d * (long)sizeof(T)); \
                    const long t0 = blk * block_size;                                                 \
                    const int n = (int)(len - t0 < block_size ? len - t0 : block_size);               \
                    for (int c = 0; c < n; c += 16) {                                                 \
                        const int m = n - c < 16 ? n - c : 16;                                        \
                        for (int h = 0; h < per_item; h++) {                                          \
                            const float *qh = qf + (long)h * groups * d;                              \
                            const T *kh = kb + c * tok_stride + (long)h * d;                          \
                            float *sh = scores + (long)h * groups * padded + t0 + c;                  \
                            if (score_chunk_##SUF(qh, kh, tok_stride, m, d, groups, sh, padded, kbuf)) \
                                continue;                                                             \
                            for (int t = 0; t < m; t++)                                               \
                                score_row_##SUF(qh, kh + t * tok_stride, d, groups, sh + t, padded, row); \
                        }                                                                             \
                    }                                                                                 \
                }                                                                                     \
                for (int r = 0; r < rows; r++) {                                                      \
                    float *sg = scores + (long)r * padded;                                            \
                    float m = -INFINITY, sum = 0.f;                                                   \
                    m = max_of(sg, len);                                                              \
                    for (long t = 0; t < len; t++) { sg[t] = expf(sg[t] - m); sum += sg[t]; }         \
                    const float inv = sum > 0.f ? 1.f / sum : 0.f;                                    \
                    for (long t = 0; t < len; t++) sg[t] *= inv;                                      \
                }                                                                                     \
                memset(acc, 0, sizeof(float) * (size_t)rows * d);                                     \
                for (long blk = 0; blk < nblocks; blk++) {                                            \
                    const T *vb = v_cache + table[blk] * blk_stride + (long)h0 * d;                   \
                    if (blk + 1 < nblocks)                                                            \
                        prefetch_rows(v_cache + table[blk + 1] * blk_stride + (long)h0 * d,          \
                                      tok_stride * (long)sizeof(T), block_size, (long)per_item * d * (long)sizeof(T)); \
                    const long t0 = blk * block_size;                                                 \
                    const int n = (int)(len - t0 < block_size ? len - t0 : block_size);               \
                    for (int h = 0; h < per_item; h++) {                                              \
                        float *ah = acc + (long)h * groups * d;                                       \
                        const float *ph = scores + (long)h * groups * padded + t0;                    \
                        if (accum_block_##SUF(ah, vb + (long)h * d, tok_stride, n, d, groups, ph, padded)) \
                            continue;                                                                 \
                        for (int t = 0; t < n; t++)                                                   \
                            accum_row_##SUF(ah, vb + t * tok_stride + (long)h * d, d, groups, ph + t, \
                                            padded, row);                                             \
                    }                                                                                 \
                }                                                                                     \
                T *ob = out + q_rows[b] * out_stride + (long)h0 * groups * d;                         \
                for (int r = 0; r < rows; r++) STORE(ob + (long)r * d, acc + (long)r * d, d);         \
            }                                                                                         \
            free(scores); free(qf); free(acc); free(row); free(kbuf);                                             \
        }                                                                                             \
        return failed ? -1 : 0;                                                                       \
    }

DEFINE_DECODE(jv_decode_attention_f32, f32, float, widen_f32, store_f32)
DEFINE_DECODE(jv_decode_attention_bf16, bf16, uint16_t, widen_bf16, store_bf16)
