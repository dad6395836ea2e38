"""Token-sorted expert dispatch against a naive per-token loop, and the MoE
backend registry a fused GPU kernel will plug into."""
import pytest
import torch
import torch.nn.functional as F

from jevons.kernels.torch_ref.moe import fused_experts


def naive(x, w13, w2, weights, ids):
    inter = w2.shape[-1]
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            gate, up = (w13[e] @ x[t]).split(inter)
            out[t] += weights[t, j] * (w2[e] @ (F.silu(gate) * up))
    return out


@pytest.mark.parametrize("tokens,experts,k", [(1, 8, 2), (37, 8, 3), (64, 16, 4), (5, 32, 1)])
def test_matches_per_token_loop(tokens, experts, k):
    torch.manual_seed(tokens)
    hidden, inter = 24, 16
    x = torch.randn(tokens, hidden)
    w13, w2 = torch.randn(experts, 2 * inter, hidden) * 0.2, torch.randn(experts, hidden, inter) * 0.2
    # Distinct experts per token, some experts certainly unused.
    ids = torch.stack([torch.randperm(experts // 2)[:k] for _ in range(tokens)])
    weights = torch.rand(tokens, k)
    torch.testing.assert_close(fused_experts(x, w13, w2, weights, ids), naive(x, w13, w2, weights, ids),
                               rtol=1e-5, atol=1e-5)


def test_keeps_activation_dtype():
    x = torch.randn(6, 8, dtype=torch.bfloat16)
    w13, w2 = torch.randn(4, 6, 8, dtype=torch.bfloat16), torch.randn(4, 8, 3, dtype=torch.bfloat16)
    out = fused_experts(x, w13, w2, torch.rand(6, 2), torch.randint(0, 4, (6, 2)))
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
