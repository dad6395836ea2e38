"""DeepSeek V2/V3 over two worker processes (gloo on the CPU) give the
answers of one process: MLA heads, dense MLPs, shared experts and the
vocabulary split over the ranks, the routed experts either cut in their
intermediate size (plain tensor parallelism) or dealt out whole (expert
parallelism). Greedy tokens equal and logprobs within 1e-4 with a chunked
prefill (a 16-token step budget), a batch of seven and a prefix-cache hit.

Why 1e-4: every shard computes the same float32 products as one process;
only the order of the sums changes (an all-reduce of two partial sums per
block instead of one long dot product), which moves a logit by float32
rounding, about 1e-6 here. A wrong shard (a misplaced head, expert or bias)
moves logprobs by 0.1 or more. The greedy tokens must match exactly.

Each TP engine starts two worker processes (the slow part), so the module
builds three: V3 plain TP, V3 with expert parallelism, V2 with expert
parallelism (in V2-Lite's shape, with attention biases). The MoE's two ways of sharding are also checked in this
process, without workers, by summing the ranks' partial outputs by hand,
at -q int4's routed experts too."""
from __future__ import annotations

import pytest
import torch

from conftest import assert_no_leaks
from jevons import LLM, SamplingParams
from jevons.kernels.torch_ref.moe_routing import RouterConfig
from jevons.models.layers.moe import DeepseekMoE
from jevons.models.layers.tensor_parallel import TensorParallel
from test_deepseek_tiny import build_deepseek
from test_tensor_parallel import close_logprobs, prompts

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=5)
TP_KW = dict(dtype="float32", progress=False, tensor_parallel_size=2, max_num_batched_tokens=16, block_size=8)


def vocab(path) -> int:
    import json

    return json.loads((path / "config.json").read_text())["vocab_size"]


@pytest.fixture(scope="module", params=["v3", "v2"])
def case(request, tmp_path_factory):
    """(model path, prompts, one-process outputs)."""
    # V2 in V2-Lite's shape (q_proj, no query bottleneck) and with attention
    # biases, so o_proj's row-parallel bias (added on rank 0 only) is checked.
    extra = dict(q_lora_rank=None, attention_bias=True) if request.param == "v2" else {}
    path = build_deepseek(tmp_path_factory.mktemp(f"ds-tp-{request.param}"), request.param, **extra)
    ps = prompts(vocab(path))
    ref = LLM(str(path), dtype="float32", progress=False)
    return request.param, path, ps, ref.engine.kv_bytes_per_token, ref.generate(ps, GREEDY, use_tqdm=False)


def run_tp(path, ps, **kw):
    llm = LLM(str(path), **TP_KW, **kw)
    try:
        out = llm.generate(ps, GREEDY, use_tqdm=False)
        assert_no_leaks(llm)
        again = llm.generate(ps[-1], GREEDY, use_tqdm=False)[0]  # a prefix-cache hit on the ranks' caches
        return llm.engine.kv_bytes_per_token, out, again
    finally:
        llm.engine.close()


def assert_same(out, ref, tol: float = 1e-4) -> None:
    for r, o in zip(ref, out):
        assert o.outputs[0].token_ids == r.outputs[0].token_ids
        close_logprobs(o.outputs[0].logprobs, r.outputs[0].logprobs, tol)


@pytest.mark.parametrize("ep", [False, True], ids=["tp", "ep"])
def test_tp2_equals_one_process(case, ep):
    version, path, ps, ref_kv, ref = case
    if version == "v2" and not ep:
        pytest.skip("V2 runs with expert parallelism only: the MoE's TP cut is the same code as V3's")
    kv, out, again = run_tp(path, ps, enable_expert_parallel=ep)
    assert_same(out, ref)
    assert again.num_cached_tokens > 0
    assert again.outputs[0].token_ids == ref[-1].outputs[0].token_ids
    # Every head reads the whole latent: each rank caches all of it.
    assert kv == ref_kv


