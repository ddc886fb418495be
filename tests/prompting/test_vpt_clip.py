"""IVLP / VPT-deep on CLIP: prompts as real tokens in both towers, on open_clip's real classes."""

import prompt_fixtures as pf
import pytest
import torch
from pydantic import ValidationError

from madapt.errors import ConfigError
from madapt.prompting.coop import token_ids
from madapt.prompting.vpt_clip import IVLP, VPT, encode_image
from madapt.registry import get

NO_PROMPTS = {"n_ctx_text": 0, "depth_text": 0, "n_ctx_vision": 0, "depth_vision": 0}


setting = pf.setting  # the tiny and the micro backbone, each with its classes and a context


def built(ctx, method=IVLP, **cfg):
    return pf.built(method, ctx, **cfg)


def n_layers(backbone):
    return len(backbone.model.transformer.resblocks), len(backbone.model.visual.transformer.resblocks)


def test_the_image_encoder_without_prompts_is_open_clips_own(setting):
    backbone, _, _ = setting
    x = pf.images(backbone, 2)
    with torch.no_grad():
        torch.testing.assert_close(
            encode_image(backbone.model.visual, x, []), backbone.model.visual(x), atol=0, rtol=0
        )


@pytest.mark.parametrize(
    "method,cfg",
    [
        (IVLP, NO_PROMPTS),
        (VPT, {"n_ctx_vision": 0, "depth_vision": 0}),
        (IVLP, {"depth_text": 1, "n_ctx_vision": 0, "depth_vision": 0}),
    ],
)
def test_zero_tokens_or_only_a_context_from_words_is_zero_shot_clip(setting, method, cfg):
    backbone, names, ctx = setting
    m = built(ctx, method, **cfg)
    x = pf.images(backbone, 3)
    torch.testing.assert_close(
        m.logits(x, ctx), pf.zero_shot_logits(backbone, x, names, pf.HAND), atol=1e-5, rtol=1e-5
    )


def test_prompts_are_real_tokens_replaced_layer_by_layer_in_both_towers(setting):
    backbone, names, ctx = setting
    text_layers, vision_layers = n_layers(backbone)
    m = built(ctx, n_ctx_text=2, n_ctx_vision=3, depth_text=text_layers, depth_vision=vision_layers - 1)
    x = pf.images(backbone, 2)
    grid = (backbone.image_size // backbone.model.visual.conv1.kernel_size[0]) ** 2
    with pf.BlockInputs(backbone.model.visual.transformer) as seen, torch.no_grad():
        m.logits(x, ctx)
    assert [t.shape[1] for t in seen.inputs] == [1 + grid + 3] * vision_layers
    vision = m.prompts.vision
    torch.testing.assert_close(
        seen.inputs[0][:, -3:], backbone.model.visual.ln_pre(vision[0]).expand(2, -1, -1)
    )  # before ln_pre
    for layer in range(1, vision_layers - 1):
        assert torch.equal(seen.inputs[layer][:, -3:], vision[layer].expand(2, -1, -1))
    # past the prompt depth the previous layer's prompt outputs travel on
    assert not torch.equal(seen.inputs[-1][:, -3:], vision[-1].expand(2, -1, -1))

    with pf.BlockInputs(backbone.model.transformer) as seen, torch.no_grad():
        m.text_features()
    length = backbone.model.positional_embedding.shape[0]
    assert all(t.shape == (len(names), length, t.shape[-1]) for t in seen.inputs)
    pos = backbone.model.positional_embedding
    torch.testing.assert_close(
        seen.inputs[0][:, 1:3], (m.prompts.text.ctx + pos[1:3]).expand(len(names), -1, -1)
    )
    for layer in range(1, text_layers):
        assert torch.equal(
            seen.inputs[layer][:, 1:3], m.prompts.text_deep[layer - 1].expand(len(names), -1, -1)
        )


def test_layer_zero_text_context_is_the_first_tokens_of_a_photo_of_a_or_random_when_longer(setting):
    backbone, _names, ctx = setting
    embed = backbone.model.token_embedding
    ids = token_ids(backbone, ["a photo of a"], "test")[0, 1:3]
    with torch.no_grad():
        torch.testing.assert_close(
            built(ctx, depth_text=1, depth_vision=1).prompts.text.ctx, embed(ids), atol=0, rtol=0
        )
    longer = built(ctx, n_ctx_text=6, depth_text=1, depth_vision=1).prompts.text.ctx
    assert longer.shape[0] == 6 and abs(longer.std().item() - 0.02) < 0.01


def test_only_prompts_get_gradients_and_the_backbone_stays_bit_identical(setting):
    backbone, _names, ctx = setting
    text_layers, vision_layers = n_layers(backbone)
    for method, cfg in [
        (IVLP, {"depth_text": text_layers, "depth_vision": vision_layers}),
        (VPT, {"depth_vision": vision_layers}),
    ]:
        m = built(ctx, method, **cfg)
        before = pf.frozen_state(backbone)
        start = {k: v.clone() for k, v in m.state_dict().items()}
        assert pf.sgd_step(m, ctx, pf.images(backbone, 2), torch.tensor([0, 1])) == set()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.trainable_parameters())
        assert all(not torch.equal(start[k], v) for k, v in m.state_dict().items())
        pf.assert_backbone_unchanged(before, backbone)


