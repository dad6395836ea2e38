/* A whole decode step of a Llama-family model in one call: every layer's
 * norms, quantized matmuls (qgemm.c), rotary, KV write, paged attention and
 * SiLU-and-mul, in the order and with the kernels the PyTorch modules use, so
 * the result is the same to the bit (tested).
 *
 * Why: at batch 1 the kernels themselves take about 7 ms of a step, and the
 * Python between them (some 300 calls a step, each a few microseconds of
 * argument handling and tensor allocation) took 3 ms more. Here each step is
 * one call; the weights' addresses are gathered once (jevons/kernels/cpu/
 * llama_decode.py).
 *
 * Per layer l, `ptrs` row l holds (as int64): input norm weight, post-attention
 * norm weight, the qkv, o, gate_up and down weight blobs, their four biases
 * (0 when absent), the K cache and the V cache. `ints` row l holds the four
 * blobs' bit widths and then their has-zero flags. */
#include <stdint.h>
#include <stdlib.h>

#define DECLARE_KERNELS(SUF, T)                                                                       \
    void jv_add_rms_norm_##SUF(const T *x, long x_stride, const T *residual, long r_stride,          \
                               const T *weight, T *out, T *sum_out, long rows, int dim, float eps,  \
                               int nthreads);                                                        \
    int jv_qgemm_##SUF(const T *x, long ldx, const uint8_t *w, int bits, int has_zero, const T *bias, \
                       T *out, long ldy, long rows, int n, int k, int nthreads);                      \
    void jv_rotary_##SUF(const T *q, long q_sn, long q_sh, const T *k, long k_sn, long k_sh,         \
                         const T *cos, const T *sin, T *q_out, T *k_out, long n, int hq, int hk,      \
                         int d, int nthreads);                                                        \
    void jv_write_kv_##SUF(const T *k, long k_sn, long k_sh, const T *v, long v_sn, long v_sh,       \
                           T *k_cache, T *v_cache, const int64_t *slots, long n, int hkv, int d);     \
    int jv_decode_attention_##SUF(const T *q, long q_stride, const int64_t *q_rows,                  \
                                  const int64_t *seq_rows, const T *k_cache, const T *v_cache,       \
                                  const int64_t *block_tables, long bt_stride, const int64_t *seq_lens, \
                                  T *out, long out_stride, int batch, int hq, int hkv, int d,        \
                                  int block_size, float scale, int nthreads);                        \
    void jv_silu_and_mul_##SUF(const T *x, long x_stride, T *out, long n, int inter, int nthreads);

DECLARE_KERNELS(f32, float)
DECLARE_KERNELS(bf16, uint16_t)

enum { P_LN1, P_LN2, P_W, P_B = P_W + 4, P_KC = P_B + 4, P_VC, P_COLS };
enum { I_BITS, I_ZERO = 4, I_COLS = 8 };

/* x: the embedded tokens [n, hidden]; hidden_out: the final norm's output.
 * The batch is n decode rows (q_rows / seq_rows as in the attention kernel).
 * Returns 0, or -1 when a kernel could not allocate its scratch. */