def sharded_moe(full: DeepseekMoE, rank: int, ep: bool) -> DeepseekMoE:
    """Rank `rank` of 2's DeepseekMoE with its part of `full`'s weights."""
    tp = TensorParallel(rank, 2, expert_parallel=ep)
    e = full.experts
    moe = DeepseekMoE(e.hidden, e.inter, full.router, 1, tp=tp)
    moe.gate.load_state_dict(full.gate.state_dict())
    first, n = moe.first_expert, moe.experts.num_experts
    i = moe.experts.inter
    if ep:
        moe.experts.w13.data.copy_(e.w13[first : first + n])
        moe.experts.w2.data.copy_(e.w2[first : first + n])
    else:
        gate, up = e.w13.data.split(e.inter, dim=1)
        moe.experts.w13.data.copy_(torch.cat([gate[:, rank * i : (rank + 1) * i], up[:, rank * i : (rank + 1) * i]], 1))
        moe.experts.w2.data.copy_(e.w2[:, :, rank * i : (rank + 1) * i])
    s, t = full.shared_experts, moe.shared_experts
    j = t.intermediate
    g, u = s.gate_up_proj.weight.data.split(s.intermediate)
    t.gate_up_proj.weight.data.copy_(torch.cat([g[rank * j : (rank + 1) * j], u[rank * j : (rank + 1) * j]]))
    t.down_proj.weight.data.copy_(s.down_proj.weight[:, rank * j : (rank + 1) * j])
    return moe


