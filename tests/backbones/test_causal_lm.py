"""Pythia-style GPT-NeoX presets: config fields, parameter counts, vocabulary from a tokenizer, training."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers.models import WordLevel
from transformers import GPTNeoXForCausalLM, PreTrainedTokenizerFast

from madapt import registry
from madapt.backbones.causal_lm import PRESETS, build_causal_lm, preset_config, rotary_fraction, vocab_size_of
from madapt.errors import ConfigError, UnknownNameError
from tokenizers import Tokenizer

# total parameters at vocabulary 50,304 as printed in the Pythia paper (Biderman et al. 2023, Table 1)
PYTHIA_TOTAL = {"pythia-70m": 70_426_624, "pythia-160m": 162_322_944, "pythia-410m": 405_334_016}


def expected_params(layers: int, d: int, mlp: int, vocab: int) -> int:
    """GPT-NeoX with biases, two LayerNorms per layer, a final LayerNorm and untied in/out embeddings."""
    per_layer = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
    return layers * per_layer + 2 * d + 2 * vocab * d


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_pythia_70m_config_fields():
    config = preset_config("pythia-70m", 50304)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (6, 512, 8)
    assert config.intermediate_size == 2048 and config.max_position_embeddings == 2048
    assert rotary_fraction(config) == 0.25
    assert config.use_parallel_residual is True and config.tie_word_embeddings is False
    assert config.vocab_size == 50304


@pytest.mark.parametrize("preset", sorted(PYTHIA_TOTAL))
def test_parameter_counts_match_pythia(preset):
    layers, d, _, mlp = PRESETS[preset]
    with torch.device("meta"):  # counts only, no memory
        model = GPTNeoXForCausalLM(preset_config(preset, 50304))
    assert _count(model) == expected_params(layers, d, mlp, 50304) == PYTHIA_TOTAL[preset]
    head_dim = d // PRESETS[preset][2]
    assert model.gpt_neox.rotary_emb.inv_freq.numel() == int(head_dim * 0.25) // 2  # rotary on a quarter


def test_build_pythia_70m_is_untied_and_seeded():
    rng_before = torch.get_rng_state()
    model = build_causal_lm("pythia-70m", 50304, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the private seed leaves the global RNG alone
    assert _count(model) == 70_426_624
    embed_in, embed_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert embed_in.shape == embed_out.shape == (50304, 512)
    assert embed_in.data_ptr() != embed_out.data_ptr() and not torch.equal(embed_in, embed_out)


def test_seed_fixes_initialisation():
    a = build_causal_lm("pythia-micro", 97, seed=1).state_dict()
    b = build_causal_lm("pythia-micro", 97, seed=1).state_dict()
    c = build_causal_lm("pythia-micro", 97, seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["gpt_neox.embed_in.weight"], c["gpt_neox.embed_in.weight"])


def test_vocab_size_from_tokenizers():
    vocab = {w: i for i, w in enumerate(["<unk>", "the", "cat", "sat", "on", "mat", "."])}
    fast = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=fast, unk_token="<unk>")
    wrapped.add_special_tokens({"pad_token": "<pad>"})
    assert vocab_size_of(fast) == 7 and vocab_size_of(wrapped) == 8 and vocab_size_of(12) == 12
    model = build_causal_lm("pythia-micro", wrapped, seed=0)
    assert model.get_input_embeddings().weight.shape == (8, 64)
    assert model.get_output_embeddings().weight.shape == (8, 64)
    for bad in (0, -3, "fifty", True):
        with pytest.raises(ConfigError, match="vocab_size"):
            vocab_size_of(bad)


def test_tiny_presets_and_overrides():
    tiny = preset_config("pythia-tiny", 100)
    assert (tiny.num_hidden_layers, tiny.hidden_size, tiny.num_attention_heads) == (4, 128, 4)
    assert rotary_fraction(tiny) == 0.25 and tiny.use_parallel_residual and not tiny.tie_word_embeddings
    model = build_causal_lm("pythia-micro", 100, seed=0, max_position_embeddings=64, num_hidden_layers=3)
    assert model.config.max_position_embeddings == 64 and len(model.gpt_neox.layers) == 3


def test_tiny_model_learns_a_repeated_batch():
    torch.manual_seed(0)
    model = build_causal_lm("pythia-micro", 50, seed=0)
    batch = torch.randint(0, 50, (4, 16))
    out = model(input_ids=batch, labels=batch)
    assert out.logits.shape == (4, 16, 50)
    assert out.loss.item() == pytest.approx(math.log(50), abs=0.5)  # a near-uniform start
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = model(input_ids=batch, labels=batch).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_unknown_preset():
    with pytest.raises(UnknownNameError, match="did you mean 'pythia-70m'"):
        build_causal_lm("pythia-70M", 100)


def test_registered_presets_build():
    assert {"pythia-70m", "pythia-160m", "pythia-410m", "pythia-micro", "pythia-tiny"} <= set(
        registry.names("backbone")
    )
    model = registry.build("backbone", "pythia-micro", vocab_size=33, seed=0)
    assert isinstance(model, GPTNeoXForCausalLM) and model.config.vocab_size == 33
