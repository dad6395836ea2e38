"""Tiny random models in Hugging Face layout, built with transformers' own
classes, plus a small byte-level BPE tokenizer trained on the spot. Nothing is
downloaded."""
from __future__ import annotations

import json
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paged attention keeps the KV cache in fixed-size blocks.",
    "def add(a, b):\n    return a + b\n",
    "Numbers 0123456789 and émojis 🙂 and 汉字 test.",
    "Continuous batching mixes prefill and decode in one step.",
] * 20


class TiedHead(torch.nn.Module):
    """Just an embedding whose transpose is the output head, for quantize_model's
    tied-head copy (`fast_head`)."""

    supports_fast_head = True

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(vocab, dim)
        self.lm_head = None

    def compute_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.fast_head(h)


def build_tokenizer(path: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "chat_template": CHAT_TEMPLATE,
        "add_bos_token": False,
    }))
    return tok.get_vocab_size()


def build_model(path: Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    """Save a tiny random `family` model (llama | qwen2 | mistral) to path."""
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(path)
    common = dict(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=2, bos_token_id=None, tie_word_embeddings=False,
    )
    common.update(overrides)
    cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[family]
    torch.manual_seed(seed)
    cfg = cls[0](**common)
    model = cls[1](cfg).eval()
    # Random init leaves biases at zero; make Qwen2's qkv bias count.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(path)
    return path