@pytest.mark.parametrize("int4", [False, True], ids=["float", "int4"])
@pytest.mark.parametrize("ep", [False, True], ids=["tp", "ep"])
def test_moe_shards_sum_to_the_whole(monkeypatch, ep, int4):
    """The two ranks' partial outputs (before the all-reduce, here an
    identity) add up to one process's MoE output; each EP rank holds and runs
    only its own four of eight experts. At -q int4 the EP ranks quantize
    whole experts exactly as one process does (groups of 32 along K)."""
    if int4 and not ep:
        pytest.skip("a TP cut of a 64-wide expert leaves 32 columns: covered by the float case")
    monkeypatch.setattr(TensorParallel, "all_reduce", lambda self, x: x)
    torch.manual_seed(0)
    router = RouterConfig(num_experts=8, top_k=3, scoring="sigmoid", method="noaux_tc", n_group=2, topk_group=2,
                          norm_topk_prob=True, routed_scaling_factor=2.0)
    full = DeepseekMoE(64, 64, router, 1)
    for p in full.parameters():
        p.data.normal_(0, 0.1)
    ranks = [sharded_moe(full, r, ep) for r in range(2)]
    if int4:
        for m in (full, *ranks):
            m.quantize_experts_int4()
    if ep:
        assert [m.first_expert for m in ranks] == [0, 4] and all(m.experts.num_experts == 4 for m in ranks)
    x = torch.randn(11, 64)
    with torch.no_grad():
        want = full(x)
        got = ranks[0](x) + ranks[1](x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_expert_parallel_needs_experts_to_divide():
    with pytest.raises(ValueError, match="routed experts"):
        TensorParallel(0, 3, expert_parallel=True).experts(8)
    assert TensorParallel(1, 2, expert_parallel=True).experts(8) == (4, 4)
    assert TensorParallel(1, 2).experts(8) == (0, 8)  # plain TP: every expert, a slice of each


# Every matmul's K a multiple of 32 on each rank too (o_proj 64 -> 32, the
# dense down 128 -> 64, the shared expert's down 64 -> 32), so a rank's int4
# groups are exactly one process's groups and -q int4 computes the same model.
INT4_DIMS = dict(intermediate_size=128, moe_intermediate_size=64, q_lora_rank=64, qk_nope_head_dim=16,
                 qk_rope_head_dim=16, v_head_dim=16)


def test_ep2_int4_equals_one_process(tmp_path, monkeypatch):
    """-q int4 under expert parallelism: each rank quantizes its own whole
    experts (and its shards of the dense layers) to the levels one process
    gives them. Checked on PyTorch's formats (JEVONS_QGEMM=0, inherited by the
    workers), where float32 runs the exact dequantization, so float32's
    tolerance holds. On qgemm (the default on AVX2) activations are quantized
    to int8 per group of 32, and the all-reduce's float32 reordering (1e-6)
    now and then moves one across a rounding boundary, a whole int8 step:
    logprobs then differ by up to about 1e-2 (8e-3 measured here)."""
    monkeypatch.setenv("JEVONS_QGEMM", "0")
    path = build_deepseek(tmp_path / "v3-int4", "v3", **INT4_DIMS)
    ps = prompts(vocab(path))[:4]
    ref = LLM(str(path), dtype="float32", quantization="int4", progress=False)
    want = ref.generate(ps, GREEDY, use_tqdm=False)
    assert ref.engine.executor.built.quantization == "int4"
    assert any(getattr(m, "int4_experts", None) is not None for m in ref.engine.runner.model.modules())
    _, out, again = run_tp(path, ps, enable_expert_parallel=True, quantization="int4")
    assert_same(out, want)
    assert again.outputs[0].token_ids == want[-1].outputs[0].token_ids


def test_dp_attention_equals_one_process(case):
    """--enable-dp-attention: each rank runs attention for its own requests
    (its own KV), the MoE layers meet over every rank's tokens with the
    experts dealt out. A lone request leaves one rank idle for its steps (it
    still serves its experts to the other). Then prefix-cache hits on blocks
    computed by the other rank: two long requests keep rank 0 busy while the
    short ones on rank 1 finish, so a request reusing the prompt blocks of one
    of them is placed on rank 1 and its eleven hit blocks are copied over
    first (runner/dp_attention.py)."""
    version, path, ps, _, ref = case
    if version == "v2":
        pytest.skip("one DP-attention engine (V3) is enough: the MoE exchange is the same code")
    llm = LLM(str(path), **TP_KW, enable_dp_attention=True)
    try:
        assert_same(llm.generate(ps, GREEDY, use_tqdm=False), ref)
        assert_no_leaks(llm)
        alone = llm.generate(ps[2], GREEDY, use_tqdm=False)[0]  # one request: rank 1 idles
        assert alone.outputs[0].token_ids == ref[2].outputs[0].token_ids
        core = llm.engine
        long = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
        short = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
        one = LLM(str(path), dtype="float32", progress=False)  # the reference for the hit's prompt
        done: dict = {"hit_ref": one.generate({"prompt_token_ids": ps[5]["prompt_token_ids"][:88] + [9, 9]},
                                              GREEDY, use_tqdm=False)[0].outputs[0].token_ids}
        for rid, p, sp in [("L1", ps[3], long), ("S2", ps[1], short), ("L3", ps[5], long), ("S4", ps[4], short)]:
            core.add_request(rid, p["prompt_token_ids"], sp)  # placed 0, 1, 0, 1

        def run(until) -> None:
            while not until():
                for d in core.step():
                    done.setdefault(d.parent_id, []).extend(d.token_ids)
                    if d.finish_reason is not None:
                        done[d.parent_id + "!"] = True
                    if d.parent_id == "hit":
                        done["cached"] = d.num_cached_tokens

        run(lambda: "S2!" in done and "S4!" in done)
        assert "L1!" not in done and "L3!" not in done  # rank 0 runs two, rank 1 none
        hit = ps[5]["prompt_token_ids"][:88] + [9, 9]  # L3's first eleven blocks of 8
        core.add_request("hit", hit, GREEDY)
        run(lambda: not core.has_work())
        assert done["hit"] == done["hit_ref"]
        assert done["cached"] == 88
        assert_no_leaks(llm)
    finally:
        llm.engine.close()


def test_placement_is_sticky_and_balanced():
    from jevons.runner.dp_attention import RequestPlacement, merge
    from jevons.runner.step_io import RunnerInput, RunnerOutput, RunRequest, SampledToken

    def step(*reqs):  # (id, context_len, tokens fed, block table), block size 4
        return RunnerInput([RunRequest(rid, [1] * n, ctx, blocks) for rid, ctx, n, blocks in reqs])

    def ids(parts):
        return [[r.request_id for r in part.requests] for part in parts]

    p = RequestPlacement(2, 4)
    parts, copies = p.split(step(("a", 0, 8, [0, 1]), ("b", 0, 4, [2]), ("c", 0, 4, [3])))
    assert ids(parts) == [["a", "c"], ["b"]] and copies == []
    # c and b go on where they left off; d, e start on nothing cached: to the rank with fewer
    parts, copies = p.split(step(("c", 4, 1, [3, 4]), ("d", 0, 4, [5]), ("b", 4, 1, [2, 6]), ("e", 0, 4, [7])))
    assert ids(parts) == [["c", "d"], ["b", "e"]] and copies == []
    # f hits a's two blocks (rank 0's): placed there while rank 0 is not too busy
    parts, copies = p.split(step(("f", 8, 1, [0, 1, 8]),))
    assert ids(parts) == [["f"], []] and copies == []
    # g hits them too, but rank 0 runs two more than rank 1: g moves and the blocks are copied
    parts, copies = p.split(step(("f", 9, 1, [0, 1, 8]), ("c", 5, 1, [3, 4]), ("g", 8, 2, [0, 1, 9])))
    assert ids(parts) == [["f", "c"], ["g"]] and copies == [(0, 0), (1, 0)]
    parts, copies = p.split(step(("h", 8, 1, [0, 1, 10]), ("i", 0, 4, [11])))
    assert copies == []  # both ranks hold them now
    parts, copies = p.split(step(("c", 0, 4, [12]),))  # c starts over (preempted): placed afresh
    assert ids(parts) == [["c"], []]
    inp = step(("x", 1, 1, [0]), ("y", 1, 1, [1]))
    outs = [RunnerOutput({"y": SampledToken(2)}), RunnerOutput({"x": SampledToken(1)})]
    assert list(merge(inp, outs).sampled) == ["x", "y"]  # the step's row order


@pytest.mark.parametrize("stacked", [False, True], ids=["per-expert", "stacked"])
@pytest.mark.parametrize("mode", ["tp", "ep", "dpa"])
def test_load_cuts_each_tensor_to_the_rank(tmp_path, mode, stacked):
    """Every rank's parameters are its part of one process's, from
    safetensors' per-expert tensors or a GGUF's stacked [E, out, in] ones
    (no worker needed: building and loading a shard meets no other rank)."""
    import re

    from jevons.config import ModelConfig
    from jevons.loader.safetensors_reader import SafetensorsCheckpoint
    from jevons.runner.model_loader import materialize
    from test_deepseek_tiny import load_jevons

    path = build_deepseek(tmp_path / "m", "v3")
    ckpt = SafetensorsCheckpoint(path)
    cfg = ModelConfig.from_hf(ckpt.config)
    full = dict(load_jevons(path).named_parameters())
    weights = list(ckpt.iter_weights(torch.float32))
    if stacked:  # experts.{e}.{proj}.weight -> experts.{proj}.weight [E, out, in]
        per: dict[str, dict[int, torch.Tensor]] = {}
        rest = []
        for n, t in weights:
            m = re.match(r"(.*\.experts)\.(\d+)\.(\w+)\.weight$", n)
            if m is None:
                rest.append((n, t))
            else:
                per.setdefault(f"{m.group(1)}.{m.group(3)}.weight", {})[int(m.group(2))] = t
        weights = rest + [(n, torch.stack([d[e] for e in sorted(d)])) for n, d in per.items()]
    for rank in range(2):
        tp = TensorParallel(rank, 2, expert_parallel=mode == "ep", dp_attention=mode == "dpa")
        shard = materialize(cfg, torch.float32, torch.device("cpu"), tp)
        loaded = shard.load_weights(iter(weights))
        assert shard.expected_weights() == loaded
        shard.post_load()  # drops the MTP layer the checkpoint does not carry, as one process does
        for name, p in shard.named_parameters():
            whole = full[name]
            if mode != "tp" and ".experts.w" in name:
                want = whole[rank * 4 : (rank + 1) * 4]  # whole experts
            elif mode == "dpa" or p.shape == whole.shape:
                want = whole  # replicated
            elif ".experts.w13" in name:  # each expert's gate and up rows
                g, u = whole.chunk(2, dim=1)
                want = torch.cat([x.chunk(2, dim=1)[rank] for x in (g, u)], dim=1)
            elif ".experts.w2" in name:
                want = whole.chunk(2, dim=2)[rank]
            elif "gate_up_proj" in name:
                g, u = whole.chunk(2)
                want = torch.cat([g.chunk(2)[rank], u.chunk(2)[rank]])
            elif p.shape[0] != whole.shape[0]:  # column-parallel, or the vocabulary's rows (padded)
                want = torch.nn.functional.pad(whole, (0, 0, 0, 2 * p.shape[0] - whole.shape[0])).chunk(2)[rank]
            else:  # row-parallel
                want = whole.chunk(2, dim=1)[rank]
            torch.testing.assert_close(p, want, rtol=0, atol=0, msg=f"{mode} rank {rank}: {name}")
