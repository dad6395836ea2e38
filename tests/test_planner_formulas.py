"""Planner formulas against hand-computed cases."""
import math

import pytest

from jevons.cost.hardware import GB, TB, get_hardware
from jevons.cost.model_stats import model_stats
from jevons.cost.planner import Workload, plan, usd_per_million
from jevons.cost.roofline import Deployment, decode_step, prefill_step
from jevons.loader.presets import get_preset

H100 = get_hardware("h100")

# Qwen2-7B by hand (Qwen2: q/k/v biases, untied 152064 x 3584 embedding and head):
#   embedding 152064*3584 = 544,997,376, and the same again for lm_head
#   per layer: q 3584*3584 + k,v 2*3584*512 + biases 3584+2*512 + o 3584*3584 = 29,364,736
#              mlp 3*3584*18944 = 203,685,888, norms 2*3584 -> 233,057,792; x 28 layers
QWEN7_TOTAL = 2 * 544_997_376 + 28 * 233_057_792 + 3584
QWEN7_EMBED = 544_997_376


def test_qwen_7b_parameter_count():
    s = model_stats(get_preset("qwen2-7b"))
    assert s.total_params == QWEN7_TOTAL == 7_615_616_512
    assert s.active_params == QWEN7_TOTAL - QWEN7_EMBED  # a lookup is not a matmul
    assert not s.is_moe and not s.is_mla
    # The R1 distill has the same shape.
    assert model_stats(get_preset("deepseek-r1-distill-qwen-7b")).total_params == QWEN7_TOTAL


def test_tied_head_is_stored_once_but_read_every_step():
    s = model_stats(get_preset("smollm2-135m-instruct"))
    assert s.lm_head_params == s.embedding_params == 49152 * 576
    assert s.active_params == s.total_params  # the head matmul uses the stored table


def test_published_totals():
    assert model_stats(get_preset("deepseek-v3")).total_params / 1e9 == pytest.approx(671, abs=0.5)
    assert model_stats(get_preset("deepseek-v3")).active_params / 1e9 == pytest.approx(37, abs=0.5)
    assert (model_stats(get_preset("deepseek-v3")).total_params
            + model_stats(get_preset("deepseek-v3")).mtp_params) / 1e9 == pytest.approx(685, abs=1)
    assert model_stats(get_preset("deepseek-v2")).total_params / 1e9 == pytest.approx(236, abs=0.5)
    assert model_stats(get_preset("deepseek-v2-lite")).total_params / 1e9 == pytest.approx(15.7, abs=0.05)
    assert model_stats(get_preset("llama-3-70b")).total_params / 1e9 == pytest.approx(70.55, abs=0.01)
    assert model_stats(get_preset("smollm2-135m-instruct")).total_params / 1e6 == pytest.approx(134.5, abs=0.5)


def test_deepseek_v3_mla_kv_bytes():
    s = model_stats(get_preset("deepseek-v3"))
    # 61 layers x (kv_lora_rank 512 + qk_rope_head_dim 64) x 2 bytes
    assert s.kv_bytes_per_token(2) == 61 * (512 + 64) * 2 == 70_272
    assert s.kv_bytes_per_token(1) == 35_136
    # Expanded per-head K (128 x 192) and V (128 x 128) would be 71x larger.
    assert s.mha_kv_bytes_per_token(2) == 61 * 128 * (192 + 128) * 2 == 4_997_120


def test_gqa_kv_bytes():
    # layers x 2 (K and V) x kv_heads x head_dim x bytes
    assert model_stats(get_preset("llama-3-8b")).kv_bytes_per_token(2) == 32 * 2 * 8 * 128 * 2 == 131_072
    assert model_stats(get_preset("qwen2-7b")).kv_bytes_per_token(2) == 28 * 2 * 4 * 128 * 2 == 57_344


def test_7b_decode_ceiling_at_3_35_tbs():
    s = model_stats(get_preset("qwen2-7b"))
    step = decode_step(s, Deployment(H100, precision="bf16"), batch=1, context=0)
    # Batch 1 streams every weight but the input table once per token, in bf16.
    bytes_per_token = (QWEN7_TOTAL - QWEN7_EMBED) * 2
    assert step.bound == "memory"
    assert step.tokens_per_s == pytest.approx(3.35e12 / bytes_per_token, rel=1e-12)
    assert step.tokens_per_s == pytest.approx(236.90, abs=0.01)
    # The rule of thumb, bandwidth / (2 bytes x 7.6B params), is within 8% of it.
    assert step.tokens_per_s == pytest.approx(3.35e12 / (2 * 7.6e9), rel=0.08)


def test_decode_kv_reads_and_batching():
    s = model_stats(get_preset("qwen2-7b"))
    dep = Deployment(H100)
    one = decode_step(s, dep, 1, 4096)
    assert one.memory_s == pytest.approx(((QWEN7_TOTAL - QWEN7_EMBED) * 2 + 4096 * 57_344) / 3.35e12)
    # 64 sequences share the weight read but each reads its own KV.
    many = decode_step(s, dep, 64, 4096)
    assert many.memory_s == pytest.approx(((QWEN7_TOTAL - QWEN7_EMBED) * 2 + 64 * 4096 * 57_344) / 3.35e12)
    assert many.tokens_per_s > 30 * one.tokens_per_s


