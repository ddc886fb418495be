"""VPT-deep on timm Swin Transformers (seed 000 §6.5.3, Table 6.8) and the backbone dispatch.

The ViT variant's tests live with the padding prompt in tests/prompting/test_visual_prompt.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock, WindowAttention

from madapt.backbones.classifier import load_classifier
from madapt.errors import ConfigError
from madapt.peft import VPTDeep, VPTDeepSwin, build_vpt_deep, trainable_names
from madapt.peft.vpt import prompted_swin_block, prompted_window_attention


def _tiny_swin(shifted: bool = True) -> torch.nn.Module:
    """madapt-tiny-swin (8x8 patches, 4x4 windows); two blocks per stage give stage 0 a shifted block."""
    kwargs = {"depths": (2, 2), "num_heads": (1, 2)} if shifted else {}
    return load_classifier("madapt-tiny-swin", **kwargs).model


def _shifted_block(swin: torch.nn.Module) -> SwinTransformerBlock:
    block = swin.layers[0].blocks[1]
    assert block.shift_size == (2, 2) and block.window_size == (4, 4) and block.attn_mask is not None
    return block


@pytest.mark.parametrize("shifted", [False, True])
def test_zero_tokens_equals_the_timm_forward(shifted: bool) -> None:
    torch.manual_seed(0)
    swin = _tiny_swin(shifted)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(VPTDeepSwin(swin, 0)(x), swin(x))


def test_prompts_change_the_logits_train_alone_and_every_block_gets_a_gradient() -> None:
    torch.manual_seed(0)
    swin = _tiny_swin()
    before = {k: v.clone() for k, v in swin.state_dict().items()}
    vpt = build_vpt_deep(swin, 3)
    assert isinstance(vpt, VPTDeepSwin)
    assert [tuple(p.shape) for p in vpt.prompts] == [(2, 3, 16), (2, 3, 32)]  # next stage: its own width
    assert trainable_names(vpt) == ["prompts.0", "prompts.1"]
    assert not any(p.requires_grad for p in swin.parameters())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        plain = swin(x)
    vpt.train()
    assert vpt.training and not swin.training and not any(m.training for m in swin.modules())
    logits = vpt(x)
    assert logits.shape == (4, swin.num_classes) == (4, 1000)  # the source head's classes
    assert not torch.allclose(logits, plain)
    opt = torch.optim.SGD(vpt.parameters(), lr=1.0, momentum=0.9)
    start = [p.detach().clone() for p in vpt.prompts]
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    for stage, p in enumerate(vpt.prompts):
        for block in range(p.shape[0]):
            assert float(p.grad[block].abs().sum()) > 0, (stage, block)
    opt.step()
    assert all(not torch.equal(p, s) for p, s in zip(vpt.prompts, start))
    assert all(p.grad is None for p in swin.parameters())
    after = swin.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical backbone


def test_shifted_block_keeps_windows_apart_but_every_token_sees_the_prompts() -> None:
    torch.manual_seed(0)
    block = _shifted_block(_tiny_swin())
    x, prompts = torch.randn(1, 8, 8, 16), torch.randn(3, 16)
    bump = torch.randn(16)  # not a constant: norm1 would cancel it

    def changed(x2: torch.Tensor, prompts2: torch.Tensor) -> set[tuple[int, int]]:
        with torch.no_grad():
            diff = (prompted_swin_block(block, x2, prompts2) - prompted_swin_block(block, x, prompts)).abs()
        return {tuple(ij) for ij in (diff.amax(-1)[0] > 1e-6).nonzero().tolist()}

    # shift 2, window 4: rows/columns 2..5 form the middle window of the shifted grid
    x2 = x.clone()
    x2[0, 3, 3] += bump
    assert changed(x2, prompts) == {(i, j) for i in range(2, 6) for j in range(2, 6)}
    # rows/columns 6-7 and 0-1 share a wrapped-around window; the shift mask keeps them apart
    x2 = x.clone()
    x2[0, 7, 7] += bump
    assert changed(x2, prompts) == {(6, 6), (6, 7), (7, 6), (7, 7)}
    # ... and the widened mask still lets every token of every window attend to the prompts
    assert changed(x, prompts + bump) == {(i, j) for i in range(8) for j in range(8)}


def _vpt_square_attention(
    attn: WindowAttention, windows: torch.Tensor, prompts: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """VPT's own formulation: [prompts; window] attend to each other, bias and mask zero-padded."""
    bw, length, _ = windows.shape
    n, heads = prompts.shape[0], attn.num_heads
    seq = torch.cat([prompts.expand(bw, -1, -1), windows], dim=1)
    q, k, v = attn.qkv(seq).reshape(bw, n + length, 3, heads, -1).permute(2, 0, 3, 1, 4)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    bias = torch.zeros(heads, n + length, n + length)
    bias[:, n:, n:] = attn._get_rel_pos_bias()[0]
    full_mask = torch.zeros(mask.shape[0], n + length, n + length)
    full_mask[:, n:, n:] = mask
    logits = (logits + bias).view(-1, mask.shape[0], heads, n + length, n + length) + full_mask[None, :, None]
    out = (logits.view(bw, heads, n + length, -1).softmax(-1) @ v).transpose(1, 2).reshape(bw, n + length, -1)
    return attn.proj(out)[:, n:]


def test_window_attention_matches_vpts_square_attention_on_the_image_tokens() -> None:
    torch.manual_seed(0)
    block = _shifted_block(_tiny_swin())
    windows, prompts = torch.randn(2 * 4, 16, 16), torch.randn(5, 16)  # 2 images x 4 windows
    with torch.no_grad():
        ours = prompted_window_attention(block.attn, windows, prompts, block.attn_mask)
        reference = _vpt_square_attention(block.attn, windows, prompts, block.attn_mask)
    torch.testing.assert_close(ours, reference)


def test_dispatch_by_backbone_and_bad_inputs() -> None:
    torch.manual_seed(0)
    assert type(build_vpt_deep(load_classifier("madapt-tiny-vit").model, 2)) is VPTDeep
    assert type(build_vpt_deep(_tiny_swin(False), 2)) is VPTDeepSwin
    with pytest.raises(ConfigError, match="VisionTransformer.*SwinTransformer"):
        build_vpt_deep(load_classifier("madapt-tiny-resnet50").model, 2)
    with pytest.raises(ConfigError, match="prompt.tokens"):
        build_vpt_deep(_tiny_swin(False), -1)


def test_swin_b_in22k_keeps_its_21841_way_head_and_gets_prompts_per_stage_width() -> None:
    with torch.device("meta"):  # the real architecture, shapes only
        swin = load_classifier("swin_base_patch4_window7_224.ms_in22k").model
        vpt = build_vpt_deep(swin, 10)
        logits = vpt(torch.empty(2, 3, 224, 224))
    assert logits.shape == (2, 21841)
    assert [tuple(p.shape) for p in vpt.prompts] == [(2, 10, 128), (2, 10, 256), (18, 10, 512), (2, 10, 1024)]
    assert sum(p.numel() for p in vpt.prompts) == 10 * (2 * 128 + 2 * 256 + 18 * 512 + 2 * 1024)


@pytest.mark.slow
def test_swin_b_zero_tokens_equals_timm_at_224_px() -> None:
    """Real widths, 7x7 windows, 56x56 patches and shift masks: 0 tokens leave the logits unchanged."""
    torch.manual_seed(0)
    swin = load_classifier("swin_base_patch4_window7_224").model
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        reference = swin(x)
        torch.testing.assert_close(VPTDeepSwin(swin, 0)(x), reference, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(VPTDeepSwin(swin, 2)(x), reference)
