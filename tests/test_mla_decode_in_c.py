"""DeepSeek V2/V3's MLA decode rows go through the CPU backend's C
absorbed-decode kernel (kernels/cpu/sparse_mla.py, with no selection: each
row over its whole context) and give the torch path's logits within float32
rounding; prefill spans keep their torch path."""
import pytest
import torch

from jevons import runtime
from jevons.kernels.cpu import sparse_mla as cpu
from test_deepseek_parity import rand_seqs, run_paged
from test_deepseek_tiny import build_deepseek, load_jevons

pytestmark = pytest.mark.skipif(cpu.simd_path() is None, reason="the C kernels are not built")


@pytest.fixture(scope="module", params=["v3", "v2-lite"])
def model(request, tmp_path_factory):
    kw = {} if request.param == "v3" else dict(q_lora_rank=None, first_k_dense_replace=0)
    version = "v3" if request.param == "v3" else "v2"
    return load_jevons(build_deepseek(tmp_path_factory.mktemp(request.param), version, **kw))


def counting_kernel(monkeypatch) -> list[int]:
    """Counts the C kernel's calls (not the wrapper's: it falls back to the
    reference on its own for shapes it does not take); each entry is one
    call's batch of decode rows."""
    calls: list[int] = []
    real = cpu._kernel

    def wrapped(dtype):
        fn = real(dtype)

        def call(*args):
            calls.append(args[11])  # b: the decode rows in this call
            return fn(*args)

        return call if fn is not None else None

    monkeypatch.setattr(cpu, "_kernel", wrapped)
    return calls


def test_decode_rows_run_in_c_and_match_the_torch_path(model, monkeypatch):
    prompt_lens, steps = [7, 2, 11, 5], 4
    vocab = next(m for m in model.modules() if isinstance(m, torch.nn.Embedding)).num_embeddings
    seqs = rand_seqs(vocab, [n + steps + 2 for n in prompt_lens], seed=2)
    calls = counting_kernel(monkeypatch)
    runtime.configure(runtime.RuntimeConfig(kernel_backend="cpu"))
    in_c = run_paged(model, seqs, prompt_lens, steps)
    n_layers = len(model.layers)
    # Step 1 has 2 decode rows beside 2 prefill spans, then 4 steps of 4 decode rows.
    assert len(calls) == n_layers * (1 + steps)
    assert calls[:n_layers] == [2] * n_layers and set(calls[n_layers:]) == {4}
    calls.clear()
    runtime.configure(runtime.RuntimeConfig(kernel_backend="torch"))
    in_torch = run_paged(model, seqs, prompt_lens, steps)
    assert not calls
    for s in in_torch:
        torch.testing.assert_close(in_c[s], in_torch[s], rtol=1e-5, atol=1e-5)


def test_prefill_only_steps_do_not_call_the_kernel(model, monkeypatch):
    from test_deepseek_tiny import PagedDriver

    calls = counting_kernel(monkeypatch)
    runtime.configure(runtime.RuntimeConfig(kernel_backend="cpu"))
    PagedDriver(model).step([(0, list(range(3, 12))), (1, list(range(5, 9)))])
    assert not calls


def test_bfloat16_decode_close_to_the_torch_path(tmp_path, monkeypatch):
    """bf16 (how V2/V3 run on a CPU): the kernel sums in float32 where torch's
    einsums round to bf16 between steps, so the two agree to bf16 rounding."""
    model = load_jevons(build_deepseek(tmp_path, "v3"), torch.bfloat16)
    prompt_lens, steps = [6, 9], 3
    vocab = next(m for m in model.modules() if isinstance(m, torch.nn.Embedding)).num_embeddings
    seqs = rand_seqs(vocab, [n + steps + 2 for n in prompt_lens + [4, 3]], seed=5)
    calls = counting_kernel(monkeypatch)
    runtime.configure(runtime.RuntimeConfig(kernel_backend="cpu"))
    in_c = run_paged(model, seqs, prompt_lens + [4, 3], steps)
    assert calls
    runtime.configure(runtime.RuntimeConfig(kernel_backend="torch"))
    in_torch = run_paged(model, seqs, prompt_lens + [4, 3], steps)
    for s in in_torch:
        ref = in_torch[s].float()
        torch.testing.assert_close(in_c[s].float(), ref, rtol=0, atol=0.05 * float(ref.abs().max()))
