/* float -> IEEE half, rounded to nearest even as torch's .to(float16) rounds
 * (subnormals and overflow to inf included), for kernels that write half
 * scales torch would have written. */
#ifndef JEVONS_HALF_ROUND_H
#define JEVONS_HALF_ROUND_H
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline uint16_t f32_to_f16(float f) {
    uint32_t x, ax, sign;
    memcpy(&x, &f, 4);
    sign = (x >> 16) & 0x8000u;
    ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u); /* NaN */
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf */
    if (ax < 0x38800000u) { /* below 2^-14: a half subnormal (or 2^-14 itself after rounding) */
        float af;
        memcpy(&af, &ax, 4);
        return (uint16_t)(sign | (uint32_t)nearbyintf(af * 0x1p24f));
    }
    ax -= 112u << 23; /* rebias the exponent: 127 -> 15 */
    return (uint16_t)(sign | ((ax + 0xfffu + ((ax >> 13) & 1u)) >> 13));
}

#endif
