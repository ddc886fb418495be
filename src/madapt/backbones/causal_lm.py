"""Pythia-style GPT-NeoX language models over transformers (the LMs of ADAT, seed 000 ch. 5).

ADAT trains Pythia models (70M/160M/410M) from scratch with each candidate tokenizer, so the
embedding size follows the tokenizer: the vocabulary is an argument, the rest is a preset. Presets
copy the Pythia configs (Biderman et al. 2023, Table 1 / the released ``config.json``): rotary on
25% of each head, parallel attention+MLP residual, untied input/output embeddings, 2048 positions.
The tiny presets keep all of that at widths a CPU test can train.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from madapt.errors import ConfigError, UnknownNameError, closest
from madapt.registry import register

PYTHIA_COMMON: dict[str, Any] = dict(
    rotary_pct=0.25,
    rotary_emb_base=10000,
    use_parallel_residual=True,
    tie_word_embeddings=False,
    max_position_embeddings=2048,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    initializer_range=0.02,
    attention_dropout=0.0,
    hidden_dropout=0.0,
    bos_token_id=0,
    eos_token_id=0,
)

# preset -> (layers, hidden size, attention heads, MLP size)
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "pythia-70m": (6, 512, 8, 2048),
    "pythia-160m": (12, 768, 12, 3072),
    "pythia-410m": (24, 1024, 16, 4096),
    "pythia-micro": (2, 64, 4, 256),
    "pythia-tiny": (4, 128, 4, 512),
}


def preset_config(preset: str, vocab_size: int, **overrides: Any) -> GPTNeoXConfig:
    """The `GPTNeoXConfig` of ``preset`` with ``vocab_size`` rows; ``overrides`` win over the preset."""
    if preset not in PRESETS:
        raise UnknownNameError(
            f"language model preset '{preset}'",
            "is not known" + closest(preset, PRESETS),
            f"one of {', '.join(PRESETS)}",
        )
    layers, hidden, heads, mlp = PRESETS[preset]
    fields = dict(
        PYTHIA_COMMON,
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=mlp,
        vocab_size=vocab_size,
    )
    fields.update(overrides)
    return GPTNeoXConfig(**fields)


def vocab_size_of(tokenizer_or_size: Any) -> int:
    """Vocabulary size from an int or a tokenizer (transformers, `tokenizers`, or sentencepiece)."""
    if isinstance(tokenizer_or_size, (bool, str, bytes)):
        size = None
    elif isinstance(tokenizer_or_size, int):
        size = tokenizer_or_size
    elif hasattr(tokenizer_or_size, "__len__"):
        size = len(tokenizer_or_size)  # transformers tokenizers: includes added special tokens
    elif hasattr(tokenizer_or_size, "get_vocab_size"):
        size = tokenizer_or_size.get_vocab_size(with_added_tokens=True)  # `tokenizers.Tokenizer`
    elif hasattr(tokenizer_or_size, "get_piece_size"):
        size = tokenizer_or_size.get_piece_size()  # sentencepiece
    else:
        size = None
    if size is None or size < 1:
        raise ConfigError("vocab_size", repr(tokenizer_or_size), "a positive int or a tokenizer")
    return int(size)


def build_causal_lm(
    preset: str, vocab_size: Any, *, seed: int | None = None, **overrides: Any
) -> GPTNeoXForCausalLM:
    """A randomly initialised GPT-NeoX for ``preset`` whose embeddings fit ``vocab_size``.

    ``vocab_size`` is an int or the tokenizer itself. With ``seed`` the initialisation is drawn
    from a private RNG (the global torch RNG is left untouched), so equal seeds give equal weights.
    """
    config = preset_config(preset, vocab_size_of(vocab_size), **overrides)
    if seed is None:
        return GPTNeoXForCausalLM(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPTNeoXForCausalLM(config)


def rotary_fraction(config: GPTNeoXConfig) -> float:
    """Share of each head's dimensions under rotary embedding (named differently across versions)."""
    rope = getattr(config, "rope_parameters", None) or {}
    if "partial_rotary_factor" in rope:
        return float(rope["partial_rotary_factor"])
    return float(config.rotary_pct)


for _preset in PRESETS:
    register("backbone", _preset)(functools.partial(build_causal_lm, _preset))