#define DEFINE_DECODE_STEP(SUF, T)                                                                    \
    int jv_llama_decode_##SUF(const int64_t *ptrs, const int32_t *ints, int layers, const T *final_norm, \
                              const T *x, T *hidden_out, long n, int hidden, int hq, int hkv, int d,  \
                              int inter, float eps, float scale, const T *cos, const T *sin,          \
                              const int64_t *slots, const int64_t *q_rows, const int64_t *seq_rows,   \
                              const int64_t *block_tables, long bt_stride, const int64_t *seq_lens,   \
                              int block_size, int nthreads) {                                         \
        const long qkv_w = (long)(hq + 2 * hkv) * d;                                                  \
        const long sizes[] = {hidden, hidden, hidden, qkv_w, (long)hq * d, (long)hkv * d,             \
                              (long)hq * d, 2L * inter, inter};                                        \
        long total = 0;                                                                               \
        for (int i = 0; i < 9; i++) total += sizes[i];                                                \
        T *buf = malloc(sizeof(T) * total * n);                                                       \
        if (!buf) return -1;                                                                          \
        T *h = buf, *res = h + n * hidden, *mlp = res + n * hidden, *qkv = mlp + n * hidden;          \
        T *qr = qkv + n * qkv_w, *kr = qr + n * (long)hq * d, *att = kr + n * (long)hkv * d;          \
        T *gu = att + n * (long)hq * d, *act = gu + n * 2L * inter;                                   \
        int rc = 0;                                                                                   \
        for (int l = 0; l < layers && rc == 0; l++) {                                                 \
            const int64_t *p = ptrs + (long)l * P_COLS;                                               \
            const int32_t *q = ints + (long)l * I_COLS;                                               \
            const T *bias[4];                                                                         \
            for (int i = 0; i < 4; i++) bias[i] = (const T *)(intptr_t)p[P_B + i];                    \
            T *kc = (T *)(intptr_t)p[P_KC], *vc = (T *)(intptr_t)p[P_VC];                            \
            /* residual stream: layer 0 starts from x itself, later layers add the MLP output */      \
            if (l == 0) {                                                                             \
                jv_add_rms_norm_##SUF(x, hidden, NULL, 0, (const T *)(intptr_t)p[P_LN1], h, NULL, n,  \
                                      hidden, eps, nthreads);                                         \
                for (long i = 0; i < n * hidden; i++) res[i] = x[i];                                  \
            } else {                                                                                  \
                jv_add_rms_norm_##SUF(mlp, hidden, res, hidden, (const T *)(intptr_t)p[P_LN1], h, res, \
                                      n, hidden, eps, nthreads);                                      \
            }                                                                                         \
            rc |= jv_qgemm_##SUF(h, hidden, (const uint8_t *)(intptr_t)p[P_W], q[I_BITS], q[I_ZERO],  \
                                 bias[0], qkv, qkv_w, n, (int)qkv_w, hidden, nthreads);               \
            jv_rotary_##SUF(qkv, qkv_w, d, qkv + (long)hq * d, qkv_w, d, cos, sin, qr, kr, n, hq, hkv, d, \
                            nthreads);                                                                \
            jv_write_kv_##SUF(kr, (long)hkv * d, d, qkv + (long)(hq + hkv) * d, qkv_w, d, kc, vc, slots, \
                              n, hkv, d);                                                             \
            rc |= jv_decode_attention_##SUF(qr, (long)hq * d, q_rows, seq_rows, kc, vc, block_tables,  \
                                            bt_stride, seq_lens, att, (long)hq * d, (int)n, hq, hkv,  \
                                            d, block_size, scale, nthreads);                         \
            rc |= jv_qgemm_##SUF(att, (long)hq * d, (const uint8_t *)(intptr_t)p[P_W + 1],            \
                                 q[I_BITS + 1], q[I_ZERO + 1], bias[1], mlp, hidden, n, hidden,       \
                                 hq * d, nthreads);                                                   \
            jv_add_rms_norm_##SUF(mlp, hidden, res, hidden, (const T *)(intptr_t)p[P_LN2], h, res, n,  \
                                  hidden, eps, nthreads);                                             \
            rc |= jv_qgemm_##SUF(h, hidden, (const uint8_t *)(intptr_t)p[P_W + 2], q[I_BITS + 2],     \
                                 q[I_ZERO + 2], bias[2], gu, 2L * inter, n, 2 * inter, hidden,       \
                                 nthreads);                                                           \
            jv_silu_and_mul_##SUF(gu, 2L * inter, act, n, inter, nthreads);                           \
            rc |= jv_qgemm_##SUF(act, inter, (const uint8_t *)(intptr_t)p[P_W + 3], q[I_BITS + 3],    \
                                 q[I_ZERO + 3], bias[3], mlp, hidden, n, hidden, inter, nthreads);   \
        }                                                                                             \
        if (rc == 0)                                                                                  \
            jv_add_rms_norm_##SUF(mlp, hidden, res, hidden, final_norm, hidden_out, res, n, hidden,   \
                                  eps, nthreads);                                                     \
        free(buf);                                                                                    \
        return rc ? -1 : 0;                                                                           \
    }

DEFINE_DECODE_STEP(f32, float)
DEFINE_DECODE_STEP(bf16, uint16_t)
