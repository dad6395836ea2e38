/* Absorbed MLA decode over selected latent entries: DeepSeek-V3.2's sparse
 * attention (each decode row attends to the `top-k` cache entries its
 * lightning indexer picked), or to a row's whole context (dense fallback:
 * positions == NULL, V2/V3's decode).
 *
 * Why C: the torch path gathers the selected [k, R + Dr] latents into a copy,
 * then runs four einsums whose bf16 forms have no fast CPU path without
 * native bf16 (the output projection alone took seconds per call at 128
 * heads). Here each selected row is read in place through the block table,
 * widened to float once per 16-row chunk, and serves every head of a work
 * item; all sums are float32.
 *
 * Per decode row b (H heads; C = R + Dr; W = kv_b_proj.weight as
 * [H, Dn + Dv, R], its first Dn rows per head W_UK, the rest W_UV):
 *   1. q[h] = scale * [q_nope[h] @ W_UK[h] | q_rope[h]]           (absorb)
 *   2. s[h, j] = q[h] . kv[slot(pos_j)], j < len[b]; p = softmax(s)
 *      o[h] = sum_j p[h, j] kv[slot(pos_j)][:R]                     (attend)
 *   3. out[h] = W_UV[h] @ o[h]                                      (expand)
 * with slot(pos) = table[pos / block_size] * block_size + pos % block_size.
 * Step 2 runs one pass over the entries in chunks of 16 with a running max
 * (online softmax): the rows are read once.
 *
 * Layouts (elements, row-major, dense): q_nope [B, H, Dn], q_rope [B, H, Dr],
 * kv [slots, C], tables [B, bt_stride] int64 (row b: decode row b's table),
 * positions [B, pos_stride] int64 or NULL, lens [B] int64, w [H, Dn + Dv, R],
 * out [B, H, Dv].
 *
 * 8-bit weights (w_scale != NULL): w is int8 [H, Dn + Dv, R] and w_scale
 * float32 [H, Dn + Dv], one scale per row, W[h, i, x] = w_scale[h, i] *
 * w[h, i, x]. At batch 1 the float32 kv_b is most of MLA's bytes (8.4 MB a
 * layer at V2-Lite's shape against ~0.6 MB of a 256-token latent context), and
 * decode is bandwidth-bound, so reading a quarter of it is the point. Row
 * scales fold out of the sums exactly: step 1 sums over a row's d, so
 * q_nope[h, d] is scaled by w_scale[h, d] first; step 3's row v is one dot
 * product, scaled by w_scale[h, Dn + v] after. With AVX2 the int8 rows are
 * widened in registers (int8 -> float32 is exact) inside the sums: step 1
 * keeps a 64-float strip of q in registers over a block of DB rows (the
 * block in L1 for every decode row, the next one prefetched), step 3 dots 4
 * rows at once against o. Elsewhere a row is widened to float once and runs
 * the float path's loops.
 *
 * Threads: step 1 and 3 split heads, step 2 splits (row, group of heads).
 * A head's sums run in the same order whatever the split or thread count, so
 * results do not depend on the batch or on the threads. AVX2 + FMA tiles
 * where this CPU has them (C a multiple of 8, R of 16), the compiler's loops
 * anywhere else. Returns 0, or -1 when scratch memory cannot be allocated. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "simd_math.h"

#include "sparse_tiles.h"

enum { GROUP_MAX = 32 /* heads per work item at most: their q and o (139 KB at V3.2's dims) stay in L2 */ };

/* Which vector path this build runs: 1 AVX2 + FMA, 0 the compiler's loops. */
int jv_sparse_mla_simd(void) { return SMLA_AVX2; }

