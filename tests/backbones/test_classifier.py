"""timm classifiers: tiny variants, the valid 21,843-way in21k head, local weights, freezing."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.convnext import ConvNeXt
from timm.models.resnet import Bottleneck, ResNet
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from madapt import registry
from madapt.backbones.classifier import ClassifierBackbone, freeze, load_classifier
from madapt.errors import UnknownNameError, WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TINY = {
    "madapt-tiny-vit-in21k": (VisionTransformer, 21843, (0.5, 0.5, 0.5)),
    "madapt-tiny-vit": (VisionTransformer, 1000, (0.5, 0.5, 0.5)),
    "madapt-tiny-swin": (SwinTransformer, 1000, IMAGENET_MEAN),
    "madapt-tiny-resnet50": (ResNet, 1000, IMAGENET_MEAN),
    "madapt-tiny-convnext": (ConvNeXt, 1000, IMAGENET_MEAN),
}


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_variants_forward(name):
    cls, n_classes, mean = TINY[name]
    torch.manual_seed(0)
    clf = load_classifier(name)
    assert type(clf.model) is cls
    assert clf.input_size == (3, 32, 32) and clf.data_config["input_size"] == (3, 32, 32)
    assert clf.num_classes == n_classes and clf.mean == pytest.approx(mean)
    with torch.no_grad():
        out = clf.model(torch.randn(2, *clf.input_size))
    assert out.shape == (2, n_classes) and torch.isfinite(out).all()
    assert not clf.model.training


def test_tiny_resnet_uses_resnet50_blocks():
    clf = load_classifier("madapt-tiny-resnet50")
    assert type(clf.model.layer1[0]) is Bottleneck
    assert clf.model.fc.in_features == 64 * Bottleneck.expansion


@pytest.mark.parametrize(
    "name, cls, n_classes, width, mean, side",
    [
        ("vit_base_patch16_224.augreg_in21k", VisionTransformer, 21843, 768, (0.5, 0.5, 0.5), 224),
        ("vit_base_patch16_224.augreg_in1k", VisionTransformer, 1000, 768, (0.5, 0.5, 0.5), 224),
        ("vit_large_patch16_224", VisionTransformer, 1000, 1024, (0.5, 0.5, 0.5), 224),
        ("swin_base_patch4_window7_224", SwinTransformer, 1000, 1024, IMAGENET_MEAN, 224),
        ("swin_base_patch4_window7_224.ms_in22k", SwinTransformer, 21841, 1024, IMAGENET_MEAN, 224),
        # trained at 176 px, evaluated at 224: the eval size is the one a frozen source model sees
        ("resnet50", ResNet, 1000, 2048, IMAGENET_MEAN, 224),
        ("resnet50.tv2_in1k", ResNet, 1000, 2048, IMAGENET_MEAN, 224),
        ("convnext_base.fb_in22k", ConvNeXt, 21841, 1024, IMAGENET_MEAN, 224),
        # timm's default convnext_base tag (fb_in22k_ft_in1k) is evaluated at 288
        ("convnext_base", ConvNeXt, 1000, 1024, IMAGENET_MEAN, 288),
    ],
)
def test_real_size_heads_without_allocating(name, cls, n_classes, width, mean, side):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        clf = load_classifier(name)
    head = clf.model.get_classifier()
    assert type(clf.model) is cls
    assert clf.num_classes == n_classes and (head.out_features, head.in_features) == (n_classes, width)
    assert clf.input_size == (3, side, side) and clf.mean == pytest.approx(mean)


def test_in21k_head_is_valid_after_local_load(tmp_path):
    """The in21k preset keeps its 21,843 classes and loads a 21,843-way head from a file unchanged."""
    torch.manual_seed(1)
    src = load_classifier("madapt-tiny-vit-in21k")
    weights = _state(src.model)
    weights["head.weight"] = torch.randn(21843, 32)  # non-zero head (the old jx weights had it zeroed)
    save_file(weights, str(tmp_path / "in21k.safetensors"))
    loaded = load_classifier("madapt-tiny-vit-in21k", tmp_path / "in21k.safetensors")
    assert loaded.num_classes == 21843
    assert torch.equal(loaded.model.head.weight, weights["head.weight"])


def test_local_weights_round_trip(tmp_path):
    torch.manual_seed(2)
    src = load_classifier("madapt-tiny-convnext")
    weights = _state(src.model)
    save_file(weights, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": weights}, tmp_path / "w.pth")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = src.model(x)
    for file in ("w.safetensors", "w.pth"):
        torch.manual_seed(3)
        loaded = load_classifier("madapt-tiny-convnext", str(tmp_path / file))
        assert all(torch.equal(v, weights[k]) for k, v in loaded.model.state_dict().items())
        with torch.no_grad():
            assert torch.equal(loaded.model(x), expected)


def test_local_weights_never_download(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("download attempted")

    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", refuse)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", refuse)
    torch.manual_seed(4)
    weights = _state(load_classifier("madapt-tiny-vit").model)
    save_file(weights, str(tmp_path / "vit.safetensors"))
    loaded = load_classifier("madapt-tiny-vit", tmp_path / "vit.safetensors")
    assert torch.equal(loaded.model.pos_embed, weights["pos_embed"])


def test_bad_weights_give_one_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        load_classifier("madapt-tiny-vit", tmp_path / "missing.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"garbage" * 100)
    with pytest.raises(WeightsError, match="cannot be read"):
        load_classifier("madapt-tiny-vit", corrupt)
    save_file(_state(load_classifier("madapt-tiny-resnet50").model), str(tmp_path / "resnet.safetensors"))
    with pytest.raises(WeightsError, match="do not match the architecture") as err:
        load_classifier("madapt-tiny-convnext", tmp_path / "resnet.safetensors")
    assert "\n" not in err.value.one_line()


def test_a_head_of_another_size_is_never_dropped_silently(tmp_path, caplog):
    """timm drops a checkpoint's head when num_classes differs; label mapping needs that head."""
    torch.manual_seed(5)
    weights = _state(load_classifier("madapt-tiny-vit").model)  # 1000-way head
    file = tmp_path / "vit1k.safetensors"
    save_file(weights, str(file))
    with pytest.raises(WeightsError, match=r"vit1k.safetensors.*1000-way head but the model a 7-way") as err:
        load_classifier("madapt-tiny-vit", file, num_classes=7)
    assert "new_head=True" in err.value.one_line()
    caplog.set_level(logging.WARNING)
    fresh = load_classifier("madapt-tiny-vit", file, num_classes=7, new_head=True)
    assert fresh.num_classes == 7 and fresh.model.head.weight.shape == (7, 32)
    body = {k: v for k, v in fresh.model.state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(v, weights[k]) for k, v in body.items())
    lines = [r.getMessage() for r in caplog.records if "head" in r.getMessage()]
    assert len(lines) == 1 and "1000-way head; the 7-way head is new" in lines[0] and str(file) in lines[0]


