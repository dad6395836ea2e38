"""Fill-in-the-middle for /v1/completions `suffix`: only for models whose
tokenizer has FIM tokens; the prompt is laid out prefix-suffix-middle (PSM),
the order these models were trained on."""
from __future__ import annotations

# (prefix, suffix, middle) markers, most specific first.
FIM_FORMATS: tuple[tuple[str, str, str], ...] = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder / StarCoder2
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder, DeepSeek-V2/V3
)


def fim_format(tokenizer) -> tuple[str, str, str] | None:
    """The FIM markers this tokenizer has as single tokens, if any."""
    for fmt in FIM_FORMATS:
        if all(len(tokenizer.encode(tag, add_special_tokens=False)) == 1 for tag in fmt):
            return fmt
    return None


def fim_prompt(fmt: tuple[str, str, str], prefix: str, suffix: str) -> str:
    pre, suf, mid = fmt
    return f"{pre}{prefix}{suf}{suffix}{mid}"