/* Step 2 for one row and heads [h0, h0 + nh): q [nh, c] (scaled), o [nh, r]. */
static void attend(const float *q, float *o, int nh, const void *kv, int bf16, int c, int r, const int64_t *table,
                   const int64_t *pos, long len, int block_size, float *buf, float *s, float *m, float *l) {
    const size_t esz = bf16 ? 2 : 4;
    const char *base = (const char *)kv;
    for (int i = 0; i < nh; i++) m[i] = -INFINITY, l[i] = 0.f;
    memset(o, 0, sizeof(float) * (size_t)nh * r);
    for (long j0 = 0; j0 < len; j0 += CHUNK) {
        const int n = (int)(len - j0 < CHUNK ? len - j0 : CHUNK);
        for (int j = 0; j < n; j++) {
            const long p = pos ? pos[j0 + j] : j0 + j;
            widen(base + slot_of(table, p, block_size) * c * esz, bf16, buf + (long)j * c, c);
        }
        /* The next chunk's rows sit at scattered slots: ask for them now. */
        const long next = len - j0 - n < CHUNK ? len - j0 - n : CHUNK;
        for (long j = 0; j < next; j++) {
            const long p = pos ? pos[j0 + n + j] : j0 + n + j;
            const char *row = base + slot_of(table, p, block_size) * c * esz;
            for (size_t off = 0; off < c * esz; off += 64) __builtin_prefetch(row + off, 0, 3);
        }
        score_chunk(q, nh, buf, n, c, s);
        for (int i = 0; i < nh; i++) {
            float *si = s + i * CHUNK;
            float cm = si[0];
            for (int j = 1; j < n; j++) cm = si[j] > cm ? si[j] : cm;
            if (cm > m[i]) { /* a new max: rescale what is summed so far */
                if (m[i] != -INFINITY) {
                    const float f = expf(m[i] - cm);
                    float *oi = o + (long)i * r;
                    for (int x = 0; x < r; x++) oi[x] *= f;
                    l[i] *= f;
                }
                m[i] = cm;
            }
            float sum = 0.f;
            for (int j = 0; j < n; j++) {
                si[j] = expf(si[j] - m[i]);
                sum += si[j];
            }
            l[i] += sum;
        }
        accum_chunk(o, nh, r, s, buf, c, n);
    }
    for (int i = 0; i < nh; i++) {
        const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
        float *oi = o + (long)i * r;
        for (int x = 0; x < r; x++) oi[x] *= inv;
    }
}

/* Weight row i of w [*, r] as floats: int8 widened into buf (unscaled: the
 * caller folds w_scale[i] in), a float32 row in place, bf16 widened. */
static inline const float *weight_row(const void *w, const float *w_scale, long i, int r, size_t esz, int bf16,
                                      float *buf) {
    if (w_scale) {
        const int8_t *src = (const int8_t *)w + i * r;
        for (int x = 0; x < r; x++) buf[x] = (float)src[x];
        return buf;
    }
    return as_floats((const char *)w + i * r * esz, bf16, buf, r);
}

enum {
    DB = 16,    /* W_UK rows absorbed per block: 8 KB of int8 at R = 512, in L1 while every decode row uses it */
    AHEAD = 8,  /* W_UV rows prefetched this far ahead of the 4 being read */
};

