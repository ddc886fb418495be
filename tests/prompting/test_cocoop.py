"""CoCoOp: the meta-net's image-conditioned shift of the context, on open_clip's real classes."""

import prompt_fixtures as pf
import torch

from madapt.prompting import cocoop
from madapt.prompting.cocoop import CoCoOp
from madapt.prompting.coop import encode_text

setting = pf.setting  # the tiny and the micro backbone, each with its classes and a context


def built(ctx, **cfg) -> CoCoOp:
    return pf.built(CoCoOp, ctx, **cfg)


def test_meta_net_is_embed_to_embed_over_16_to_text_width_and_counts_match_closed_forms():
    big = built(pf.make_ctx(pf.vitb16_meta(), pf.TINY_NAMES))
    first, _, second = big.prompts.meta_net
    assert (first.in_features, first.out_features, second.out_features) == (512, 32, 512)
    assert big.summary()["trainable_params"] == 4 * 512 + (512 * 32 + 32) + (32 * 512 + 512) == 35360
    backbone = pf.micro_backbone()
    e, d = backbone.model.visual.output_dim, backbone.model.token_embedding.weight.shape[1]
    h = e // 16
    small = built(pf.make_ctx(backbone, pf.MICRO_NAMES))
    assert small.summary()["trainable_params"] == 4 * d + (e * h + h) + (h * d + d)


def test_with_a_zero_meta_net_output_it_is_zero_shot_clip(setting):
    backbone, names, ctx = setting
    method = built(ctx)
    with torch.no_grad():
        method.prompts.meta_net[2].weight.zero_()
        method.prompts.meta_net[2].bias.zero_()
    x = pf.images(backbone, 3)
    torch.testing.assert_close(
        method.logits(x, ctx), pf.zero_shot_logits(backbone, x, names, pf.HAND), atol=1e-5, rtol=1e-5
    )


def test_the_meta_net_gives_each_image_its_own_text_features(setting):
    backbone, names, ctx = setting
    method = built(ctx)
    x = pf.images(backbone, 2)
    feats = method.image_features(torch.cat([x, x[:1]]))
    with torch.no_grad():
        texts = method.text_features_for(feats)
    assert texts.shape == (3, len(names), backbone.model.visual.output_dim)
    assert (texts[0] - texts[1]).abs().max() > 1e-4  # two images, two sets of class texts
    torch.testing.assert_close(texts[0], texts[2], atol=0, rtol=0)  # same image, same texts
    # the shift is π(f(x)) added to every context vector
    shift = method.prompts.meta_net(feats[:1])
    learner = method.prompts.text
    with torch.no_grad():
        by_hand = learner(learner.ctx + shift)
        direct = torch.nn.functional.normalize(encode_text(backbone.model, by_hand, learner.tokens), dim=-1)
    torch.testing.assert_close(texts[0], direct, atol=1e-6, rtol=1e-6)


def test_batched_logits_equal_image_by_image_logits_and_the_text_batch_limit_changes_nothing(
    setting, monkeypatch
):
    backbone, _names, ctx = setting
    method = built(ctx)
    x = pf.images(backbone, 3)
    with torch.no_grad():
        together = method.logits(x, ctx)
        one_by_one = torch.cat([method.logits(x[i : i + 1], ctx) for i in range(3)])
        monkeypatch.setattr(cocoop, "TEXT_BATCH", 1)
        chunked = method.logits(x, ctx)
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together, chunked, atol=1e-5, rtol=1e-5)


def test_only_context_and_meta_net_train_and_the_backbone_stays_bit_identical(setting):
    backbone, _names, ctx = setting
    method = built(ctx)
    before = pf.frozen_state(backbone)
    start = {k: v.clone() for k, v in method.state_dict().items()}
    assert set(start) == {
        "prompts.text.ctx",
        "prompts.meta_net.0.weight",
        "prompts.meta_net.0.bias",
        "prompts.meta_net.2.weight",
        "prompts.meta_net.2.bias",
    }
    assert pf.sgd_step(method, ctx, pf.images(backbone, 1), torch.tensor([1])) == set()  # CoCoOp's batch of 1
    assert all(not torch.equal(start[k], v) for k, v in method.state_dict().items())
    pf.assert_backbone_unchanged(before, backbone)
    cfg = CoCoOp.Config()
    assert (cfg.epochs, cfg.batch_size) == (10, 1)
    assert (cfg.n_ctx, cfg.ctx_init, cfg.lr, cfg.momentum, cfg.weight_decay) == (
        4,
        "a photo of a",
        0.002,
        0.9,
        5e-4,
    )