def test_moe_batch1_reads_active_params_only():
    s = model_stats(get_preset("deepseek-v3"))
    assert s.experts_touched(1) == 8
    assert s.params_read(1) == s.active_params
    # A large batch touches nearly every expert: the whole model is read.
    assert s.params_read(4096) == pytest.approx(s.total_params - s.embedding_params, rel=1e-6)
    assert s.experts_touched(32) == pytest.approx(256 * (1 - (1 - 8 / 256) ** 32))


def test_max_concurrency_by_hand():
    p = plan(get_preset("qwen2-7b"), Deployment(H100), Workload(input_len=1024, output_len=256))
    budget = 80e9 * 0.9 - QWEN7_TOTAL * 2
    assert p.kv_budget_bytes == pytest.approx(budget)
    assert p.max_concurrent_sequences == math.floor(budget / (57_344 * 1280)) == 773
    assert p.weight_bytes == QWEN7_TOTAL * 2


def test_prefill_is_flop_bound_by_hand():
    s = model_stats(get_preset("qwen2-7b"))
    pre = prefill_step(s, Deployment(H100), tokens=8192, context=512)
    linear = 2 * (QWEN7_TOTAL - 2 * QWEN7_EMBED)  # no embedding lookup FLOPs, logits only at the end
    attention = 2 * 28 * 28 * (2 * 128) * 512     # QK^T and PV over 512 tokens of context
    assert pre.bound == "compute"
    assert pre.tokens_per_s == pytest.approx(989e12 / (linear + attention))


def test_costs_follow_throughput():
    p = plan(get_preset("qwen2-7b"), Deployment(H100, usd_per_gpu_hour=3.0),
             Workload(input_len=1000, output_len=200, cache_hit_rate=0.5))
    assert p.usd_per_hour == 3.0
    assert p.usd_per_million_output_tokens == pytest.approx(3.0 / 3600 / p.decode_tok_s_aggregate * 1e6)
    assert p.input_tok_s == pytest.approx(p.prefill_tok_s / 0.5)  # hits cost no compute
    assert p.usd_per_million_input_tokens == pytest.approx(3.0 / 3600 / p.input_tok_s * 1e6)
    assert p.usd_per_request == pytest.approx(
        (1000 * p.usd_per_million_input_tokens + 200 * p.usd_per_million_output_tokens) / 1e6)
    assert usd_per_million(0.0, 0.0) == 0.0 and math.isinf(usd_per_million(1.0, 0.0))


def test_target_sets_batch_and_gpu_count():
    cfg = get_preset("llama-3-70b")
    wl = Workload(input_len=1024, output_len=256, target_tok_s_per_user=50, users=1000)
    p = plan(cfg, Deployment(H100, gpus=4), wl)
    assert p.decode_tok_s_per_user >= 50
    bigger = decode_step(model_stats(cfg), Deployment(H100, gpus=4), p.decode_batch + 1, wl.decode_context)
    assert p.decode_batch == p.max_concurrent_sequences or 1 / bigger.seconds < 50
    # 141 GB of bf16 weights: 2 GPUs hold them but reach only ~48 tok/s at batch 1
    # ((70.55B - 1.05B embedding) x 2 B / (2 x 3.35 TB/s)); 3 GPUs reach ~72.
    assert p.gpus_for_target == 3
    assert p.replicas_needed == math.ceil(1000 / p.decode_batch)
    assert p.gpus_needed == p.replicas_needed * 4


def test_does_not_fit():
    p = plan(get_preset("deepseek-v3"), Deployment(get_hardware("h800"), gpus=8, precision="fp8"), Workload())
    assert not p.fits and p.max_concurrent_sequences == 0
    assert any("do not fit" in n for n in p.notes)
    assert p.decode_tok_s_aggregate == 0 and math.isinf(p.usd_per_million_output_tokens)


def test_fp8_halves_weights_and_uses_fp8_flops():
    cfg = get_preset("qwen2-7b")
    bf16 = plan(cfg, Deployment(H100, precision="bf16"), Workload())
    fp8 = plan(cfg, Deployment(H100, precision="fp8"), Workload())
    assert fp8.weight_bytes == bf16.weight_bytes / 2
    assert fp8.prefill_tok_s > 1.5 * bf16.prefill_tok_s
    # A100 has no FP8 tensor cores: FP8 weights compute at the bf16 rate.
    a100 = get_hardware("a100")
    assert a100.flops_for("fp8") == a100.flops_bf16 == 312 * TB


def test_hardware_presets_and_overrides():
    assert get_hardware("H100").memory_bandwidth == 3.35 * TB and get_hardware("h100").flops_bf16 == 989 * TB
    assert get_hardware("h200").memory_bytes == 141 * GB and get_hardware("h200").memory_bandwidth == 4.8 * TB
    assert get_hardware("a100-80gb").memory_bandwidth == 2.039 * TB
    mi = get_hardware("mi300x")
    assert (mi.memory_bandwidth, mi.flops_bf16, mi.memory_bytes) == (5.3 * TB, 1307 * TB, 192 * GB)
    cpu = get_hardware("cpu").override(memory_bandwidth=50 * GB, flops_bf16=None)
    assert cpu.memory_bandwidth == 50 * GB and cpu.usd_per_hour == 0.0
    with pytest.raises(ValueError):
        get_hardware("tpu")
    with pytest.raises(ValueError):
        Deployment(H100, precision="fp4")
