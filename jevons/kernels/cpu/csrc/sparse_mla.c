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
 * product, scaled by w_scale[h, Dn + v] after. A row is widened to float
 * once (int8 -> float32 is exact) and then runs the float path's loops.
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
