/* A DeepSeek MoE layer's router in one call: gate logits (optionally the gate
 * GEMV itself), scores, group-limited top-k, gate weights.
 *
 *   logits[t, e] = x[t] . W[e]                      (float32 sums, if W given)
 *   score  = softmax(logits) (V2) | sigmoid(logits) (V3)
 *   choice = score + bias                          (V3's e_score_correction_bias)
 *   groups: V2 group_limited_greedy keeps the topk_group groups with the best
 *           max choice, V3 noaux_tc those with the best sum of their two best;
 *           every other expert's choice becomes -inf
 *   ids    = the k largest choices, equal values in index order
 *   weight = score[ids] (never the bias), renormalized and/or scaled as
 *            kernels/torch_ref/moe_routing.py's select_experts does.
 *
 * The same steps in the same order as that reference, so the ids agree with it
 * wherever two experts' float32 choices are not within a rounding of each
 * other (exact ties break alike: toward the lower index).
 *
 * Why the gate GEMV is here too: torch's float GEMM picks a different kernel
 * (and summation order) for 1 row than for 32, so routing a token could
 * depend on its batch in a near-tie. Here each (token, expert) logit is one
 * dot product in a fixed order (8 lanes over K, lanes added in one order),
 * whatever the batch, the tile a row falls in, or the thread count; and it
 * saves torch's GEMM and the ~10 routing ops' dispatch per layer per step.
 *
 * Paths: AVX2 + FMA (register tiles of 4 tokens x 2 experts, or 1 token x 8
 * experts for the last rows: 8 rows of a gate that comes cold from DRAM in
 * flight at once; each pair its own 8-lane accumulator) or plain loops; the
 * per-pair order is the same on both (per lane, k ascending, then lanes
 * 0..7 pairwise as below). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "bf16.h"

#if defined(__AVX2__) && defined(__FMA__)
#define ROUTER_SIMD 1
#include <immintrin.h>
#else
#define ROUTER_SIMD 0
#endif

#define MAX_EXPERTS 1024 /* stack arrays per token; more goes to the reference */

int jv_moe_router_simd(void) { return ROUTER_SIMD; }
int jv_moe_router_max_experts(void) { return MAX_EXPERTS; }

/* lanes 0..7 -> one float, in one fixed order on both paths; not inlined,
 * so -fassociative-math cannot reorder it differently at different callers */
__attribute__((noinline)) static float lane_sum(const float l[8]) {
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

#define DEFINE_GATE_SCALAR(SUF, T, LD)                                                        \
    static float gate_dot_##SUF(const T *x, const T *w, int h) {                              \
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                              \
        for (int k = 0; k < h; k += 8)                                                        \
            for (int l = 0; l < 8; l++) acc[l] = fmaf(LD(x + k + l), LD(w + k + l), acc[l]);  \
        return lane_sum(acc);                                                                 \
    }

static inline float ld_f32(const float *p) { return *p; }
static inline float ld_bf16(const uint16_t *p) { return bf16_to_float(*p); }
DEFINE_GATE_SCALAR(f32, float, ld_f32)
DEFINE_GATE_SCALAR(bf16, uint16_t, ld_bf16)

#if ROUTER_SIMD
static inline __m256 ld8_f32(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 ld8_bf16(const uint16_t *p) {
    const __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
static inline float hsum8(__m256 v) {
    float l[8];
    _mm256_storeu_ps(l, v);
    return lane_sum(l);
}

/* out[i * ldo + j] = x[t0 + i] . w[e0 + j] for a tile of NT tokens x NE experts. */
#define DEFINE_GATE_TILE(SUF, T, NT, NE)                                                          \
    static void gate_tile_##SUF##_##NT##x##NE(const T *x, long ldx, const T *w, int h, float *out, \
                                               long ldo) {                                        \
        __m256 acc[NT][NE];                                                                       \
        for (int i = 0; i < NT; i++)                                                              \
            for (int j = 0; j < NE; j++) acc[i][j] = _mm256_setzero_ps();                         \
        for (int k = 0; k < h; k += 8) {                                                          \
            __m256 wv[NE];                                                                        \
            for (int j = 0; j < NE; j++) wv[j] = ld8_##SUF(w + (long)j * h + k);                  \
            for (int i = 0; i < NT; i++) {                                                        \
                const __m256 xv = ld8_##SUF(x + (long)i * ldx + k);                               \
                for (int j = 0; j < NE; j++) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);   \
            }                                                                                     \
        }                                                                                         \
        for (int i = 0; i < NT; i++)                                                              \
            for (int j = 0; j < NE; j++) out[i * ldo + j] = hsum8(acc[i][j]);                     \
    }
