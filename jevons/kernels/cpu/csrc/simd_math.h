/* Let gcc vectorize loops that call expf: glibc's libmvec has SIMD variants
 * (AVX2, AVX-512), but math.h declares them only under -ffast-math, which
 * would also drop NaN and inf handling. Declaring the attribute here gets the
 * vector calls without the rest (link with -lmvec; error below 4 ulp). */
#ifndef JEVONS_SIMD_MATH_H
#define JEVONS_SIMD_MATH_H
#include <math.h>
float expf(float) __attribute__((simd("notinbranch")));
#endif
