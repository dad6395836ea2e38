/* AVX2 + FMA bodies of paged_attention.c's two inner loops, for CPUs without
 * AVX-512 (most consumer CPUs, AMD Zen 2/3): the same functions, names and
 * contracts as the AVX-512 versions there, on 8-float vectors and 16 ymm
 * registers instead of 16-float vectors and 32 zmm.
 *
 * score_chunk: up to 16 tokens of one kv head against every query head of its
 *   group, 8 tokens at a time: per query head, 8 dot products accumulated
 *   side by side (query vector j against key j of each token, the keys read
 *   from the cache, widened on load) and one transpose-and-add (sum8).
 * accum_block: value rows into the query heads' accumulators, a tile of 2
 *   heads x 32 floats of d in registers across the whole block.
 * Sums run in a different order from the torch reference (and from the
 * AVX-512 path): results agree to float rounding, as the tests check. */
#ifndef JEVONS_ATTENTION_AVX2_H
#define JEVONS_ATTENTION_AVX2_H
#include <immintrin.h>

static inline __m256 ld8_f32(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 ld8_bf16(const uint16_t *p) {
    const __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* r[t] = the sum of a[t]'s 8 lanes, as one vector in token order. */
static inline __m256 sum8(const __m256 a[8]) {
    const __m256 s0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    const __m256 s1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    /* s0: tokens 0-3's low-half sums, then their high-half sums; s1 likewise for 4-7 */
    return _mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20), _mm256_permute2f128_ps(s0, s1, 0x31));
}

#define AVX2_SCORE_OK(d) ((d) % 8 == 0)
#define AVX2_ACCUM_OK(d) ((d) % 32 == 0)

/* 1 when done here; 0 sends the caller to the row-by-row path. Rows past n
 * are never read (their pointers repeat row 0; their scores are dropped). */
#define DEFINE_CHUNK16(SUF, T)                                                                      \
    static inline int score_chunk_##SUF(const float *qf, const T *k, long tok_stride, int n, int d,  \
                                        int groups, float *s, long s_stride, float *kbuf) {         \
        (void)kbuf;                                                                                 \
        if (!AVX2_SCORE_OK(d)) return 0;                                                            \
        const int nv = d / 8;                                                                       \
        for (int c = 0; c < n; c += 8) {                                                            \
            const int m = n - c < 8 ? n - c : 8;                                                    \
            const T *kt[8];                                                                         \
            for (int t = 0; t < 8; t++) kt[t] = k + (long)(c + (t < m ? t : 0)) * tok_stride;        \
            for (int g = 0; g < groups; g++) {                                                      \
                const float *qg = qf + (long)g * d;                                                 \
                __m256 a[8];                                                                        \
                for (int t = 0; t < 8; t++) a[t] = _mm256_setzero_ps();                             \
                for (int j = 0; j < nv; j++) {                                                      \
                    const __m256 qv = _mm256_loadu_ps(qg + 8 * j);                                  \
                    for (int t = 0; t < 8; t++) a[t] = _mm256_fmadd_ps(qv, ld8_##SUF(kt[t] + 8 * j), a[t]); \
                }                                                                                   \
                float *sg = s + g * s_stride + c;                                                   \
                if (m == 8) {                                                                       \
                    _mm256_storeu_ps(sg, sum8(a));                                                  \
                } else {                                                                            \
                    float tmp[8];                                                                   \
                    _mm256_storeu_ps(tmp, sum8(a));                                                 \
                    for (int t = 0; t < m; t++) sg[t] = tmp[t];                                     \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
        return 1;                                                                                   \
    }

#define DEFINE_ACCUM_BLOCK(SUF, T)                                                                  \
    static inline int accum_block_##SUF(float *acc, const T *v, long tok_stride, int n, int d,       \
                                        int groups, const float *p, long p_stride) {                \
        if (!AVX2_ACCUM_OK(d)) return 0;                                                            \
        for (int g0 = 0; g0 < groups; g0 += 2) {                                                    \
            const int two = groups - g0 >= 2;                                                       \
            float *a0p = acc + (long)g0 * d, *a1p = a0p + (two ? d : 0);                            \
            const float *p0 = p + (long)g0 * p_stride, *p1 = p0 + (two ? p_stride : 0);             \
            for (int i = 0; i < d; i += 32) {                                                       \
                __m256 a0[4], a1[4];                                                                \
                for (int j = 0; j < 4; j++) {                                                       \
                    a0[j] = _mm256_loadu_ps(a0p + i + 8 * j);                                       \
                    a1[j] = _mm256_loadu_ps(a1p + i + 8 * j);                                       \
                }                                                                                   \
                for (int t = 0; t < n; t++) {                                                       \
                    const __m256 w0 = _mm256_set1_ps(p0[t]), w1 = _mm256_set1_ps(p1[t]);            \
                    for (int j = 0; j < 4; j++) {                                                   \
                        const __m256 vv = ld8_##SUF(v + t * tok_stride + i + 8 * j);                \
                        a0[j] = _mm256_fmadd_ps(w0, vv, a0[j]);                                     \
                        a1[j] = _mm256_fmadd_ps(w1, vv, a1[j]);                                     \
                    }                                                                               \
                }                                                                                   \
                /* an odd last head ran twice on the same row: store it once */                     \
                for (int j = 0; j < 4; j++) {                                                       \
                    _mm256_storeu_ps(a0p + i + 8 * j, a0[j]);                                       \
                    if (two) _mm256_storeu_ps(a1p + i + 8 * j, a1[j]);                              \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
        return 1;                                                                                   \
    }

static inline float max_of_avx2(const float *x, long n, long *done) {
    __m256 v = _mm256_set1_ps(-INFINITY);
    long i = 0;
    for (; i + 8 <= n; i += 8) v = _mm256_max_ps(v, _mm256_loadu_ps(x + i));
    const __m128 h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 q = _mm_max_ps(h, _mm_movehl_ps(h, h));
    *done = i;
    return _mm_cvtss_f32(_mm_max_ss(q, _mm_shuffle_ps(q, q, 1)));
}
#endif
