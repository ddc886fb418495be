"""K/V-only prompts in open_clip's blocks (seed 003 eqs. 7-8).

On the tiny ViT-B/16 config and the micro CLIP.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from madapt.backbones.clip import load_clip
from madapt.backbones.micro import load_micro_clip
from madapt.errors import ConfigError
from madapt.peft.kv_prompts import (
    KVPromptBlock,
    inject_kv_prompts,
    kv_prompt_blocks,
    remove_kv_prompts,
    tower_blocks,
    uniform_lengths,
)


@pytest.fixture(scope="module", params=["tiny", "micro"])
def backbone(request):
    torch.manual_seed(0)
    b = load_clip("madapt-tiny-ViT-B-16") if request.param == "tiny" else load_micro_clip()
    b.model.requires_grad_(False)
    return b


def encode(b, model, images, tokens):
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def inputs(b):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, b.image_size, b.image_size, generator=g)
    return images, b.tokenize(["a photo of a red object.", "a blue circle", "the letter a"])


def prompted(b, n=4, attend="gather"):
    model = copy.deepcopy(b.model)
    depth = {t: len(blocks) for t, blocks in tower_blocks(model).items()}
    torch.manual_seed(3)
    blocks = inject_kv_prompts(model, {t: [n] * d for t, d in depth.items()}, attend=attend)
    return model, blocks


@pytest.mark.parametrize("attend", ["gather", "mask"])
def test_all_masks_zero_is_exactly_zero_shot_clip(backbone, attend):
    images, tokens = inputs(backbone)
    want = encode(backbone, backbone.model, images, tokens)
    model, blocks = prompted(backbone, attend=attend)
    for block in blocks["vision"] + blocks["text"]:
        block.mask.zero_()
    got = encode(backbone, model, images, tokens)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_widths_come_from_the_model_and_only_prompts_train(backbone):
    model, blocks = prompted(backbone)
    widths = {t: {b.width for b in bs} for t, bs in blocks.items()}
    assert widths == {"vision": {model.visual.transformer.width}, "text": {model.transformer.width}}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".prompts") for n in trainable)
    remove_kv_prompts(model)
    assert kv_prompt_blocks(model) == {"vision": [], "text": []}
    assert not any(isinstance(m, KVPromptBlock) for m in model.modules())


def test_every_block_keeps_its_sequence_length_and_prompts_change_the_output(backbone):
    images, tokens = inputs(backbone)
    plain_shapes, shapes = [], []
    for model, out in ((backbone.model, plain_shapes), (prompted(backbone)[0], shapes)):
        hooks = [
            b.register_forward_hook(lambda m, i, o, out=out: out.append(tuple(o.shape)))
            for blocks in tower_blocks(model).values()
            for b in blocks
        ]
        feats = encode(backbone, model, images, tokens)
        for h in hooks:
            h.remove()
    assert shapes == plain_shapes
    want = encode(backbone, backbone.model, images, tokens)
    assert not torch.allclose(feats[0], want[0]) and not torch.allclose(feats[1], want[1])


@pytest.mark.parametrize("attend", ["gather", "mask"])
def test_a_pruned_prompt_leaves_attention(backbone, attend):
    images, tokens = inputs(backbone)
    model, blocks = prompted(backbone, attend=attend)
    for block in blocks["vision"] + blocks["text"]:
        block.mask[1] = False
    before = encode(backbone, model, images, tokens)
    with torch.no_grad():
        for block in blocks["vision"] + blocks["text"]:
            block.prompts[1] += 100.0 * torch.randn_like(block.prompts[1])
    after = encode(backbone, model, images, tokens)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    with torch.no_grad():
        blocks["text"][0].prompts[0] += 1.0  # a live one does matter
    assert not torch.equal(encode(backbone, model, images, tokens)[1], after[1])


def test_gather_and_mask_agree_and_a_zero_vector_is_not_a_pruned_token(backbone):
    images, tokens = inputs(backbone)
    gathered, gb = prompted(backbone, attend="gather")
    masked, mb = prompted(backbone, attend="mask")
    for blocks in (gb, mb):
        for k, block in enumerate(blocks["vision"] + blocks["text"]):
            block.mask[k % 4] = False
    g, m = encode(backbone, gathered, images, tokens), encode(backbone, masked, images, tokens)
    assert torch.allclose(g[0], m[0], atol=1e-5) and torch.allclose(g[1], m[1], atol=1e-5)
    # the pitfall: a zeroed live prompt is ln_1(0) = beta, still a key and a value
    with torch.no_grad():
        for block in gb["vision"] + gb["text"]:
            block.prompts.zero_()
    zeroed = encode(backbone, gathered, images, tokens)
    for block in gb["vision"] + gb["text"]:
        block.mask.zero_()
    assert not torch.allclose(zeroed[0], encode(backbone, gathered, images, tokens)[0])


def test_one_block_matches_the_attention_written_out(backbone):
    _, blocks = prompted(backbone, n=3)
    block = blocks["text"][0]
    raw, attn = block.block, block.block.attn
    x = torch.randn(2, 7, block.width)
    causal = torch.full((7, 7), float("-inf")).triu(1)
    with torch.no_grad():
        got = block(x, attn_mask=causal)
        h, p = raw.ln_1(x), raw.ln_1(block.prompts)
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
        kv = torch.cat([h, p.expand(2, -1, -1)], dim=1)
        heads, d = attn.num_heads, block.width // attn.num_heads

        def split(t):
            return t.view(2, -1, heads, d).transpose(1, 2)

        q, k, v = split(h @ w_q.T + b_q), split(kv @ w_k.T + b_k), split(kv @ w_v.T + b_v)
        mask = torch.cat([causal, torch.zeros(7, 3)], dim=1)  # every position sees the prompts
        weights = torch.softmax(q @ k.transpose(-1, -2) / d**0.5 + mask, dim=-1)
        out = attn.out_proj((weights @ v).transpose(1, 2).reshape(2, 7, -1))
        y = x + out
        want = y + raw.mlp(raw.ln_2(y))
    assert torch.allclose(got, want, atol=1e-5)
    assert weights[:, :, 0, 7:].sum() > 0  # the first (SOS) position attends to the prompts


def test_text_stays_causal_with_prompts(backbone):
    model, _ = prompted(backbone)
    tokens = backbone.tokenize(["a photo of a red object"])
    emb = model.token_embedding(tokens) + model.positional_embedding
    with torch.no_grad():
        out = model.transformer(emb, attn_mask=model.attn_mask)
        emb2 = emb.clone()
        emb2[:, 5] += 1.0
        out2 = model.transformer(emb2, attn_mask=model.attn_mask)
    assert torch.equal(out[:, :5], out2[:, :5]) and not torch.allclose(out[:, 5:], out2[:, 5:])


def test_uniform_lengths_spread_the_total_and_bad_depths_are_errors(backbone):
    assert uniform_lengths(32, {"vision": 4, "text": 4}) == {"vision": [4] * 4, "text": [4] * 4}
    split = uniform_lengths(32, {"vision": 12, "text": 12})
    assert sum(split["vision"]) + sum(split["text"]) == 32
    assert (
        split["vision"][:4] == [2, 2, 2, 2] and split["text"][:4] == [2, 2, 2, 2] and split["text"][-1] == 1
    )
    with pytest.raises(ConfigError):
        inject_kv_prompts(copy.deepcopy(backbone.model), {"vision": [1] * 99})
    with pytest.raises(ConfigError):
        inject_kv_prompts(copy.deepcopy(backbone.model), {"audio": [1]})


def test_gradients_reach_live_prompts_only(backbone):
    images, tokens = inputs(backbone)
    model, blocks = prompted(backbone)
    blocks["vision"][0].mask[2] = False
    loss = F.normalize(model.encode_image(images), dim=-1).sum() + model.encode_text(tokens).square().sum()
    loss.backward()
    grad = blocks["vision"][0].prompts.grad
    assert torch.equal(grad[2], torch.zeros_like(grad[2])) and grad[[0, 1, 3]].abs().sum() > 0
    assert all(b.prompts.grad is not None and b.prompts.grad.abs().sum() > 0 for b in blocks["text"])
