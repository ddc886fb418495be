"""MaPLe: deep text prompts and their linear maps into the image tower, on open_clip's real classes."""

import prompt_fixtures as pf
import pytest
import torch
import torch.nn.functional as F

from madapt.errors import ConfigError
from madapt.prompting.maple import MaPLe
from madapt.prompting.vpt_clip import encode_image

setting = pf.setting  # the tiny and the micro backbone, each with its classes and a context


def built(ctx, **cfg) -> MaPLe:
    return pf.built(MaPLe, ctx, **cfg)


def depth_of(backbone) -> int:
    return len(backbone.model.transformer.resblocks)


def test_parameter_count_on_vit_b16_is_3555072_and_closed_forms_elsewhere():
    summary = built(pf.make_ctx(pf.vitb16_meta(), pf.TINY_NAMES)).summary()
    assert summary["trainable_params"] == 9 * (512 * 768 + 768) + 9 * 2 * 512 == 3_555_072
    assert summary["text_tokens_per_layer"] == [2] * 9 + [0] * 3 == summary["vision_tokens_per_layer"]
    backbone = pf.micro_backbone()
    d_t, d_v = backbone.model.token_embedding.weight.shape[1], backbone.model.visual.conv1.out_channels
    small = built(pf.make_ctx(backbone, pf.MICRO_NAMES), prompt_depth=3)
    assert small.summary()["trainable_params"] == 3 * (d_t * d_v + d_v) + 3 * 2 * d_t


def test_with_zero_tokens_it_is_zero_shot_clip(setting):
    backbone, names, ctx = setting
    method = built(ctx, n_ctx=0, prompt_depth=1)
    x = pf.images(backbone, 3)
    assert method.trainable_parameters() == []
    torch.testing.assert_close(
        method.logits(x, ctx), pf.zero_shot_logits(backbone, x, names, pf.HAND), atol=1e-5, rtol=1e-5
    )
    with pytest.raises(ConfigError, match="no trainable prompt parameters"):
        method.optimizer(method.trainable_parameters(), ctx)


def test_image_prompts_of_each_layer_are_the_linear_maps_of_that_layers_text_prompts(setting):
    backbone, names, ctx = setting
    depth = depth_of(backbone)
    method = built(ctx, prompt_depth=depth)
    p = method.prompts
    x = pf.images(backbone, 2)
    with pf.BlockInputs(backbone.model.visual.transformer) as seen, torch.no_grad():
        method.logits(x, ctx)
        mapped = [p.proj(p.text.ctx)] + [f(t) for f, t in zip(p.compound_proj, p.text_deep)]
    torch.testing.assert_close(
        seen.inputs[0][:, -2:], backbone.model.visual.ln_pre(mapped[0]).expand(2, -1, -1)
    )
    for layer in range(1, depth):
        assert torch.equal(seen.inputs[layer][:, -2:], mapped[layer].expand(2, -1, -1))
    with pf.BlockInputs(backbone.model.transformer) as seen, torch.no_grad():
        method.text_features()
    for layer in range(1, depth):
        assert torch.equal(seen.inputs[layer][:, 1:3], p.text_deep[layer - 1].expand(len(names), -1, -1))


def test_deeper_maps_start_as_copies_of_one_linear_and_the_first_map_has_its_own_init():
    method = built(pf.make_ctx(pf.micro_backbone(), pf.MICRO_NAMES), prompt_depth=4)
    maps = method.prompts.compound_proj
    assert len(maps) == 3
    assert all(torch.equal(m.weight, maps[0].weight) and torch.equal(m.bias, maps[0].bias) for m in maps)
    assert maps[0].weight.data_ptr() != maps[1].weight.data_ptr()  # copies, not one shared module
    assert not torch.equal(method.prompts.proj.weight, maps[0].weight)


def test_the_image_loss_reaches_the_text_prompts_and_the_backbone_stays_bit_identical(setting):
    backbone, _names, ctx = setting
    method = built(ctx, prompt_depth=depth_of(backbone))
    before = pf.frozen_state(backbone)
    x = pf.images(backbone, 2)
    # text features fixed: only the coupling carries the gradient from the image tower to the text prompts
    text = method.class_features().detach()
    img = F.normalize(encode_image(backbone.model.visual, x, method.prompts.vision_prompts()), dim=-1)
    (img @ text.T).sum().backward()
    assert method.prompts.text_deep[0].grad.abs().sum() > 0 and method.prompts.text.ctx.grad.abs().sum() > 0
    for param in method.trainable_parameters():
        param.grad = None
    assert pf.sgd_step(method, ctx, x, torch.tensor([0, 1])) == set()
    pf.assert_backbone_unchanged(before, backbone)


def test_published_config_and_depth_errors():
    cfg = MaPLe.Config()
    assert (cfg.epochs, cfg.batch_size) == (5, 4)
    assert (cfg.n_ctx, cfg.prompt_depth, cfg.ctx_init, cfg.lr, cfg.momentum, cfg.weight_decay) == (
        2,
        9,
        "a photo of a",
        0.0035,
        0.9,
        5e-4,
    )
    with pytest.raises(ConfigError, match="method.prompt_depth"):
        built(pf.make_ctx(pf.micro_backbone(), pf.MICRO_NAMES))  # depth 9 > 4 blocks