def test_a_k_way_checkpoint_head_loads_with_num_classes_k(tmp_path):
    torch.manual_seed(6)
    weights = _state(load_classifier("madapt-tiny-swin", num_classes=5).model)
    save_file(weights, str(tmp_path / "swin5.safetensors"))
    loaded = load_classifier("madapt-tiny-swin", tmp_path / "swin5.safetensors", num_classes=5)
    assert loaded.num_classes == 5
    assert all(torch.equal(v, weights[k]) for k, v in loaded.model.state_dict().items())
    with pytest.raises(WeightsError, match="5-way head but the model a 1000-way"):  # the preset's default
        load_classifier("madapt-tiny-swin", tmp_path / "swin5.safetensors")


def test_other_timm_names_with_tags_resolve():
    with torch.device("meta"):
        clf = load_classifier("vit_base_patch16_224.augreg2_in21k_ft_in1k")
    assert clf.num_classes == 1000 and clf.model.embed_dim == 768


def test_unknown_names():
    with pytest.raises(UnknownNameError, match="did you mean 'resnet50'"):
        load_classifier("resnet5O")
    with pytest.raises(UnknownNameError, match="vit_base_patch16_224.nope"):
        load_classifier("vit_base_patch16_224.nope")


def test_timm_kwargs_override_the_preset():
    clf = load_classifier("madapt-tiny-vit", num_classes=7, img_size=48)
    assert clf.num_classes == 7 and clf.input_size == (3, 48, 48)
    assert clf.model(torch.randn(1, 3, 48, 48)).shape == (1, 7)


def test_freeze_stops_all_parameter_updates():
    clf = load_classifier("madapt-tiny-resnet50")
    clf.model.train()
    model = freeze(clf.model)
    assert model is clf.model and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    prompt = torch.zeros(1, 3, 32, 32, requires_grad=True)  # the only trainable thing in visual prompting
    running_mean = model.bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32) + prompt).sum().backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model.bn1.running_mean, running_mean)


def test_registered_names_build():
    names = set(registry.names("backbone"))
    assert {"vit_base_patch16_224.augreg_in21k", "resnet50", "madapt-tiny-vit"} <= names
    built = registry.build("backbone", "madapt-tiny-swin")
    assert isinstance(built, ClassifierBackbone) and built.num_classes == 1000
