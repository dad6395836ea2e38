/* Register tiles shared by sparse_mla.c (MLA over selected latent entries)
 * and dsa_index.c (the lightning indexer's scores): many query heads against
 * a chunk of up to CHUNK cache rows widened to float32, q . k for every pair
 * (score_chunk) and value rows into per-head accumulators (accum_chunk).
 * AVX2 + FMA tiles of HT heads where the widths allow, the compiler's loops
 * for the rest; a (head, row) pair's sum does not depend on which rows share
 * its chunk, nor, when callers group heads in multiples of HT, on the group. */
#ifndef JEVONS_SPARSE_TILES_H
#define JEVONS_SPARSE_TILES_H
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SMLA_AVX2 1
#else
#define SMLA_AVX2 0
#endif

enum {
    CHUNK = 16,      /* entries widened and scored at once */
    HT = 4,          /* heads per register tile */
};

static inline void widen(const void *src, int bf16, float *dst, int n) {
    if (bf16) {
        const uint16_t *s = (const uint16_t *)src;
        uint32_t *d = (uint32_t *)dst;
        for (int i = 0; i < n; i++) d[i] = (uint32_t)s[i] << 16;
    } else {
        memcpy(dst, src, (size_t)n * sizeof(float));
    }
}

/* A row as floats: in place for float32, else widened into buf. */
static inline const float *as_floats(const void *src, int bf16, float *buf, int n) {
    if (!bf16) return (const float *)src;
    widen(src, 1, buf, n);
    return buf;
}

static inline float dot(const float *a, const float *b, int n) {
    float s = 0.f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

#if SMLA_AVX2
static inline float hsum8(__m256 v) {
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1)));
}

/* s[i * ss + j] = q_i . k_j for 4 heads x 3 entries, c % 8 == 0: 12
 * accumulators, 7 loads per 12 fmas. */
static inline void score_4x3(const float *q, const float *k, int c, float *s, int ss) {
    __m256 a[4][3];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++) a[i][j] = _mm256_setzero_ps();
    for (int x = 0; x < c; x += 8) {
        const __m256 k0 = _mm256_loadu_ps(k + x), k1 = _mm256_loadu_ps(k + c + x), k2 = _mm256_loadu_ps(k + 2 * c + x);
        for (int i = 0; i < 4; i++) {
            const __m256 qv = _mm256_loadu_ps(q + (long)i * c + x);
            a[i][0] = _mm256_fmadd_ps(qv, k0, a[i][0]);
            a[i][1] = _mm256_fmadd_ps(qv, k1, a[i][1]);
            a[i][2] = _mm256_fmadd_ps(qv, k2, a[i][2]);
        }
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++) s[i * ss + j] = hsum8(a[i][j]);
}

/* One entry against 4 heads (the chunk's leftover entries). */
static inline void score_4x1(const float *q, const float *k, int c, float *s, int ss) {
    __m256 a[4];
    for (int i = 0; i < 4; i++) a[i] = _mm256_setzero_ps();
    for (int x = 0; x < c; x += 8) {
        const __m256 kv = _mm256_loadu_ps(k + x);
        for (int i = 0; i < 4; i++) a[i] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (long)i * c + x), kv, a[i]);
    }
    for (int i = 0; i < 4; i++) s[i * ss] = hsum8(a[i]);
}

/* o_i[0:r] += sum_j p[i * ps + j] * v_j[0:r] for 4 heads, r % 16 == 0: a
 * tile of 4 heads x 16 floats stays in registers across the chunk's entries. */
static inline void accum_4(float *o, int r, const float *p, int ps, const float *v, int vs, int n) {
    for (int x = 0; x < r; x += 16) {
        __m256 a[4][2];
        for (int i = 0; i < 4; i++) {
            a[i][0] = _mm256_loadu_ps(o + (long)i * r + x);
            a[i][1] = _mm256_loadu_ps(o + (long)i * r + x + 8);
        }
        for (int j = 0; j < n; j++) {
            const __m256 v0 = _mm256_loadu_ps(v + (long)j * vs + x), v1 = _mm256_loadu_ps(v + (long)j * vs + x + 8);
            for (int i = 0; i < 4; i++) {
                const __m256 pv = _mm256_broadcast_ss(p + i * ps + j);
                a[i][0] = _mm256_fmadd_ps(pv, v0, a[i][0]);
                a[i][1] = _mm256_fmadd_ps(pv, v1, a[i][1]);
            }
        }
        for (int i = 0; i < 4; i++) {
            _mm256_storeu_ps(o + (long)i * r + x, a[i][0]);
            _mm256_storeu_ps(o + (long)i * r + x + 8, a[i][1]);
        }
    }
}
#endif

/* s[i * CHUNK + j] = q_i . k_j for nh heads (q rows c apart) and n entries. */
static void score_chunk(const float *q, int nh, const float *k, int n, int c, float *s) {
    int i = 0;
#if SMLA_AVX2
    if (c % 8 == 0)
        for (; i + HT <= nh; i += HT) {
            int j = 0;
            for (; j + 3 <= n; j += 3) score_4x3(q + (long)i * c, k + (long)j * c, c, s + i * CHUNK + j, CHUNK);
            for (; j < n; j++) score_4x1(q + (long)i * c, k + (long)j * c, c, s + i * CHUNK + j, CHUNK);
        }
#endif
    for (; i < nh; i++)
        for (int j = 0; j < n; j++) s[i * CHUNK + j] = dot(q + (long)i * c, k + (long)j * c, c);
}

/* o_i[0:r] += sum_j p[i * CHUNK + j] * v_j[0:r], entries c apart. */
static void accum_chunk(float *o, int nh, int r, const float *p, const float *v, int c, int n) {
    int i = 0;
#if SMLA_AVX2
    if (r % 16 == 0)
        for (; i + HT <= nh; i += HT) accum_4(o + (long)i * r, r, p + i * CHUNK, CHUNK, v, c, n);
#endif
    for (; i < nh; i++) {
        float *oi = o + (long)i * r;
        for (int j = 0; j < n; j++) {
            const float pj = p[i * CHUNK + j];
            const float *vj = v + (long)j * c;
            for (int x = 0; x < r; x++) oi[x] += pj * vj[x];
        }
    }
}

static inline long slot_of(const int64_t *table, long pos, int block_size) {
    return table[pos / block_size] * block_size + pos % block_size;
}
#endif
