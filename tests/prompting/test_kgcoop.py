"""KgCoOp: CoOp plus the pull toward the hand-crafted prompt's text features."""

import prompt_fixtures as pf
import torch
import torch.nn.functional as F

from madapt.prompting.kgcoop import KgCoOp

setting = pf.setting  # the tiny and the micro backbone, each with its classes and a context


def built(ctx, **cfg) -> KgCoOp:
    return pf.built(KgCoOp, ctx, **cfg)


def test_the_extra_term_is_zero_at_initialisation_from_the_hand_template(setting):
    backbone, names, ctx = setting
    method = built(ctx)
    x = pf.images(backbone, 4)
    labels = torch.tensor([0, 1, 2, 3])
    assert abs(method.knowledge_gap().item()) < 1e-6
    logits = method.logits(x, ctx)
    torch.testing.assert_close(logits, pf.zero_shot_logits(backbone, x, names, pf.HAND), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        method.loss(x, labels, ctx), F.cross_entropy(logits, labels), atol=1e-5, rtol=1e-5
    )


def test_loss_is_cross_entropy_plus_lambda_times_one_minus_mean_cosine(setting):
    backbone, _names, ctx = setting
    method = built(ctx)
    with torch.no_grad():
        method.learner().ctx.add_(0.05 * torch.randn_like(method.learner().ctx))
    x, labels = pf.images(backbone, 4), torch.tensor([3, 2, 1, 0])
    text = method.text_features()
    gap = 1 - (text * method.prompts.hand).sum(-1).mean()
    ce = F.cross_entropy(method.logit_scale() * method.image_features(x) @ text.T, labels)
    assert gap.item() > 1e-4
    torch.testing.assert_close(method.loss(x, labels, ctx), ce + 8.0 * gap, atol=1e-5, rtol=1e-5)


def test_the_gradient_of_the_term_pulls_the_context_back_toward_the_hand_prompt():
    backbone = pf.tiny_backbone()
    ctx = pf.make_ctx(backbone, pf.TINY_NAMES)
    method = built(ctx)
    start = method.learner().ctx.detach().clone()
    torch.manual_seed(3)
    with torch.no_grad():
        method.learner().ctx.add_(0.5 * torch.randn_like(start))
    gaps = []
    for _ in range(20):
        method.learner().ctx.grad = None
        gap = method.knowledge_gap()
        gap.backward()
        gaps.append(gap.item())
        with torch.no_grad():
            grad = method.learner().ctx.grad
            if len(gaps) == 1:  # descent direction points from the perturbed context toward the start
                assert (-grad * (start - method.learner().ctx)).sum() > 0
            method.learner().ctx.sub_(2.0 * grad)
    assert gaps[0] > 1e-3 and gaps[-1] < 0.5 * gaps[0]


def test_another_hand_template_makes_the_term_positive_at_initialisation():
    ctx = pf.make_ctx(pf.tiny_backbone(), pf.TINY_NAMES)
    assert built(ctx, template="a centered satellite photo of {}.").knowledge_gap().item() > 1e-4


def test_only_the_context_trains_and_the_backbone_stays_bit_identical(setting):
    backbone, _names, ctx = setting
    method = built(ctx)
    before = pf.frozen_state(backbone)
    assert [n for n, _ in method.prompts.named_parameters()] == ["text.ctx"]
    assert pf.sgd_step(method, ctx, pf.images(backbone, 2), torch.tensor([0, 1])) == set()
    pf.assert_backbone_unchanged(before, backbone)


def test_published_config_and_parameter_count():
    cfg = KgCoOp.Config()
    assert (cfg.epochs, cfg.batch_size) == (100, 128)
    assert (cfg.weight, cfg.ctx_init, cfg.n_ctx, cfg.lr, cfg.momentum, cfg.weight_decay) == (
        8.0,
        "a photo of a",
        4,
        0.002,
        0.9,
        5e-4,
    )
    assert (
        built(pf.make_ctx(pf.vitb16_meta(), pf.TINY_NAMES)).summary()["trainable_params"] == 4 * 512 == 2048
    )
