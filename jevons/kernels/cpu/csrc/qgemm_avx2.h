/* The AVX2 integer core shared by qgemm.c and moe_qgemm.c: one 32-byte half
 * (8 output rows) of a tile-group's weights, and its dot products with one
 * activation row's 32 int8 values. See qgemm.c's header for the layout and
 * its AVX2 section for why every sum is exact. Include after <immintrin.h>,
 * only when AVX2 + FMA + F16C are on. `bits` is a constant at every call
 * site, so the branches fold and the eight vectors stay in registers. */
#ifndef JV_QGEMM_AVX2_H
#define JV_QGEMM_AVX2_H

#include <stdint.h>

/* Eight half-precision values (scales or zeros of 8 rows) as floats. */
static inline __m256 qg_fp16x8(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* Half h's eight weight vectors of the tile-group at p (p already offset by
 * 32 h): 4-bit levels as bytes 0..15; 8-bit levels made signed (u - 128). */
static inline __attribute__((always_inline)) void qg_avx2_weights(const uint8_t *p, const int bits, __m256i *w) {
    if (bits == 4) {
        const __m256i low = _mm256_set1_epi8(0x0f);
        for (int j = 0; j < 4; j++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(p + 64 * j));
            w[j] = _mm256_and_si256(v, low);
            w[j + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        }
    } else {
        const __m256i flip = _mm256_set1_epi8((char)0x80);
        for (int j = 0; j < 8; j++) w[j] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 64 * j)), flip);
    }
}

/* int32 lane r: sum over the group's 32 k of (u - off) * xq for output row r
 * (4-bit: off 0; 8-bit: off 128, the signed levels). xq: the row's 32 int8
 * values at this group, read as eight int32 broadcasts. */
static inline __attribute__((always_inline)) __m256i qg_avx2_dot(const __m256i *w, const int32_t *xq, const int bits) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (bits == 4) {
        /* Two chains, so a single row is not one 8-deep dependency; int16 is
         * exact: a pair is at most 3810, eight vectors' pairs at most 30480. */
        __m256i s0 = _mm256_maddubs_epi16(w[0], _mm256_set1_epi32(xq[0]));
        __m256i s1 = _mm256_maddubs_epi16(w[1], _mm256_set1_epi32(xq[1]));
        for (int j = 2; j < 8; j += 2) {
            s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(w[j], _mm256_set1_epi32(xq[j])));
            s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(w[j + 1], _mm256_set1_epi32(xq[j + 1])));
        }
        return _mm256_madd_epi16(_mm256_add_epi16(s0, s1), ones);
    }
    /* Signed levels: vpmaddubsw takes |w| (128 stays 0x80, which is 128 as the
     * unsigned operand) against xq * sign(w); a pair is at most 32512, so
     * each vector goes to int32 before the next is added. */
    __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
    for (int j = 0; j < 8; j += 2) {
        const __m256i x0 = _mm256_sign_epi8(_mm256_set1_epi32(xq[j]), w[j]);
        const __m256i x1 = _mm256_sign_epi8(_mm256_set1_epi32(xq[j + 1]), w[j + 1]);
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w[j]), x0), ones));
        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w[j + 1]), x1), ones));
    }
    return _mm256_add_epi32(a0, a1);
}

/* One group g of rows 8 h .. 8 h + 7 of one tile (tile-groups tg bytes apart,
 * wbytes of levels each, then the half scales and, with has_zero, the half
 * zeros), for mt activation rows, added into y[0 .. mt): row m is arow[m]
 * (MoE's sorted rows) or, with arow NULL, base + m (a block of x). The
 * activations' int8 values q (k a row) and, per row and group (k / 32 a row),
 * d, d * sum(q) and -off * sum(q). The one float order both kernels use:
 * y += d * scale * dot, then + zero * sum. bits, mt and h are constants at
 * each call site and arow's NULL-ness too, so it all folds into registers. */
static inline __attribute__((always_inline)) void qg_avx2_group_half(
    const uint8_t *tile, long tg, long wbytes, int g, const int bits, int has_zero, const int8_t *q,
    const float *d, const float *sum, const int32_t *start, int k, long base, const int32_t *arow, const int mt,
    const int h, __m256 *y) {
    const long groups = k / 32;
    __m256i w[8];
    qg_avx2_weights(tile + g * tg + 32 * h, bits, w);
    const __m256 scale = qg_fp16x8((const uint16_t *)(tile + g * tg + wbytes) + 8 * h);
    for (int m = 0; m < mt; m++) {
        const long r = arow ? (long)arow[m] : base + m, row = r * groups + g;
        /* 8-bit: the signed levels' sum needs no start; 4-bit only without zeros (off 8) */
        __m256i acc = qg_avx2_dot(w, (const int32_t *)(q + r * k + (long)g * 32), bits);
        if (bits == 4 && !has_zero) acc = _mm256_add_epi32(acc, _mm256_set1_epi32(start[row]));
        const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), scale);
        y[m] = _mm256_fmadd_ps(f, _mm256_set1_ps(d[row]), y[m]);
    }
    if (has_zero) {
        const __m256 zero = qg_fp16x8((const uint16_t *)(tile + g * tg + wbytes + 2 * 16) + 8 * h);
        for (int m = 0; m < mt; m++) {
            const long r = arow ? (long)arow[m] : base + m;
            y[m] = _mm256_fmadd_ps(zero, _mm256_set1_ps(sum[r * groups + g]), y[m]);
        }
    }
}

/* Prefetch the bytes of one tile-group (tg bytes at p) QG_PF_DIST ahead. Why:
 * at one or two activation rows a tile streams from memory, and the core
 * keeps too few loads in flight on its own (a 4-bit 1-row pass read ~12 GB/s
 * on Zen 3, a plain float sum ~19); asking 2 KB ahead got ~16-17. Tiles of a
 * blob are contiguous, so near a tile's end this reaches into the next one.
 * A prefetch never faults, so running past the blob's end is harmless. */
#define QG_PF_DIST 2048
static inline __attribute__((always_inline)) void qg_prefetch_ahead(const uint8_t *p, long tg) {
    for (long off = 0; off < tg; off += 64) _mm_prefetch((const char *)p + QG_PF_DIST + off, _MM_HINT_T0);
}

#endif
