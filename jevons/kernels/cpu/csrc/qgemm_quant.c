/* Float weights quantized straight into qgemm's blob, in one pass: the bytes
 * Int4Linear / Int8Linear make on the qgemm path with torch
 * (kernels/torch_ref/int4_linear.quantize_int4, then qgemm.pack of its
 * levels with zero - 8 * scale; qgemm.quantize_int8_grouped, then qgemm.pack),
 * which stay the reference (tests/test_qgemm_quant.py). Loading a 1.5B
 * Q4_K_M GGUF quantized its Q6_K layers that way in ~9 s of torch ops on two
 * cores; here it is one read of the weight.
 *
 * Every step is torch's float32 operation in torch's order, rounded where
 * torch rounds (bf16 and half: to nearest even), so contraction and
 * reassociation are off for this file. Blob layout: see gguf_pack.c; our
 * int4 grid is asymmetric (zeros stored), int8 symmetric (no zeros). */
#pragma GCC optimize("fp-contract=off", "no-associative-math", "no-reciprocal-math")
#include <float.h>
#ifdef __AVX__
#include <immintrin.h>
#endif
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"
#include "half_round.h"

enum { TILE = 16, GROUP = 32 };

static float load(const void *w, int bf16, int64_t i) {
    return bf16 ? bf16_to_float(((const uint16_t *)w)[i]) : ((const float *)w)[i];
}

static float round_bf16(float x) { return bf16_to_float(float_to_bf16(x)); }

/* The group's min and max as the sequential scans `v < lo ? v : lo` and
 * `v > hi ? v : hi` from v[0] find them, in 8 lanes the compiler vectorizes
 * (each lane is such a scan; min and max are exact, so only which of equal
 * values wins can differ: +0 against -0). Where that could matter (a zero or
 * NaN extreme) the plain scan decides, so the bytes never change. */
static void min_max(const float *v, float *lo_out, float *hi_out) {
    float lo8[8], hi8[8];
#ifdef __AVX__ /* vminps a, b = a < b ? a : b and vmaxps a, b = a > b ? a : b, lane by lane */
    __m256 l = _mm256_loadu_ps(v), h = l;
    for (int i = 8; i < GROUP; i += 8) {
        const __m256 x = _mm256_loadu_ps(v + i);
        l = _mm256_min_ps(x, l);
        h = _mm256_max_ps(x, h);
    }
    _mm256_storeu_ps(lo8, l);
    _mm256_storeu_ps(hi8, h);
#else
    for (int j = 0; j < 8; j++) lo8[j] = hi8[j] = v[j];
    for (int i = 8; i < GROUP; i += 8)
        for (int j = 0; j < 8; j++) {
            lo8[j] = v[i + j] < lo8[j] ? v[i + j] : lo8[j];
            hi8[j] = v[i + j] > hi8[j] ? v[i + j] : hi8[j];
        }
#endif
    float lo = lo8[0], hi = hi8[0];
    int nan = 0; /* a lane that starts at NaN stays NaN and hides its other values */
    for (int j = 0; j < 8; j++) {
        lo = lo8[j] < lo ? lo8[j] : lo;
        hi = hi8[j] > hi ? hi8[j] : hi;
        nan |= lo8[j] != lo8[j];
    }
    if (nan || lo == 0.0f || hi == 0.0f) {
        lo = hi = v[0];
        for (int i = 1; i < GROUP; i++) {
            lo = v[i] < lo ? v[i] : lo;
            hi = v[i] > hi ? v[i] : hi;
        }
    }
    *lo_out = lo;
    *hi_out = hi;
}