DEFINE_GATE_TILE(f32, float, 4, 2)
DEFINE_GATE_TILE(f32, float, 1, 8)
DEFINE_GATE_TILE(f32, float, 4, 1)
DEFINE_GATE_TILE(f32, float, 1, 1)
DEFINE_GATE_TILE(bf16, uint16_t, 4, 2)
DEFINE_GATE_TILE(bf16, uint16_t, 1, 8)
DEFINE_GATE_TILE(bf16, uint16_t, 4, 1)
DEFINE_GATE_TILE(bf16, uint16_t, 1, 1)
#endif

/* logits for tokens [t0, t0 + nt), nt <= 4: every expert */
#define DEFINE_GATE_ROWS(SUF, T)                                                                   \
    static void gate_rows_##SUF(const T *x, long ldx, int nt, const T *w, int h, int e, float *lg, \
                                long ldl) {                                                        \
        if (!ROUTER_SIMD) {                                                                        \
            for (int i = 0; i < nt; i++)                                                           \
                for (int j = 0; j < e; j++) lg[i * ldl + j] = gate_dot_##SUF(x + i * ldx, w + (long)j * h, h); \
            return;                                                                                \
        }                                                                                          \
        GATE_SIMD_ROWS_##SUF                                                                       \
    }
#if ROUTER_SIMD
#define GATE_SIMD_BODY(SUF)                                                                        \
    if (nt < 4) { /* one token: 8 experts' rows streamed at once (the gate is cold, read from DRAM) */ \
        for (int i = 0; i < nt; i++) {                                                             \
            int j = 0;                                                                             \
            for (; j + 8 <= e; j += 8)                                                             \
                gate_tile_##SUF##_1x8(x + i * ldx, ldx, w + (long)j * h, h, lg + i * ldl + j, ldl); \
            for (; j < e; j++)                                                                     \
                gate_tile_##SUF##_1x1(x + i * ldx, ldx, w + (long)j * h, h, lg + i * ldl + j, ldl); \
        }                                                                                          \
        return;                                                                                    \
    }                                                                                              \
    for (int j = 0; j < e; j += 2) {                                                               \
        const int two = j + 1 < e;                                                                 \
        {                                                                                          \
            if (two) gate_tile_##SUF##_4x2(x, ldx, w + (long)j * h, h, lg + j, ldl);               \
            else gate_tile_##SUF##_4x1(x, ldx, w + (long)j * h, h, lg + j, ldl);                   \
        }                                                                                          \
    }
#define GATE_SIMD_ROWS_f32 GATE_SIMD_BODY(f32)
#define GATE_SIMD_ROWS_bf16 GATE_SIMD_BODY(bf16)
#else
#define GATE_SIMD_ROWS_f32
#define GATE_SIMD_ROWS_bf16
#endif
DEFINE_GATE_ROWS(f32, float)
DEFINE_GATE_ROWS(bf16, uint16_t)

typedef struct {
    int e, k, sigmoid, method, n_group, topk_group, norm;
    float scale;
    const float *bias;
} router_cfg;

enum { GREEDY = 0, GROUP_LIMITED = 1, NOAUX_TC = 2 };

/* indices of the k largest of v[0..n), equal values in index order (a stable
 * descending sort's first k); NaNs are never picked before a number. */
static void stable_topk(const float *v, int n, int k, int *out) {
    unsigned char taken[MAX_EXPERTS];
    for (int i = 0; i < n; i++) taken[i] = 0;
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < n; i++) {
            if (taken[i]) continue;
            if (best < 0 || v[i] > v[best] || (v[best] != v[best] && v[i] == v[i])) best = i;
        }
        taken[best] = 1;
        out[j] = best;
    }
}

