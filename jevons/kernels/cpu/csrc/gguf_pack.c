/* ggml's Q4_0 / Q4_1 / Q8_0 / Q4_K blocks straight into qgemm's weight blob.
 *
 * The same bytes kernels/cpu/qgemm.py `pack` makes from the levels
 * loader/gguf_quant.py reads out of the blocks (its docstring has the
 * mapping), without the levels in between: a 1.5B Q4_K_M GGUF spent ~15 s of
 * its start-up decoding nibbles in numpy and permuting them in torch. Blob
 * layout per (16-row tile, 32-column group): the levels (4 bits: byte
 * j*64 + r*4 + b holds columns 4j+b (low nibble) and 16+4j+b (high) of row r;
 * 8 bits: byte j*64 + r*4 + b holds column 4j+b), then 16 half scales, then
 * for Q4_1 and Q4_K 16 half zeros, one per row (Q4_0's and Q8_0's grids are
 * symmetric: their blobs store no zeros, see qgemm.c). Every scale and zero is rounded to half exactly
 * as torch rounds the float32 the levels hold (round to nearest even); a
 * negated zero flips the sign bit, so -0 stays -0 whatever the compiler's
 * sign-of-zero flags. Plain C, no SIMD: it runs at memory speed anyway. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"
#include "half_round.h"

enum { TILE = 16, GROUP = 32, Q4_0 = 2, Q4_1 = 3, Q8_0 = 8, Q4_K = 12 };

static uint16_t ld16(const uint8_t *p) { uint16_t h; memcpy(&h, p, 2); return h; }

/* Q4_K's 6-bit scale and min of sub-block g (ggml's get_scale_min_k4). */
static void k_scale_min(const uint8_t *s, int g, int *sc, int *mn) {
    if (g < 4) {
        *sc = s[g] & 63;
        *mn = s[g + 4] & 63;
    } else {
        *sc = (s[g + 4] & 0xF) | ((s[g - 4] >> 6) << 4);
        *mn = (s[g + 4] >> 4) | ((s[g] >> 6) << 4);
    }
}

/* Row `row`'s column group g: 32 levels, the half scale and zero. */
static void decode(const uint8_t *row, int kind, int64_t g, uint8_t *u, uint16_t *scale, uint16_t *zero) {
    if (kind == Q4_0 || kind == Q4_1) {
        const int nb = kind == Q4_0 ? 18 : 20;
        const uint8_t *b = row + g * nb, *qs = b + (kind == Q4_0 ? 2 : 4);
        for (int j = 0; j < 16; j++) {
            u[j] = qs[j] & 15;
            u[j + 16] = qs[j] >> 4;
        }
        *scale = ld16(b);
        *zero = kind == Q4_1 ? ld16(b + 2) : 0; /* Q4_0: none, its levels sit at offset 8 */
    } else if (kind == Q8_0) {
        const uint8_t *b = row + g * 34;
        for (int j = 0; j < 32; j++) u[j] = (uint8_t)(b[2 + j] ^ 0x80u); /* int8 q + 128 */
        *scale = ld16(b);
        *zero = 0;
    } else { /* Q4_K: 256-value super-blocks of 8 sub-blocks */
        const uint8_t *b = row + (g / 8) * 144;
        const int sub = (int)(g % 8), run = sub / 2, high = sub % 2;
        const uint8_t *qs = b + 16 + run * 32;
        int sc, mn;
        for (int j = 0; j < 32; j++) u[j] = high ? qs[j] >> 4 : qs[j] & 15;
        k_scale_min(b + 4, sub, &sc, &mn);
        *scale = f32_to_f16(fp16_to_float(ld16(b)) * (float)sc);
        *zero = (uint16_t)(f32_to_f16(fp16_to_float(ld16(b + 2)) * (float)mn) ^ 0x8000u);
    }
}

/* raw: the tensor's blocks, row_bytes per row; n rows of k columns out, row r
 * read from raw row rows[r] (rows NULL: row r). blob: [n/16][k/32][group bytes].
 * Returns 0, or -1 for a kind or shape it does not take. */
int jv_gguf_pack(const uint8_t *raw, int64_t row_bytes, int kind, const int64_t *rows, int64_t n, int64_t k,
                 uint8_t *blob) {
    const int bits = kind == Q8_0 ? 8 : 4;
    const int has_zero = kind == Q4_1 || kind == Q4_K;
    const int64_t wbytes = TILE * GROUP * bits / 8, gbytes = wbytes + (has_zero ? 4 : 2) * TILE, groups = k / GROUP;
    if ((kind != Q4_0 && kind != Q4_1 && kind != Q8_0 && kind != Q4_K) || n % TILE || k % (kind == Q4_K ? 256 : 32))
        return -1;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n / TILE; t++) {
        uint8_t u[GROUP];
        for (int64_t g = 0; g < groups; g++) {
            uint8_t *dst = blob + (t * groups + g) * gbytes;
            for (int r = 0; r < TILE; r++) {
                const int64_t src = rows ? rows[t * TILE + r] : t * TILE + r;
                uint16_t scale, zero;
                decode(raw + src * row_bytes, kind, g, u, &scale, &zero);
                for (int j = 0; j < GROUP / 4 * bits / 8; j++)
                    for (int b = 0; b < 4; b++)
                        dst[j * 64 + r * 4 + b] =
                            bits == 8 ? u[4 * j + b] : (uint8_t)(u[4 * j + b] | (u[16 + 4 * j + b] << 4));
                memcpy(dst + wbytes + 2 * r, &scale, 2);
                if (has_zero) memcpy(dst + wbytes + 2 * TILE + 2 * r, &zero, 2);
            }
        }
    }
    return 0;
}