#if SMLA_AVX2
static inline __m256 load_i8x8(const int8_t *p) { /* 8 int8 -> 8 floats, exact */
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* q[0:r] += sum_{j < n} coef[j] * w8[j][0:r] (rows r apart), r % 64 == 0: a
 * strip of 64 floats stays in 8 registers across the n rows, which are
 * summed in row order (the widened loop's order). `next`: the following
 * block's rows, prefetched a line a row per strip. */
static void absorb_i8(float *q, const float *coef, const int8_t *w8, int n, int r, const int8_t *next, int nn) {
    for (int x = 0; x < r; x += 64) {
        for (int j = 0; j < nn; j++) __builtin_prefetch(next + (long)j * r + x, 0, 3);
        __m256 a[8];
        for (int k = 0; k < 8; k++) a[k] = _mm256_loadu_ps(q + x + 8 * k);
        for (int j = 0; j < n; j++) {
            const __m256 cj = _mm256_broadcast_ss(coef + j);
            const int8_t *src = w8 + (long)j * r + x;
            for (int k = 0; k < 8; k++) a[k] = _mm256_fmadd_ps(cj, load_i8x8(src + 8 * k), a[k]);
        }
        for (int k = 0; k < 8; k++) _mm256_storeu_ps(q + x + 8 * k, a[k]);
    }
}

/* y[i] = o . w8[i] for rows i < n (n <= 4, r apart), r % 8 == 0: the rows
 * share each load of o; 8 lanes summed then folded, in one fixed order.
 * `ahead` (or NULL): 4 rows to prefetch meanwhile. */
static void expand_i8(const float *o, const int8_t *w8, int n, int r, float *y, const int8_t *ahead) {
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    if (n == 4) {
        for (int x = 0; x < r; x += 8) {
            /* `ahead`: 4 rows further on (4r bytes), a line every 16 of x */
            if (ahead && (x & 15) == 0) __builtin_prefetch(ahead + 4 * x, 0, 3);
            const __m256 ov = _mm256_loadu_ps(o + x);
            for (int i = 0; i < 4; i++) a[i] = _mm256_fmadd_ps(ov, load_i8x8(w8 + (long)i * r + x), a[i]);
        }
    } else {
        for (int x = 0; x < r; x += 8) {
            const __m256 ov = _mm256_loadu_ps(o + x);
            for (int i = 0; i < n; i++) a[i] = _mm256_fmadd_ps(ov, load_i8x8(w8 + (long)i * r + x), a[i]);
        }
    }
    for (int i = 0; i < n; i++) y[i] = hsum8(a[i]);
}
#endif

/* Step 1 for head h on int8 rows with AVX2 (r % 64 == 0): DB rows of W_UK at
 * a time, each block serving every decode row while it sits in L1. */
static void absorb_head_i8(float *q, const void *q_nope, const int8_t *w8, const float *w_scale, int h, int batch,
                           int heads, int dn, int dv, int r, int c, float scale, int bf16) {
#if SMLA_AVX2
    float coef[DB];
    for (int d0 = 0; d0 < dn; d0 += DB) {
        const int n = dn - d0 < DB ? dn - d0 : DB;
        const long wi = (long)h * (dn + dv) + d0;
        const int nn = dn - d0 - n < DB ? dn - d0 - n : DB;
        for (int b = 0; b < batch; b++) {
            for (int j = 0; j < n; j++) {
                const long at = ((long)b * heads + h) * dn + d0 + j;
                coef[j] = scale * w_scale[wi + j] * (bf16 ? bf16_to_float(((const uint16_t *)q_nope)[at])
                                                          : ((const float *)q_nope)[at]);
            }
            absorb_i8(q + ((long)b * heads + h) * c, coef, w8 + wi * r, n, r, w8 + (wi + n) * r, b ? 0 : nn);
        }
    }
#else
    (void)q, (void)q_nope, (void)w8, (void)w_scale, (void)h, (void)batch, (void)heads, (void)dn, (void)dv;
    (void)r, (void)c, (void)scale, (void)bf16;
#endif
}

/* Step 3 for head h on int8 rows with AVX2 (r % 8 == 0): 4 W_UV rows at a
 * time, each group serving every decode row. */
static void expand_head_i8(const float *o, const int8_t *w8, const float *w_scale, void *out, int h, int batch,
                           int heads, int dn, int dv, int r, int bf16) {
#if SMLA_AVX2
    float y[4];
    for (int v0 = 0; v0 < dv; v0 += 4) {
        const int n = dv - v0 < 4 ? dv - v0 : 4;
        const long wi = (long)h * (dn + dv) + dn + v0;
        for (int b = 0; b < batch; b++) {
            const int more = b == 0 && v0 + AHEAD + 4 <= dv; /* rows AHEAD on, within this head */
            expand_i8(o + ((long)b * heads + h) * r, w8 + wi * r, n, r, y, more ? w8 + (wi + AHEAD) * r : NULL);
            for (int i = 0; i < n; i++) {
                const float yi = y[i] * w_scale[wi + i];
                const long at = ((long)b * heads + h) * dv + v0 + i;
                if (bf16)
                    ((uint16_t *)out)[at] = float_to_bf16(yi);
                else
                    ((float *)out)[at] = yi;
            }
        }
    }
#else
    (void)o, (void)w8, (void)w_scale, (void)out, (void)h, (void)batch, (void)heads, (void)dn, (void)dv, (void)r;
    (void)bf16;
#endif
}

static int sparse_mla_decode(const void *q_nope, const void *q_rope, const void *kv, const int64_t *tables,
                             long bt_stride, const int64_t *positions, long pos_stride, const int64_t *lens,
                             const void *w, const float *w_scale, void *out, int batch, int heads, int dn, int dr,
                             int r, int dv, int block_size, float scale, int nthreads, int bf16) {
    const int c = r + dr;
    const size_t esz = bf16 ? 2 : 4;
    float *q = malloc(sizeof(float) * (size_t)batch * heads * c);
    float *o = malloc(sizeof(float) * (size_t)batch * heads * r);
    if (!q || !o) {
        free(q), free(o);
        return -1;
    }
    /* Work items for step 2: enough (row, head group) pairs for every thread,
     * groups a multiple of the register tile. */
    int groups = (nthreads + batch - 1) / batch;
    if (groups > (heads + HT - 1) / HT) groups = (heads + HT - 1) / HT;
    if (groups < 1) groups = 1;
    int per = (heads + groups - 1) / groups;
    per = (per + HT - 1) / HT * HT;
    if (per > GROUP_MAX) per = GROUP_MAX;
    groups = (heads + per - 1) / per;
    const long items = (long)batch * groups;
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        float *row = malloc(sizeof(float) * (size_t)(r > dn ? r : dn));
        float *buf = malloc(sizeof(float) * (size_t)CHUNK * c);
        float *s = malloc(sizeof(float) * (size_t)per * CHUNK);
        float *ml = malloc(sizeof(float) * 2 * (size_t)per);
        if (!row || !buf || !s || !ml) failed = 1;
        /* 1. absorb: a head's W_UK rows are widened once and serve every row. */
#pragma omp for schedule(static)
        for (int h = 0; h < heads; h++) {
            if (failed) continue;
            for (int b = 0; b < batch; b++) {
                float *qb = q + ((long)b * heads + h) * c;
                memset(qb, 0, sizeof(float) * (size_t)r);
                widen((const char *)q_rope + ((long)b * heads + h) * dr * esz, bf16, qb + r, dr);
                for (int x = 0; x < dr; x++) qb[r + x] *= scale;
            }
            if (w_scale && SMLA_AVX2 && r % 64 == 0) {
                absorb_head_i8(q, q_nope, (const int8_t *)w, w_scale, h, batch, heads, dn, dv, r, c, scale, bf16);
                continue;
            }
            for (int d = 0; d < dn; d++) {
                const long wi = (long)h * (dn + dv) + d;
                const float *wr = weight_row(w, w_scale, wi, r, esz, bf16, row);
                const float sd = w_scale ? scale * w_scale[wi] : scale;
                for (int b = 0; b < batch; b++) {
                    const long at = ((long)b * heads + h) * dn + d;
                    const float qd = sd * (bf16 ? bf16_to_float(((const uint16_t *)q_nope)[at])
                                                : ((const float *)q_nope)[at]);
                    float *qb = q + ((long)b * heads + h) * c;
                    for (int x = 0; x < r; x++) qb[x] += qd * wr[x];
                }
            }
        }
        /* 2. attend */
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < items; it++) {
            if (failed) continue;
            const long b = it / groups;
            const int h0 = (int)(it % groups) * per;
            const int nh = heads - h0 < per ? heads - h0 : per;
            attend(q + ((long)b * heads + h0) * c, o + ((long)b * heads + h0) * r, nh, kv, bf16, c, r,
                   tables + b * bt_stride, positions ? positions + b * pos_stride : NULL, lens[b], block_size,
                   buf, s, ml, ml + per);
        }
        /* 3. expand: a head's W_UV rows are widened once and serve every row. */
#pragma omp for schedule(static)
        for (int h = 0; h < heads; h++) {
            if (failed) continue;
            if (w_scale && SMLA_AVX2 && r % 8 == 0) {
                expand_head_i8(o, (const int8_t *)w, w_scale, out, h, batch, heads, dn, dv, r, bf16);
                continue;
            }
            for (int v = 0; v < dv; v++) {
                const long wi = (long)h * (dn + dv) + dn + v;
                const float *wr = weight_row(w, w_scale, wi, r, esz, bf16, row);
                for (int b = 0; b < batch; b++) {
                    float y = dot(o + ((long)b * heads + h) * r, wr, r);
                    if (w_scale) y *= w_scale[wi];
                    const long at = ((long)b * heads + h) * dv + v;
                    if (bf16)
                        ((uint16_t *)out)[at] = float_to_bf16(y);
                    else
                        ((float *)out)[at] = y;
                }
            }
        }
        free(row), free(buf), free(s), free(ml);
    }
    free(q), free(o);
    return failed ? -1 : 0;
}

#define EXPORT(SUF, BF16)                                                                                      \
    int jv_sparse_mla_decode_##SUF(const void *q_nope, const void *q_rope, const void *kv,                     \
                                   const int64_t *tables, long bt_stride, const int64_t *positions,            \
                                   long pos_stride, const int64_t *lens, const void *w, const float *w_scale, \
                                   void *out, int batch, int heads, int dn, int dr, int r, int dv,           \
                                   int block_size, float scale, int nthreads) {                               \
        return sparse_mla_decode(q_nope, q_rope, kv, tables, bt_stride, positions, pos_stride, lens, w,       \
                                 w_scale, out, batch, heads, dn, dr, r, dv, block_size, scale, nthreads,      \
                                 BF16);                                                                       \
    }
EXPORT(f32, 0)
EXPORT(bf16, 1)
