/* MLA's per-token glue between its projections and attention, in one call:
 *
 *   q_rope' = rotary(deinterleave(q[:, :, Dn:]))         -> q_rope_out [N, H, Dr]
 *   latent  = [rms_norm(kv[:, :R]) | rotary(deinterleave(kv[:, R:]))]  -> latent [N, R + Dr]
 *   cache[slot[t]] = latent[t]
 *
 * In eager torch this is ~20 ops a layer (two splits, two de-interleaving
 * cats, the cos/sin gather and cast, rotate-half's slices, negation and cat,
 * four multiplies and two adds, the norm, a cat and an index_copy_): at
 * decode sizes their dispatch costs far more than their arithmetic.
 *
 * The norm and the rotation are elementwise.c's own functions (called here
 * per token), so this gives the same bits as the cpu backend's rms_norm op
 * and as the torch rotary reference (contraction off there, the same roundings
 * in T); cos/sin come from the float32 tables rounded to T, as
 * RotaryEmbedding.lookup's .to(dtype) does. De-interleaving is a copy. */
#include <stdint.h>
#include <string.h>

#include "bf16.h"

#define MAX_ROPE 256      /* Dr */
#define MAX_QROPE 32768   /* H * Dr per token, on the stack */

void jv_add_rms_norm_f32(const float *x, long x_stride, const float *residual, long r_stride, const float *weight,
                         float *out, float *sum_out, long rows, int dim, float eps, int nthreads);
void jv_add_rms_norm_bf16(const uint16_t *x, long x_stride, const uint16_t *residual, long r_stride,
                          const uint16_t *weight, uint16_t *out, uint16_t *sum_out, long rows, int dim, float eps,
                          int nthreads);
void jv_rotary_f32(const float *q, long q_sn, long q_sh, const float *k, long k_sn, long k_sh, const float *cos,
                   const float *sin, float *q_out, float *k_out, long n, int hq, int hk, int d, int nthreads);
void jv_rotary_bf16(const uint16_t *q, long q_sn, long q_sh, const uint16_t *k, long k_sn, long k_sh,
                    const uint16_t *cos, const uint16_t *sin, uint16_t *q_out, uint16_t *k_out, long n, int hq,
                    int hk, int d, int nthreads);

int jv_mla_prep_max_rope(void) { return MAX_ROPE; }
int jv_mla_prep_max_qrope(void) { return MAX_QROPE; }

static inline float tab_f32(float x) { return x; }
static inline uint16_t tab_bf16(float x) { return float_to_bf16(x); }

/* (x0, x1, x2, x3, ...) -> (x0, x2, ..., x1, x3, ...) */
#define DEFINE_DEINTERLEAVE(SUF, T)                                                  \
    static inline void deint_##SUF(const T *x, T *o, int d) {                        \
        const int half = d / 2;                                                      \
        for (int i = 0; i < half; i++) {                                             \
            o[i] = x[2 * i];                                                         \
            o[half + i] = x[2 * i + 1];                                              \
        }                                                                            \
    }

/* q rows [n, ...]: head h's q_rope at q + t * q_sn + h * q_sh + dn; kv rows
 * [n, ...]: kv_c at kv + t * kv_sn, k_rope right after its r values. */
#define DEFINE_PREP(SUF, T)                                                                               \
    DEFINE_DEINTERLEAVE(SUF, T)                                                                           \
    int jv_mla_prep_##SUF(const T *q, long q_sn, long q_sh, int h, int dn, int dr, const T *kv, long kv_sn, \
                          int r, const float *cos_tab, const float *sin_tab, const int64_t *pos,           \
                          const T *norm_w, float eps, int interleave, T *q_rope_out, T *latent, T *cache,  \
                          const int64_t *slots, long n, int nthreads) {                                    \
        if (dr > MAX_ROPE || (long)h * dr > MAX_QROPE || dr % 2) return 1;                                \
        const long ent = (long)r + dr;                                                                    \
        _Pragma("omp parallel for num_threads(nthreads) schedule(static) if (n >= 16 && nthreads > 1)")  \
        for (long t = 0; t < n; t++) {                                                                    \
            T c[MAX_ROPE], s[MAX_ROPE], kb[MAX_ROPE], qb[MAX_QROPE];                                      \
            const float *ct = cos_tab + pos[t] * dr, *st = sin_tab + pos[t] * dr;                         \
            for (int i = 0; i < dr; i++) {                                                                \
                c[i] = tab_##SUF(ct[i]);                                                                  \
                s[i] = tab_##SUF(st[i]);                                                                  \
            }                                                                                             \
            const T *qt = q + t * q_sn + dn, *kt = kv + t * kv_sn + r;                                    \
            T *lat = latent + t * ent;                                                                    \
            long qs_n = q_sn, qs_h = q_sh;                                                                \
            if (interleave) {                                                                             \
                for (int hh = 0; hh < h; hh++) deint_##SUF(qt + hh * q_sh, qb + (long)hh * dr, dr);        \
                deint_##SUF(kt, kb, dr);                                                                  \
                qt = qb, kt = kb, qs_n = (long)h * dr, qs_h = dr;                                         \
            }                                                                                             \
            jv_rotary_##SUF(qt, qs_n, qs_h, kt, dr, dr, c, s, q_rope_out + t * (long)h * dr, lat + r, 1, h, \
                            1, dr, 1);                                                                    \
            jv_add_rms_norm_##SUF(kv + t * kv_sn, kv_sn, 0, 0, norm_w, lat, 0, 1, r, eps, 1);               \
            if (cache && slots[t] >= 0) memcpy(cache + slots[t] * ent, lat, sizeof(T) * ent);             \
        }                                                                                                 \
        return 0;                                                                                         \
    }
DEFINE_PREP(f32, float)
DEFINE_PREP(bf16, uint16_t)