/* One row's group: 32 levels, half scale and zero, as quantize_int4 and Int4Linear. */
static void int4_group(const float *v, uint8_t *u, uint16_t *scale_h, uint16_t *zero_h) {
    float lo, hi;
    min_max(v, &lo, &hi);
    const float scale = round_bf16((hi - lo) / 15.0f);
    const float zero = round_bf16((lo + hi) / 2.0f + scale / 2.0f);
    const float s = scale < FLT_MIN ? FLT_MIN : scale; /* clamp(min=tiny): a constant group has scale 0 */
    for (int i = 0; i < GROUP; i++) {
        float q = nearbyintf((v[i] - zero) / s + 8.0f);
        u[i] = (uint8_t)(q < 0.0f ? 0.0f : q > 15.0f ? 15.0f : q);
    }
    *scale_h = f32_to_f16(scale);
    *zero_h = f32_to_f16(zero - 8.0f * scale); /* the kernel's grid: u * scale + (zero - 8 scale) */
}

/* One row's group as quantize_int8_grouped: symmetric, scale amax / 127 in half.
 * amax in 8 lanes: every |v| >= +0 and a NaN is never taken, so any order
 * gives the same value. */
static void int8_group(const float *v, uint8_t *u, uint16_t *scale_h, uint16_t *zero_h) {
    float m8[8] = {0};
#ifdef __AVX__
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < GROUP; i += 8) m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(v + i), abs_mask), m);
    _mm256_storeu_ps(m8, m);
#else
    for (int i = 0; i < GROUP; i += 8)
        for (int j = 0; j < 8; j++) m8[j] = fabsf(v[i + j]) > m8[j] ? fabsf(v[i + j]) : m8[j];
#endif
    float amax = 0.0f;
    for (int j = 0; j < 8; j++) amax = m8[j] > amax ? m8[j] : amax;
    *scale_h = f32_to_f16(amax / 127.0f);
    float s = fp16_to_float(*scale_h);
    s = s < FLT_MIN ? FLT_MIN : s;
    for (int i = 0; i < GROUP; i++) {
        float q = nearbyintf(v[i] / s);
        u[i] = (uint8_t)((q < -127.0f ? -127.0f : q > 127.0f ? 127.0f : q) + 128.0f);
    }
    *zero_h = 0;
}

/* Row r of a (tile, group) in the blob (see gguf_pack.c for the layout): the
 * row's bytes built whole, then stored 4 at a time. */
static void put(uint8_t *dst, int r, const uint8_t *u, uint16_t scale, uint16_t zero, int bits) {
    const int wbytes = TILE * GROUP * bits / 8;
    uint8_t p[GROUP];
    if (bits == 4)
        for (int i = 0; i < 16; i++) p[i] = (uint8_t)(u[i] | (u[16 + i] << 4));
    const uint8_t *row = bits == 4 ? p : u;
    for (int j = 0; j < bits; j++) /* bits == 4: 4 runs of 4 bytes; 8: 8 runs */
        memcpy(dst + j * 64 + r * 4, row + 4 * j, 4);
    memcpy(dst + wbytes + 2 * r, &scale, 2);
    if (bits == 4) memcpy(dst + wbytes + 2 * TILE + 2 * r, &zero, 2); /* int8 blobs store no zeros */
}

/* One group of 32 floats quantized at `bits` into row r of its (tile, group). */
static void quantize_put(uint8_t *dst, int r, const float *v, int bits) {
    uint8_t u[GROUP];
    uint16_t scale, zero;
    if (bits == 4)
        int4_group(v, u, &scale, &zero);
    else
        int8_group(v, u, &scale, &zero);
    put(dst, r, u, scale, zero, bits);
}

/* ggml block types read here as loader/gguf_dequant.py reads them (its
 * float32 products in its order), for stored types with no exact levels. */
enum { F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q4_K = 12, Q5_0 = 6, Q8_0 = 8, Q6_K = 14, BF16 = 30 };

static uint16_t ld16(const uint8_t *p) { uint16_t h; memcpy(&h, p, 2); return h; }