__attribute__((noinline)) static void route_one(const float *lg, const router_cfg *c, int64_t *ids, float *wts) {
    const int e = c->e;
    float score[MAX_EXPERTS], choice[MAX_EXPERTS];
    if (c->sigmoid) {
        for (int i = 0; i < e; i++) score[i] = 1.f / (1.f + expf(-lg[i]));
    } else {
        float m = lg[0], s = 0.f;
        for (int i = 1; i < e; i++) m = lg[i] > m ? lg[i] : m;
        for (int i = 0; i < e; i++) {
            score[i] = expf(lg[i] - m);
            s += score[i];
        }
        for (int i = 0; i < e; i++) score[i] /= s;
    }
    for (int i = 0; i < e; i++) choice[i] = c->bias ? score[i] + c->bias[i] : score[i];
    if ((c->method == GROUP_LIMITED || c->method == NOAUX_TC) && c->n_group > 1) {
        const int g = c->n_group, per = e / g;
        float gs[MAX_EXPERTS];
        int keep[MAX_EXPERTS], two[2];
        for (int j = 0; j < g; j++) {
            const float *v = choice + j * per;
            if (c->method == NOAUX_TC) {
                const int n2 = per < 2 ? per : 2;
                stable_topk(v, per, n2, two);
                gs[j] = n2 == 2 ? v[two[0]] + v[two[1]] : v[two[0]];
            } else {
                float m = v[0];
                for (int i = 1; i < per; i++) m = v[i] > m ? v[i] : m;
                gs[j] = m;
            }
        }
        stable_topk(gs, g, c->topk_group, keep);
        unsigned char kept[MAX_EXPERTS] = {0};
        for (int j = 0; j < c->topk_group; j++) kept[keep[j]] = 1;
        for (int j = 0; j < g; j++)
            if (!kept[j])
                for (int i = 0; i < per; i++) choice[j * per + i] = -INFINITY;
    }
    int top[MAX_EXPERTS];
    stable_topk(choice, e, c->k, top);
    float sum = 0.f;
    for (int j = 0; j < c->k; j++) {
        ids[j] = top[j];
        wts[j] = score[top[j]];
        sum += wts[j];
    }
    const int renorm = c->norm && (c->method == NOAUX_TC || c->k > 1);
    for (int j = 0; j < c->k; j++) {
        if (renorm) wts[j] = wts[j] / (sum + 1e-20f);
        /* V3 scales after renormalizing; V2 scales only when it does not renormalize */
        if (c->method == NOAUX_TC || !renorm) wts[j] *= c->scale;
    }
}

static int cfg_ok(const router_cfg *c) {
    return c->e > 0 && c->e <= MAX_EXPERTS && c->k > 0 && c->k <= c->e && c->n_group > 0 &&
           c->e % c->n_group == 0 && c->topk_group > 0 && c->topk_group <= c->n_group;
}

/* logits [T, E] float32 (row stride ldl) -> ids [T, k] int64, weights [T, k] float32. */
int jv_moe_select(const float *logits, long ldl, int tokens, int e, int k, int sigmoid, int method, int n_group,
                  int topk_group, int norm, float scale, const float *bias, int64_t *ids, float *wts,
                  int threads) {
    const router_cfg c = {e, k, sigmoid, method, n_group, topk_group, norm, scale, bias};
    if (!cfg_ok(&c)) return 1;
#pragma omp parallel for num_threads(threads) schedule(static) if (tokens >= 64 && threads > 1)
    for (int t = 0; t < tokens; t++) route_one(logits + (long)t * ldl, &c, ids + (long)t * k, wts + (long)t * k);
    return 0;
}

/* x [T, H] (row stride ldx) and the gate weight w [E, H] (contiguous), both
 * float32 or both bf16; H a multiple of 8. Writes logits [T, E] float32
 * (contiguous) and routes them. Tokens go to threads in blocks of 4 only
 * when there are enough of them to pay for the fork. */
#define DEFINE_ROUTE(SUF, T)                                                                             \
    int jv_moe_route_##SUF(const T *x, long ldx, const T *w, int tokens, int h, int e, int k, int sigmoid, \
                           int method, int n_group, int topk_group, int norm, float scale, const float *bias, \
                           float *logits, int64_t *ids, float *wts, int threads) {                       \
        const router_cfg c = {e, k, sigmoid, method, n_group, topk_group, norm, scale, bias};            \
        if (!cfg_ok(&c) || h % 8) return 1;                                                              \
        const int blocks = (tokens + 3) / 4;                                                             \
        _Pragma("omp parallel for num_threads(threads) schedule(static) if (tokens >= 16 && threads > 1)") \
        for (int b = 0; b < blocks; b++) {                                                               \
            const int t0 = 4 * b, nt = tokens - t0 < 4 ? tokens - t0 : 4;                                \
            gate_rows_##SUF(x + (long)t0 * ldx, ldx, nt, w, h, e, logits + (long)t0 * e, e);             \
            for (int i = 0; i < nt; i++)                                                                 \
                route_one(logits + (long)(t0 + i) * e, &c, ids + (long)(t0 + i) * k, wts + (long)(t0 + i) * k); \
        }                                                                                                \
        return 0;                                                                                        \
    }
DEFINE_ROUTE(f32, float)
DEFINE_ROUTE(bf16, uint16_t)