def test_vpt_trains_the_image_tower_only_and_encodes_its_fixed_texts_once():
    ctx = pf.make_ctx(pf.micro_backbone(), pf.MICRO_NAMES)
    m = built(ctx, VPT, depth_vision=4)
    assert m.text_parameters() == [] and all(n.startswith("vision.") for n, _ in m.prompts.named_parameters())
    assert m.class_features() is m.class_features()  # cached even with grad enabled: nothing to train there


def test_parameter_counts_equal_closed_forms():
    big = pf.make_ctx(pf.vitb16_meta(), pf.TINY_NAMES)
    assert built(big).summary()["trainable_params"] == 12 * 2 * 512 + 12 * 2 * 768 == 30720
    vpt = built(big, VPT).summary()
    assert vpt["trainable_params"] == 12 * 8 * 768 == 73728
    assert vpt["vision_tokens_per_layer"] == [8] * 12 and vpt["text_tokens_per_layer"] == [0] * 12
    backbone = pf.micro_backbone()
    d_t, d_v = backbone.model.token_embedding.weight.shape[1], backbone.model.visual.conv1.out_channels
    small = built(
        pf.make_ctx(backbone, pf.MICRO_NAMES), n_ctx_text=3, depth_text=2, n_ctx_vision=5, depth_vision=4
    )
    assert small.summary()["trainable_params"] == 2 * 3 * d_t + 4 * 5 * d_v
    assert small.summary()["text_tokens_per_layer"] == [3, 3, 0, 0]


def test_config_errors_and_published_defaults():
    with pytest.raises(ValidationError, match="depth_text"):
        IVLP.Config(n_ctx_text=2, depth_text=0)
    ctx = pf.make_ctx(pf.micro_backbone(), pf.MICRO_NAMES)
    with pytest.raises(ConfigError, match="method.depth_vision"):
        built(ctx, depth_text=4, depth_vision=12)
    ivlp, vpt = get("fewshot_method", "ivlp").Config(), get("fewshot_method", "vpt").Config()
    assert (ivlp.epochs, ivlp.batch_size) == (vpt.epochs, vpt.batch_size) == (5, 4)
    assert (ivlp.n_ctx_text, ivlp.n_ctx_vision, ivlp.depth_text, ivlp.depth_vision, ivlp.lr) == (
        2,
        2,
        12,
        12,
        0.0035,
    )
    assert (vpt.n_ctx_text, vpt.n_ctx_vision, vpt.depth_text, vpt.depth_vision, vpt.lr) == (
        0,
        8,
        0,
        12,
        0.0025,
    )
