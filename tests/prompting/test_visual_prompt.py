"""Padding prompt, VPT-deep, frozen-backbone training and the VP data (seed 000 ch. 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from madapt.backbones.classifier import freeze, load_classifier
from madapt.data import vp
from madapt.errors import ConfigError, DataError
from madapt.labelmap import OTLM
from madapt.peft import PaddingPrompt, PlainInput, VPTDeep, trainable_names

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("space", ["normalized", "pixel"])
def test_centre_is_the_resized_normalised_image_and_border_is_the_prompt(space: str) -> None:
    torch.manual_seed(0)
    prompt = PaddingPrompt((32, 32), MEAN, STD, pad=5, space=space)
    with torch.no_grad():
        prompt.prompt.normal_()
    x = torch.rand(2, 3, 20, 20)
    out = prompt(x)
    assert out.shape == (2, 3, 32, 32)
    inner = F.interpolate(x, size=(22, 22), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(out[:, :, 5:27, 5:27], _normalise(inner))
    border = prompt.mask.bool().expand_as(out)
    expected = prompt.prompt if space == "normalized" else _normalise(torch.sigmoid(prompt.prompt))
    torch.testing.assert_close(out[border], expected.expand_as(out)[border])
    assert int(prompt.mask.sum()) == 32 * 32 - 22 * 22


def test_same_size_input_is_not_resampled_and_plain_input_fills_the_canvas() -> None:
    x = torch.rand(1, 3, 24, 24)
    out = PaddingPrompt((32, 32), MEAN, STD, pad=4)(x)
    torch.testing.assert_close(out[:, :, 4:28, 4:28], _normalise(x))
    plain = PlainInput((32, 32), MEAN, STD)(torch.rand(3, 3, 16, 16))
    assert plain.shape == (3, 3, 32, 32)


def test_bad_pad_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="prompt.pad"):
        PaddingPrompt((32, 32), MEAN, STD, pad=16)


def test_only_the_prompt_trains_and_the_backbone_stays_bit_identical() -> None:
    torch.manual_seed(0)
    backbone = load_classifier("madapt-tiny-resnet50")  # has BatchNorm: running stats must not move
    model = freeze(backbone.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompt = PaddingPrompt(backbone.input_size[1:], backbone.mean, backbone.std, pad=4)
    assert trainable_names(prompt) == ["prompt"]
    x, y = torch.rand(16, 3, 24, 24), torch.arange(16) % 4
    with torch.no_grad():
        probs = torch.softmax(model(prompt(x)), 1)
    mapper = OTLM().fit(probs, y, n_target=4)
    opt = torch.optim.SGD(prompt.parameters(), lr=10.0, momentum=0.9)
    start = prompt.prompt.detach().clone()
    for _ in range(3):
        logits = model(prompt(x))
        mapped = mapper.transform(logits)
        assert mapped.shape == (16, 4)
        torch.testing.assert_close(mapped, logits[:, torch.as_tensor(mapper.mapping_)])  # target order
        loss = F.cross_entropy(mapped, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(prompt.prompt, start)
    assert float(prompt.prompt.detach()[prompt.mask.bool().expand_as(prompt.prompt)].abs().sum()) > 0
    # the centre of the prompt parameter is never used, so it receives no gradient
    assert torch.all(prompt.prompt[..., 4:28, 4:28] == 0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_vpt_deep_zero_tokens_equals_the_frozen_model_and_only_prompts_train() -> None:
    torch.manual_seed(0)
    vit = load_classifier("madapt-tiny-vit").model
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        reference = vit(x)
        torch.testing.assert_close(VPTDeep(vit, 0)(x), reference)
    vpt = VPTDeep(vit, 4)
    assert vpt.prompts.shape == (len(vit.blocks), 4, vit.embed_dim)
    assert trainable_names(vpt) == ["prompts"]
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    out = vpt(x)
    assert out.shape == (3, vit.num_classes)
    assert not torch.allclose(out, reference)  # the tokens do change the prediction
    start = vpt.prompts.detach().clone()
    opt = torch.optim.SGD([vpt.prompts], lr=1.0)
    vpt.train()
    assert not vpt.vit.training
    F.cross_entropy(vpt(x), torch.tensor([0, 1, 2])).backward()
    opt.step()
    assert not torch.equal(vpt.prompts, start)
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())


def test_vpt_deep_rejects_a_cnn() -> None:
    with pytest.raises(ConfigError, match="VisionTransformer"):
        VPTDeep(load_classifier("madapt-tiny-resnet50").model, 2)


def test_micro_targets_are_deterministic_balanced_and_split() -> None:
    a_img, a_lab = vp.micro_split("digits", "train", 3, seed=1)
    b_img, b_lab = vp.micro_split("digits", "train", 3, seed=1)
    test_img, _ = vp.micro_split("digits", "test", 3, seed=1)
    assert a_img.shape == (30, 32, 32, 3) and a_img.dtype == np.uint8
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert np.bincount(a_lab).tolist() == [3] * 10
    assert not np.array_equal(a_img, test_img)
    for name, classes in vp.MICRO_TARGETS.items():
        images, labels = vp.micro_split(name, "test", 1)
        assert len(images) == len(classes) and sorted(labels.tolist()) == list(range(len(classes)))
    assert len(vp.SOURCE_CLASSES) == 116 and len(set(vp.SOURCE_CLASSES)) == 116


def test_subsample_keeps_the_fraction_and_at_least_one_per_class() -> None:
    labels = np.repeat(np.arange(5), [100, 50, 10, 3, 1])
    tenth = vp.subsample_per_class(labels, 0.1, seed=0)
    assert np.bincount(labels[tenth]).tolist() == [10, 5, 1, 1, 1]
    tiny = vp.subsample_per_class(labels, 0.001, seed=0)
    assert np.bincount(labels[tiny]).tolist() == [1, 1, 1, 1, 1]
    assert np.array_equal(vp.subsample_per_class(labels, 1.0, 3), np.arange(len(labels)))
    assert not np.array_equal(vp.subsample_per_class(labels, 0.1, 0), vp.subsample_per_class(labels, 0.1, 1))


def test_image_folder_loader_reads_the_layout_and_names_it_when_missing(tmp_path) -> None:
    for split in ("train", "test"):
        for c, colour in enumerate(["red", "blue"]):
            folder = tmp_path / "toy" / split / colour
            folder.mkdir(parents=True)
            Image.new("RGB", (10, 7), (255 * (1 - c), 0, 255 * c)).save(folder / "a.png")
    data = vp.load_folder(tmp_path, "toy", 16)
    assert data.classnames == ["blue", "red"]
    x, y = data.train[0]
    assert x.shape == (3, 16, 16) and float(x.max()) <= 1.0 and y == 0
    assert data.train_labels.tolist() == [0, 1]
    with pytest.raises(DataError, match=r"train,test\}/<class>"):
        vp.load_folder(tmp_path, "missing", 16)
    with pytest.raises(DataError, match="does not exist"):
        vp.load_folder(tmp_path / "nowhere", "toy", 16)


def test_bundled_micro_source_classifies_its_source_world() -> None:
    from madapt.registry import get

    backbone = get("backbone", "micro-source")(None)
    assert backbone.num_classes == len(vp.SOURCE_CLASSES) == len(backbone.classnames)
    assert backbone.input_size == (3, 32, 32)
    data = vp.ImageArray(*vp.source_split("test", 1, seed=7))  # unseen seed: fresh images
    x, y = data.batch(torch.arange(len(data)))
    with torch.no_grad():
        pred = backbone.model(PlainInput((32, 32), backbone.mean, backbone.std)(x)).argmax(1)
    assert float((pred == y).float().mean()) > 0.6  # README: 89.7 % on held-out source images
