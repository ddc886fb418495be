"""Padding prompt, VPT-deep, frozen-backbone training and the VP data (seed 000 ch. 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from madapt.backbones.classifier import freeze, load_classifier
from madapt.data import vp
from madapt.errors import ConfigError, DataError
from madapt.labelmap import OTLM
from madapt.peft import ExpansivePrompt, PadPrompter, PlainInput, VPTDeep, trainable_names

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_pad_prompter_frame_geometry_and_trainable_count_are_bahngs() -> None:
    """Bahng et al. (prompt_size 30, image_size 224): four randn pads, 2*3*30*224 + 2*3*164*30 values."""
    torch.manual_seed(0)
    prompt = PadPrompter((224, 224), MEAN, STD, pad=30)
    shapes = {n: tuple(p.shape) for n, p in prompt.named_parameters()}
    assert shapes == {
        "pad_up": (1, 3, 30, 224),
        "pad_down": (1, 3, 30, 224),
        "pad_left": (1, 3, 164, 30),
        "pad_right": (1, 3, 164, 30),
    }
    assert prompt.trained_numel() == 69_840 == 3 * (224 * 224 - 164 * 164)
    assert 0.9 < float(prompt.pad_up.detach().std()) < 1.1  # randn, not zeros
    x = torch.rand(2, 3, 224, 224)
    out = prompt(x)
    frame = torch.zeros(1, 3, 224, 224)
    frame[..., :30, :], frame[..., -30:, :] = prompt.pad_up.detach(), prompt.pad_down.detach()
    frame[..., 30:-30, :30], frame[..., 30:-30, -30:] = prompt.pad_left.detach(), prompt.pad_right.detach()
    torch.testing.assert_close(out, _normalise(x) + frame)  # added over the full, unshrunk image
    assert torch.equal(out[..., 30:-30, 30:-30], _normalise(x)[..., 30:-30, 30:-30])


def ilmvp_expansive(x: torch.Tensor, program: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """ILM-VP's ExpansiveVisualPrompt.forward + transforms.Normalize, written as their code does it."""
    l_pad, r_pad = int((out_size - in_size + 1) / 2), int((out_size - in_size) / 2)
    mask = torch.Tensor(np.repeat(np.expand_dims(np.zeros((in_size, in_size)), 0), repeats=3, axis=0))
    mask = F.pad(mask, (l_pad, r_pad, l_pad, r_pad), value=1)
    x = F.pad(x, (l_pad, r_pad, l_pad, r_pad), value=0) + torch.sigmoid(program) * mask
    return transforms.Normalize(MEAN, STD)(x)


@pytest.mark.parametrize("in_size", [32, 128, 31])
def test_expansive_prompt_is_bit_identical_to_ilmvp(in_size: int) -> None:
    prompt = ExpansivePrompt((in_size, in_size), (224, 224), MEAN, STD)
    assert torch.equal(prompt.program, torch.zeros(3, 224, 224))  # ILM-VP's init="zero"
    with torch.no_grad():
        prompt.program.normal_()
    x = torch.rand(3, 3, in_size, in_size)
    assert torch.equal(prompt(x), ilmvp_expansive(x, prompt.program.detach(), in_size, 224))
    assert prompt.trained_numel() == 3 * (224 * 224 - in_size * in_size)  # the frame, not 3 x 224 x 224
    prompt(x).sum().backward()
    inner = prompt.mask == 0
    assert torch.all(prompt.program.grad[inner] == 0) and torch.all(prompt.program.grad[~inner] != 0)


def test_expansive_prompt_rejects_an_image_as_large_as_the_input() -> None:
    with pytest.raises(ConfigError, match="prompt.image_size"):
        ExpansivePrompt((224, 224), (224, 224), MEAN, STD)


def test_bad_pad_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="prompt.pad"):
        PadPrompter((32, 32), MEAN, STD, pad=16)


def test_data_transforms_do_one_resize_as_each_recipe() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    bahng = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    assert torch.equal(vp.image_transform(224, center_crop=True)(image), bahng(image))
    native = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    assert torch.equal(vp.image_transform(32, center_crop=False)(native), transforms.ToTensor()(native))
    ilmvp = transforms.Compose([transforms.Resize((128, 128)), transforms.ToTensor()])
    assert torch.equal(vp.image_transform(128, center_crop=False)(image), ilmvp(image))


def test_only_the_prompt_trains_and_the_backbone_stays_bit_identical() -> None:
    torch.manual_seed(0)
    backbone = load_classifier("madapt-tiny-resnet50")  # has BatchNorm: running stats must not move
    model = freeze(backbone.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompt = PadPrompter(backbone.input_size[1:], backbone.mean, backbone.std, pad=4)
    assert trainable_names(prompt) == ["pad_up", "pad_down", "pad_left", "pad_right"]
    x, y = torch.rand(16, 3, 32, 32), torch.arange(16) % 4
    with torch.no_grad():
        probs = torch.softmax(model(prompt(x)), 1)
    mapper = OTLM().fit(probs, y, n_target=4)
    opt = torch.optim.SGD(prompt.parameters(), lr=10.0, momentum=0.9)
    start = [p.detach().clone() for p in prompt.parameters()]
    for _ in range(3):
        logits = model(prompt(x))
        mapped = mapper.transform(logits)
        assert mapped.shape == (16, 4)
        torch.testing.assert_close(mapped, logits[:, torch.as_tensor(mapper.mapping_)])  # target order
        loss = F.cross_entropy(mapped, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # (this tiny ResNet's strided 1x1 shortcuts never read the last rows / columns of a 32 px input,
    # so only some pads receive a gradient here)
    assert any(not torch.equal(p, s) for p, s in zip(prompt.parameters(), start))
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
    val_img, val_lab = vp.micro_split("digits", "val", 3, seed=1)  # its own stream: new images
    assert np.bincount(val_lab).tolist() == [3] * 10 and not np.array_equal(val_img, a_img)
    assert (
        vp.load_micro("digits", 3, 2, seed=1).val is None
        and len(vp.load_micro("digits", 3, 2, 1, 2).val) == 20
    )
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
    data = vp.load_folder(tmp_path, "toy", vp.image_transform(16, center_crop=False))
    assert data.classnames == ["blue", "red"]
    x, y = data.train[0]
    assert x.shape == (3, 16, 16) and float(x.max()) <= 1.0 and y == 0
    assert data.train_labels.tolist() == [0, 1]
    with pytest.raises(DataError, match=r"train,test\}/<class>"):
        vp.load_folder(tmp_path, "missing", vp.image_transform(16, center_crop=False))
    with pytest.raises(DataError, match="does not exist"):
        vp.load_folder(tmp_path / "nowhere", "toy", vp.image_transform(16, center_crop=False))


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


def test_holdout_is_stratified_fixed_and_disjoint() -> None:
    """Table 6.2's CIFAR split in miniature: 100 images of 10 classes -> 80 train + 20 validation."""
    data = vp.load_micro("digits", 10, 1, seed=0)
    held = vp.holdout(data, 20, seed=0)
    assert np.bincount(held.val.targets).tolist() == [2] * 10 and len(held.train) == 80
    assert not set(held.train.indices) & set(held.val.indices)
    assert vp.holdout(data, 20, seed=0).val.indices == held.val.indices
    x, y = held.val[0]
    assert torch.equal(x, data.train[held.val.indices[0]][0]) and y == data.train.targets[held.val.indices[0]]
