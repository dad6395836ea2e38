/* The small per-layer ops of a decoder layer, each one pass over its rows.
 *
 * Why C: in eager PyTorch each of these is 4 to 12 separate ops (an RMSNorm is
 * a cast, a square, a mean, an add, an rsqrt, two multiplies and a cast back),
 * and at decode batch sizes their dispatch costs more than their arithmetic.
 *
 * Numerics follow the torch references exactly where the references round:
 * bf16 results of each torch op are rounded to bf16 here at the same point, and
 * floating-point contraction is off in this file so a*b+c is two roundings as
 * in torch. Reductions (the RMSNorm mean) sum in a different order, so results
 * can differ from the reference in the last bit. */
#pragma GCC optimize("fp-contract=off")
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"
#include "simd_math.h"

/* Round a float as storing it in T and loading it back would. */
static inline float keep_f32(float x) { return x; }
static inline float keep_bf16(float x) { return bf16_to_float(float_to_bf16(x)); }
static inline float ld_f32(const float *p) { return *p; }
static inline float ld_bf16(const uint16_t *p) { return bf16_to_float(*p); }
static inline void st_f32(float *p, float x) { *p = x; }
static inline void st_bf16(uint16_t *p, float x) { *p = float_to_bf16(x); }

/* Parallelize only when there is enough work to pay for waking a thread
 * (a few microseconds with the threads spinning): SiLU's exp and divide cost
 * ~1 ns an element on one core, so it splits far sooner than the norms. */
#define PAR_MIN_ELEMS 65536L
#define PAR_MIN_SILU 4096L

/* out = weight * T(x * rsqrt(mean(x^2) + eps)); with add, x = T(x + residual)
 * first and that sum is also written to sum_out. */
#define DEFINE_NORM(SUF, T)                                                                          \
    void jv_add_rms_norm_##SUF(const T *x, long x_stride, const T *residual, long r_stride,          \
                               const T *weight, T *out, T *sum_out, long rows, int dim, float eps,  \
                               int nthreads) {                                                       \
        _Pragma("omp parallel for num_threads(nthreads) if (rows * dim >= PAR_MIN_ELEMS)")          \
        for (long r = 0; r < rows; r++) {                                                            \
            const T *xr = x + r * x_stride;                                                          \
            T *o = out + r * (long)dim;                                                              \
            float ss = 0.f;                                                                          \
            if (residual) {                                                                          \
                const T *rr = residual + r * r_stride;                                               \
                T *s = sum_out + r * (long)dim;                                                      \
                for (int i = 0; i < dim; i++) {                                                      \
                    const float v = keep_##SUF(ld_##SUF(xr + i) + ld_##SUF(rr + i));                 \
                    st_##SUF(s + i, v);                                                              \
                    ss += v * v;                                                                     \
                }                                                                                    \
                xr = s;                                                                              \
            } else {                                                                                 \
                for (int i = 0; i < dim; i++) {                                                      \
                    const float v = ld_##SUF(xr + i);                                                \
                    ss += v * v;                                                                     \
                }                                                                                    \
            }                                                                                        \
            const float inv = 1.f / sqrtf(ss / (float)dim + eps);                                    \
            for (int i = 0; i < dim; i++)                                                            \
                st_##SUF(o + i, ld_##SUF(weight + i) * keep_##SUF(ld_##SUF(xr + i) * inv));          \
        }                                                                                            \
    }

/* Rotate-half rotary for q and k into fresh contiguous outputs:
 * out = T(T(x * cos) + T(rotate_half(x) * sin)), cos/sin rows [n, d] in T. */
#define DEFINE_ROTARY(SUF, T)                                                                        \
    static inline void rot_row_##SUF(const T *x, const T *c, const T *s, T *o, int d) {             \
        const int half = d / 2;                                                                      \
        for (int i = 0; i < d; i++) {                                                                \
            const float rot = i < half ? -ld_##SUF(x + i + half) : ld_##SUF(x + i - half);           \
            const float a = keep_##SUF(ld_##SUF(x + i) * ld_##SUF(c + i));                           \
            const float b = keep_##SUF(keep_##SUF(rot) * ld_##SUF(s + i));                           \
            st_##SUF(o + i, a + b);                                                                  \
        }                                                                                            \
    }                                                                                                \
    void jv_rotary_##SUF(const T *q, long q_sn, long q_sh, const T *k, long k_sn, long k_sh,        \
                         const T *cos, const T *sin, T *q_out, T *k_out, long n, int hq, int hk,     \
                         int d, int nthreads) {                                                      \
        _Pragma("omp parallel for num_threads(nthreads) if (n * (hq + hk) * d >= PAR_MIN_ELEMS)")   \
        for (long t = 0; t < n; t++) {                                                               \
            const T *c = cos + t * d, *s = sin + t * d;                                              \
            for (int h = 0; h < hq; h++)                                                             \
                rot_row_##SUF(q + t * q_sn + h * q_sh, c, s, q_out + (t * hq + h) * d, d);           \
            for (int h = 0; h < hk; h++)                                                             \
                rot_row_##SUF(k + t * k_sn + h * k_sh, c, s, k_out + (t * hk + h) * d, d);           \
        }                                                                                            \
    }

/* Scatter this step's K and V rows ([n, hkv, d], any row/head strides, unit
 * stride within a head) into their cache slots ([slots, hkv, d] contiguous). */
#define DEFINE_WRITE_KV(SUF, T)                                                                      \
    void jv_write_kv_##SUF(const T *k, long k_sn, long k_sh, const T *v, long v_sn, long v_sh,      \
                           T *k_cache, T *v_cache, const int64_t *slots, long n, int hkv, int d) {   \
        for (long t = 0; t < n; t++) {                                                               \
            const long base = slots[t] * (long)hkv * d;                                              \
            for (int h = 0; h < hkv; h++) {                                                          \
                memcpy(k_cache + base + (long)h * d, k + t * k_sn + h * k_sh, sizeof(T) * d);        \
                memcpy(v_cache + base + (long)h * d, v + t * v_sn + h * v_sh, sizeof(T) * d);        \
            }                                                                                        \
        }                                                                                            \
    }

/* out = T(silu(gate)) * up, rows of [gate | up] (width 2 * inter) -> [n, inter]. */
#define DEFINE_SILU_MUL(SUF, T)                                                                      \
    void jv_silu_and_mul_##SUF(const T *x, long x_stride, T *out, long n, int inter, int nthreads) { \
        _Pragma("omp parallel for num_threads(nthreads) if (n * inter >= PAR_MIN_SILU)")           \
        for (long t = 0; t < n; t++) {                                                               \
            const T *g = x + t * x_stride, *u = g + inter;                                           \
            T *o = out + t * (long)inter;                                                            \
            for (int i = 0; i < inter; i++) {                                                        \
                const float gv = ld_##SUF(g + i);                                                    \
                const float act = keep_##SUF(gv / (1.f + expf(-gv)));                                \
                st_##SUF(o + i, act * ld_##SUF(u + i));                                              \
            }                                                                                        \
        }                                                                                            \
    }

DEFINE_NORM(f32, float)
DEFINE_NORM(bf16, uint16_t)
DEFINE_ROTARY(f32, float)
DEFINE_ROTARY(bf16, uint16_t)
DEFINE_WRITE_KV(f32, float)
DEFINE_WRITE_KV(bf16, uint16_t)
DEFINE_SILU_MUL(f32, float)
DEFINE_SILU_MUL(bf16, uint16_t)
