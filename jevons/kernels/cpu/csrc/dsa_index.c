/* DeepSeek-V3.2's lightning indexer scores for decode rows, reading the cached
 * indexer keys in place through the block table:
 *     I[b, s] = sum_h w[b, h] * relu(scale * q[b, h] . k[s]),  s < len[b]
 * the score every cached token gets before the top-k selection (which stays
 * in torch: kernels/torch_ref/sparse_mla.py).
 *
 * Why C: the torch path gathers every context key into a copy, widens (or
 * dequantizes) it to float32 and runs the heads through einsums in slices;
 * at long contexts that was most of a sparse decode step on the CPU. Here 16
 * keys at a time are widened into a small buffer and meet every head there.
 *
 * Keys, per token in the cache (row `entry_bytes` apart): float32 or bf16
 * values (fmt 0, 1), or fmt 2: [Di e4m3 bytes | Di / dims_per_scale float32
 * scales] (kernels/torch_ref/index_keys.py). q [B, H, Di] and w [B, H] are
 * float32; out [B, out_stride] float32, 0 past len[b]. Work items are (row,
 * 256 keys); each score is one row's own sum, in one order, whatever the
 * batch or the threads. Returns 0, or -1 when scratch cannot be allocated. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sparse_tiles.h"

enum { KEYS_PER_ITEM = 256, FMT_F32 = 0, FMT_BF16 = 1, FMT_FP8 = 2 };

/* e4m3fn byte -> float, exactly: 4 exponent bits (bias 7), 3 mantissa bits,
 * subnormals below 2^-6, NaN at 0x7f / 0xff, no infinities. */
static float e4m3_value(unsigned b) {
    const int e = (b >> 3) & 15, m = b & 7;
    float v;
    if (e == 15 && m == 7)
        v = NAN;
    else if (e == 0)
        v = ldexpf((float)m, -9);
    else
        v = ldexpf(1.f + m / 8.f, e - 7);
    return (b & 0x80) ? -v : v;
}

#if defined(__F16C__) && SMLA_AVX2
/* 8 e4m3 bytes -> floats / 256: the byte's 7 magnitude bits placed at an IEEE
 * half's bits 13..7 make a half of the same sign whose value is the e4m3 one
 * times 2^-8, subnormals included (both formats' subnormals continue their
 * normals alike); F16C widens 8 halves at once. NaN (0x7f) is never stored:
 * quantization clamps to +-448. */
static inline __m256 e4m3x8_over_256(const unsigned char *p) {
    const __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)p));
    const __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x7f)), 7),
                                   _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x80)), 8));
    return _mm256_cvtph_ps(h);
}
#endif

static void load_key(const char *row, int fmt, int di, int dims_per_scale, const float *lut, float *dst) {
    if (fmt != FMT_FP8) {
        widen(row, fmt == FMT_BF16, dst, di);
        return;
    }
    const unsigned char *q = (const unsigned char *)row;
    for (int b0 = 0; b0 < di; b0 += dims_per_scale) {
        float scale;
        memcpy(&scale, row + di + sizeof(float) * (size_t)(b0 / dims_per_scale), sizeof(float));
        int i = b0;
#if defined(__F16C__) && SMLA_AVX2
        const __m256 s256 = _mm256_set1_ps(scale * 256.f);
        for (; i + 8 <= b0 + dims_per_scale; i += 8) _mm256_storeu_ps(dst + i, _mm256_mul_ps(e4m3x8_over_256(q + i), s256));
#endif
        for (; i < b0 + dims_per_scale; i++) dst[i] = lut[q[i]] * scale;
    }
}

int jv_index_scores(const float *q, const float *w, const void *keys, int fmt, long entry_bytes,
                    const int64_t *tables, long bt_stride, const int64_t *lens, float *out, long out_stride,
                    int batch, int heads, int di, int block_size, int dims_per_scale, float scale, int nthreads) {
    if (fmt == FMT_FP8 && (dims_per_scale <= 0 || di % dims_per_scale)) return -2;
    float lut[256];
    for (unsigned i = 0; i < 256; i++) lut[i] = e4m3_value(i);
    long max_len = 0;
    for (int b = 0; b < batch; b++) max_len = lens[b] > max_len ? lens[b] : max_len;
    const long per_row = (max_len + KEYS_PER_ITEM - 1) / KEYS_PER_ITEM;
    const char *base = (const char *)keys;
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        float *buf = malloc(sizeof(float) * (size_t)CHUNK * di);
        float *s = malloc(sizeof(float) * (size_t)heads * CHUNK);
        if (!buf || !s) failed = 1;
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < (long)batch * per_row; it++) {
            if (failed) continue;
            const long b = it / per_row, k0 = (it % per_row) * KEYS_PER_ITEM;
            const long len = lens[b];
            float *ob = out + b * out_stride;
            const long k1 = k0 + KEYS_PER_ITEM < len ? k0 + KEYS_PER_ITEM : len;
            for (long j = k1 > k0 ? k1 : k0; j < k0 + KEYS_PER_ITEM && j < out_stride; j++) ob[j] = 0.f;
            const int64_t *table = tables + b * bt_stride;
            const float *qb = q + b * (long)heads * di, *wb = w + b * (long)heads;
            for (long j0 = k0; j0 < k1; j0 += CHUNK) {
                const int n = (int)(k1 - j0 < CHUNK ? k1 - j0 : CHUNK);
                for (int j = 0; j < n; j++)
                    load_key(base + slot_of(table, j0 + j, block_size) * entry_bytes, fmt, di, dims_per_scale, lut,
                             buf + (long)j * di);
                score_chunk(qb, heads, buf, n, di, s);
                for (int j = 0; j < n; j++) {
                    float acc = 0.f;
                    for (int h = 0; h < heads; h++) {
                        const float x = scale * s[h * CHUNK + j];
                        acc += wb[h] * (x > 0.f ? x : 0.f);
                    }
                    ob[j0 + j] = acc;
                }
            }
        }
        free(buf), free(s);
    }
    return failed ? -1 : 0;
}
