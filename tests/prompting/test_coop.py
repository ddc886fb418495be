"""CoOp and the shared text prompt learner on open_clip's real classes (tiny BPE config, micro CLIP)."""

import prompt_fixtures as pf
import pytest
import torch
from pydantic import ValidationError

from madapt.errors import ConfigError, RunFolderError
from madapt.prompting.coop import CoOp, TextPromptLearner, token_ids
from madapt.registry import get

setting = pf.setting  # the tiny and the micro backbone, each with its classes and a context


def built(ctx, **cfg) -> CoOp:
    return pf.built(CoOp, ctx, **cfg)


def test_context_from_a_photo_of_a_with_class_at_the_end_is_zero_shot_clip(setting):
    backbone, names, ctx = setting
    method = built(ctx, ctx_init="a photo of a")
    x = pf.images(backbone, 4)
    assert method.learner().n_ctx == 4  # 4 tokens for BPE and for the word-level tokenizer alike
    underscored = built(ctx, ctx_init="a_photo_of_a")  # CoOp's CTX_INIT spelling
    torch.testing.assert_close(underscored.learner().ctx, method.learner().ctx, atol=0, rtol=0)
    torch.testing.assert_close(
        method.logits(x, ctx), pf.zero_shot_logits(backbone, x, names, pf.HAND), atol=1e-5, rtol=1e-5
    )


def test_random_context_is_normal_002_and_class_specific_has_one_per_class():
    backbone = pf.tiny_backbone()
    ctx = pf.make_ctx(backbone, pf.TINY_NAMES)
    torch.manual_seed(0)
    generic = built(ctx).learner().ctx
    width = backbone.model.token_embedding.weight.shape[1]
    assert generic.shape == (16, width)
    assert abs(generic.std().item() - 0.02) < 0.003 and abs(generic.mean().item()) < 0.003
    csc = built(ctx, csc=True).learner().ctx
    assert csc.shape == (len(pf.TINY_NAMES), 16, width)


def test_only_the_context_gets_gradients_and_the_backbone_stays_bit_identical(setting):
    backbone, _names, ctx = setting
    method = built(ctx, n_ctx=4)
    before_ctx = method.learner().ctx.detach().clone()
    before = pf.frozen_state(backbone)
    with_grad = pf.sgd_step(method, ctx, pf.images(backbone, 4), torch.tensor([0, 1, 2, 3]))
    assert with_grad == set()
    assert [p.shape for p in method.trainable_parameters()] == [before_ctx.shape]
    assert not torch.equal(method.learner().ctx, before_ctx)
    pf.assert_backbone_unchanged(before, backbone)


@pytest.mark.parametrize("position,layout", [("middle", "X X {} X X."), ("front", "{} X X X X.")])
def test_class_token_positions_place_the_class_tokens_as_coop(position, layout):
    backbone = pf.tiny_backbone()
    ctx = pf.make_ctx(backbone, pf.TINY_NAMES)
    learner = built(ctx, n_ctx=4, class_token_position=position).learner()
    embed = backbone.model.token_embedding
    x_id = token_ids(backbone, ["X"], "test")[0, 1]
    with torch.no_grad():
        learner.ctx.copy_(embed.weight[x_id].expand(4, -1))
        expected = embed(
            token_ids(backbone, [layout.format(n.replace("_", " ")) for n in pf.TINY_NAMES], "test")
        )
        torch.testing.assert_close(learner(), expected, atol=0, rtol=0)


def test_parameter_counts_equal_closed_forms():
    backbone = pf.tiny_backbone()
    ctx = pf.make_ctx(backbone, pf.TINY_NAMES)
    width = backbone.model.token_embedding.weight.shape[1]
    assert built(ctx).summary()["trainable_params"] == 16 * width
    assert built(ctx, csc=True).summary()["trainable_params"] == len(pf.TINY_NAMES) * 16 * width
    big = pf.make_ctx(pf.vitb16_meta(), pf.TINY_NAMES)
    summary = built(big).summary()
    assert summary["trainable_params"] == 16 * 512 == 8192
    assert (
        summary["text_tokens_per_layer"] == [16] + [0] * 11 and summary["vision_tokens_per_layer"] == [0] * 12
    )


def test_prompts_that_do_not_fit_the_context_and_contradictory_settings_are_config_errors():
    ctx = pf.make_ctx(
        pf.micro_backbone(), pf.MICRO_NAMES
    )  # context 20: SOS + 17 + "red circle" + EOS does not fit
    with pytest.raises(ConfigError, match="method.n_ctx"):
        built(ctx, n_ctx=17)
    with pytest.raises(ConfigError, match="method.n_ctx"):
        built(ctx, n_ctx=16, ctx_init="a photo of a")
    with pytest.raises(ValidationError, match="csc"):
        CoOp.Config(csc=True, ctx_init="a photo of a")
    with pytest.raises(ConfigError, match="method.n_ctx"):
        TextPromptLearner(ctx.backbone, pf.MICRO_NAMES, 5, init="a photo of a")


def test_checkpoint_state_restores_the_same_logits_and_refuses_another_config(setting):
    backbone, _names, ctx = setting
    method = built(ctx, n_ctx=4)
    x = pf.images(backbone, 3)
    pf.sgd_step(method, ctx, x, torch.tensor([0, 1, 2]))
    state = method.state_dict()
    assert set(state) == {"prompts.ctx"} and all(isinstance(v, torch.Tensor) for v in state.values())
    fresh = built(ctx, n_ctx=4)
    fresh.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(fresh.logits(x, ctx), method.logits(x, ctx), atol=0, rtol=0)
    with pytest.raises(RunFolderError):
        built(ctx, n_ctx=3).load_state_dict(state)


def test_optimizer_is_dassl_sgd_with_the_published_defaults():
    cfg = CoOp.Config()
    assert (cfg.n_ctx, cfg.ctx_init, cfg.class_token_position, cfg.csc) == (16, None, "end", False)
    assert (cfg.epochs, cfg.batch_size) == (200, 32)  # 16 shots (COOP.md: the vit_b16 / rn50 configs)
    method = get("fewshot_method", "coop")(cfg)
    ctx = pf.make_ctx(pf.tiny_backbone(), pf.TINY_NAMES)
    method.setup(ctx)
    opt = method.optimizer(method.trainable_parameters(), ctx)
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (
        0.002,
        0.9,
        5e-4,
        False,
    )


def test_evaluation_reuses_text_features_only_while_the_context_is_unchanged():
    backbone = pf.tiny_backbone()
    ctx = pf.make_ctx(backbone, pf.TINY_NAMES)
    method = built(ctx, n_ctx=4)
    x = pf.images(backbone, 2)
    with torch.no_grad():
        first = method.logits(x, ctx)
        assert method.class_features() is method.class_features()
    pf.sgd_step(method, ctx, x, torch.tensor([0, 1]))
    with torch.no_grad():
        after = method.logits(x, ctx)
        fresh = method.logit_scale() * method.image_features(x) @ method.text_features().T
    assert not torch.equal(first, after)
    torch.testing.assert_close(after, fresh, atol=0, rtol=0)