/* Values [32 g, 32 g + 32) of one stored row. Returns -1 for a kind not read here. */
static int dequant_group(const uint8_t *row, int kind, int64_t g, float *v) {
    switch (kind) {
    case F32: memcpy(v, row + g * 128, 128); return 0;
    case F16: for (int i = 0; i < 32; i++) v[i] = fp16_to_float(ld16(row + g * 64 + 2 * i)); return 0;
    case BF16: for (int i = 0; i < 32; i++) v[i] = bf16_to_float(ld16(row + g * 64 + 2 * i)); return 0;
    case Q4_0: case Q4_1: {
        const int nb = kind == Q4_0 ? 18 : 20;
        const uint8_t *b = row + g * nb, *qs = b + nb - 16;
        const float d = fp16_to_float(ld16(b));
        for (int j = 0; j < 16; j++) {
            if (kind == Q4_0) {
                v[j] = (float)((qs[j] & 15) - 8) * d;
                v[j + 16] = (float)((qs[j] >> 4) - 8) * d;
            } else {
                const float m = fp16_to_float(ld16(b + 2));
                v[j] = (float)(qs[j] & 15) * d + m;
                v[j + 16] = (float)(qs[j] >> 4) * d + m;
            }
        }
        return 0;
    }
    case Q8_0: {
        const uint8_t *b = row + g * 34;
        const float d = fp16_to_float(ld16(b));
        for (int i = 0; i < 32; i++) v[i] = (float)(int8_t)b[2 + i] * d;
        return 0;
    }
    case Q5_0: {
        const uint8_t *b = row + g * 22;
        const float d = fp16_to_float(ld16(b));
        uint32_t qh;
        memcpy(&qh, b + 2, 4);
        for (int j = 0; j < 16; j++) {
            v[j] = (float)((int)((b[6 + j] & 15) | (((qh >> j) & 1) << 4)) - 16) * d;
            v[j + 16] = (float)((int)((b[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16) * d;
        }
        return 0;
    }
    case Q4_K: { /* d * sc * q - dmin * mn, the two products first */
        const uint8_t *b = row + (g / 8) * 144, *s = b + 4;
        const int sub = (int)(g % 8);
        const uint8_t *qs = b + 16 + (sub / 2) * 32;
        int sc, mn;
        if (sub < 4) { sc = s[sub] & 63; mn = s[sub + 4] & 63; }
        else { sc = (s[sub + 4] & 0xF) | ((s[sub - 4] >> 6) << 4); mn = (s[sub + 4] >> 4) | ((s[sub] >> 6) << 4); }
        const float dl = fp16_to_float(ld16(b)) * (float)sc, ml = fp16_to_float(ld16(b + 2)) * (float)mn;
        const int shift = sub % 2 ? 4 : 0; /* one shift for the whole run: it vectorizes */
        for (int i = 0; i < 32; i++) v[i] = dl * (float)((qs[i] >> shift) & 15) - ml;
        return 0;
    }
    case Q6_K: { /* 256 values: halves of 128, groups j of 32 in each; an int8 scale per 16 */
        const uint8_t *b = row + (g / 8) * 210;
        const int h = (int)(g % 8) / 4, j = (int)(g % 8) % 4;
        const uint8_t *ql = b + h * 64 + (j % 2) * 32, *qh = b + 128 + h * 32;
        const float d = fp16_to_float(ld16(b + 208));
        const int lshift = j < 2 ? 0 : 4, hshift = 2 * j;
        for (int half = 0; half < 2; half++) { /* the same d * scale product, taken once per 16 */
            const float dl = d * (float)(int8_t)b[192 + (g % 8) * 2 + half];
            for (int e = 16 * half; e < 16 * half + 16; e++)
                v[e] = dl * (float)((((ql[e] >> lshift) & 15) | (((qh[e] >> hshift) & 3) << 4)) - 32);
        }
        return 0;
    }
    default: return -1;
    }
}

/* The float path of a stored tensor without exact levels, in one pass: rows
 * of `kind` blocks (row r of the weight from stored row rows[r], rows NULL:
 * r), dequantized as the loader does, rounded to bf16 first when the model
 * runs in bf16 (to_bf16), quantized as jv_qgemm_quantize. */
int jv_qgemm_quantize_blocks(const uint8_t *raw, int64_t row_bytes, int kind, const int64_t *rows, int64_t n,
                             int64_t k, int to_bf16, int bits, uint8_t *blob) {
    const int64_t wbytes = TILE * GROUP * bits / 8, gbytes = wbytes + (bits == 4 ? 4 : 2) * TILE, groups = k / GROUP;
    float probe[GROUP];
    if (n % TILE || k % (kind == Q4_K || kind == Q6_K ? 256 : GROUP) || (bits != 4 && bits != 8)
        || dequant_group(raw, kind, 0, probe) != 0)
        return -1;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n / TILE; t++) {
        float v[GROUP];
        for (int64_t g = 0; g < groups; g++) {
            uint8_t *dst = blob + (t * groups + g) * gbytes;
            for (int r = 0; r < TILE; r++) {
                const int64_t src = rows ? rows[t * TILE + r] : t * TILE + r;
                dequant_group(raw + src * row_bytes, kind, g, v);
                if (to_bf16)
                    for (int i = 0; i < GROUP; i++) v[i] = round_bf16(v[i]);
                quantize_put(dst, r, v, bits);
            }
        }
    }
    return 0;
}

/* The loader's dequantization of n rows of `kind` blocks into out (float32,
 * or bf16 rounded from it when to_bf16): what loader/gguf_dequant.py and a
 * cast give, for a tensor loaded in float (a GGUF's embedding). Row r of out
 * from stored row rows[r] (rows NULL: r), each checked against the `stored`
 * rows there are: an embedding looked up straight from the file. Returns 0,
 * -1 for a kind or shape it does not take, -2 for a row out of range. */
int jv_gguf_dequantize(const uint8_t *raw, int64_t row_bytes, int kind, const int64_t *rows, int64_t stored,
                       int64_t n, int64_t k, int to_bf16, void *out) {
    float probe[GROUP];
    if (k % (kind == Q4_K || kind == Q6_K ? 256 : GROUP) || dequant_group(raw, kind, 0, probe) != 0) return -1;
    if (rows)
        for (int64_t r = 0; r < n; r++)
            if (rows[r] < 0 || rows[r] >= stored) return -2;
#pragma omp parallel for schedule(static) if (n * k >= 65536)
    for (int64_t r = 0; r < n; r++) {
        const uint8_t *src = raw + (rows ? rows[r] : r) * row_bytes;
        float v[GROUP];
        for (int64_t g = 0; g < k / GROUP; g++) {
            dequant_group(src, kind, g, v);
            if (to_bf16)
                for (int i = 0; i < GROUP; i++) ((uint16_t *)out)[r * k + g * GROUP + i] = float_to_bf16(v[i]);
            else
                memcpy((float *)out + r * k + g * GROUP, v, sizeof v);
        }
    }
    return 0;
}

/* w: [n, k] float32 (bf16 = 0) or bfloat16 (bf16 = 1), rows `ld` elements
 * apart; bits 4 or 8. blob: [n/16][k/32][group bytes]. Returns 0, or -1 for a
 * shape qgemm does not take. */
int jv_qgemm_quantize(const void *w, int bf16, int64_t ld, int64_t n, int64_t k, int bits, uint8_t *blob) {
    const int64_t wbytes = TILE * GROUP * bits / 8, gbytes = wbytes + (bits == 4 ? 4 : 2) * TILE, groups = k / GROUP;
    if (n % TILE || k % GROUP || (bits != 4 && bits != 8)) return -1;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n / TILE; t++) {
        float v[GROUP];
        for (int64_t g = 0; g < groups; g++) {
            uint8_t *dst = blob + (t * groups + g) * gbytes;
            for (int r = 0; r < TILE; r++) {
                const int64_t base = (t * TILE + r) * ld + g * GROUP;
                for (int i = 0; i < GROUP; i++) v[i] = load(w, bf16, base + i);
                quantize_put(dst, r, v, bits);
            }
        }
    }
    return 0;
}
