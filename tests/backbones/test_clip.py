"""CLIP over open_clip: tiny architecture, tokenizer, encoders, zero-shot protocol, offline weights."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms import CenterCrop, InterpolationMode, RandomResizedCrop, Resize

from madapt import registry
from madapt.backbones.clip import ClipBackbone, clip_logits, fill_template, load_clip, zero_shot_head
from madapt.errors import ConfigError, UnknownNameError, WeightsError

TINY = "madapt-tiny-ViT-B-16"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def tiny() -> ClipBackbone:
    torch.manual_seed(0)
    return load_clip(TINY)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_arch_uses_the_vit_b16_classes(tiny):
    assert TINY in open_clip.list_models()
    assert type(tiny.model) is open_clip.CLIP
    assert type(tiny.model.visual) is open_clip.transformer.VisionTransformer
    assert tiny.model.visual.conv1.weight.shape == (64, 3, 8, 8)
    assert tiny.model.token_embedding.weight.shape == (49408, 32)
    assert tiny.image_size == 32
    assert tiny.mean == pytest.approx(CLIP_MEAN) and tiny.std == pytest.approx(CLIP_STD)
    assert not tiny.model.training


def test_tokenizer_is_clip_bpe(tiny):
    tokens = tiny.tokenize(["a photo of a cat.", "dog"])
    assert tokens.dtype == torch.int64 and tokens.shape == (2, 77)
    assert tokens[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 269, 49407]
    assert tokens[0, 8:].eq(0).all()
    assert torch.equal(tiny.tokenize("dog"), tokens[1:])


def test_encoders_normalise(tiny):
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        img = tiny.encode_image(images)
        raw = tiny.encode_image(images, normalize=False)
        txt = tiny.encode_text(tiny.tokenize(["a red circle", "two squares"]))
    assert img.shape == (3, 32) and txt.shape == (2, 32)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3), atol=1e-3)
    assert torch.allclose(F.normalize(raw, dim=-1), img, atol=1e-6)


def test_random_init_follows_torch_seed():
    torch.manual_seed(3)
    a = _state(load_clip(TINY).model)
    torch.manual_seed(3)
    b = _state(load_clip(TINY).model)
    torch.manual_seed(4)
    c = _state(load_clip(TINY).model)
    assert _same(a, b)
    assert not torch.equal(a["visual.conv1.weight"], c["visual.conv1.weight"])


def test_preprocessing_matches_clip(tiny):
    train, val = tiny.preprocess_train.transforms, tiny.preprocess_val.transforms
    crop = next(t for t in train if isinstance(t, RandomResizedCrop))
    assert crop.scale == (0.9, 1.0) and crop.size == (32, 32)
    assert crop.interpolation == InterpolationMode.BICUBIC
    resize = next(t for t in val if isinstance(t, Resize))
    assert resize.interpolation == InterpolationMode.BICUBIC and resize.size == 32
    assert any(isinstance(t, CenterCrop) and t.size == (32, 32) for t in val)
    colour = (255, 0, 128)
    image = Image.new("RGB", (64, 48), colour)
    for out in (tiny.preprocess_val(image), tiny.preprocess_train(image)):
        assert out.shape == (3, 32, 32)
        for ch in range(3):
            expected = (colour[ch] / 255 - CLIP_MEAN[ch]) / CLIP_STD[ch]
            assert out[ch].mean().item() == pytest.approx(expected, abs=1e-2)


def test_zero_shot_head_follows_zscl(tiny):
    classes = ["cat", "dog", "red circle"]
    templates = ["a photo of a {}.", "a drawing of a {c}.", lambda c: f"itap of a {c}"]
    with torch.no_grad():
        head = zero_shot_head(tiny, classes, templates)
        first = zero_shot_head(tiny, classes, templates, ensemble=False)
        small_batches = zero_shot_head(tiny, classes, templates, batch_size=2)
        rows = []
        for c in classes:
            filled = [f"a photo of a {c}.", f"a drawing of a {c}.", f"itap of a {c}"]
            emb = tiny.encode_text(tiny.tokenize(filled))
            rows.append(F.normalize(emb.mean(dim=0), dim=-1))
        only_first = tiny.encode_text(tiny.tokenize([f"a photo of a {c}." for c in classes]))
    assert head.shape == (3, 32)
    assert torch.allclose(head, torch.stack(rows), atol=1e-6)
    assert torch.allclose(first, only_first, atol=1e-6)
    assert torch.allclose(small_batches, head, atol=1e-6)
    assert not torch.allclose(first, head, atol=1e-3)
    assert torch.allclose(head.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_zero_shot_head_carries_gradients_for_training(tiny):
    head = zero_shot_head(tiny, ["cat", "dog"], ["a photo of a {}."], ensemble=False)
    head.sum().backward()
    grad = tiny.model.token_embedding.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    tiny.model.zero_grad(set_to_none=True)


def test_templates_need_a_placeholder():
    assert fill_template("a photo of a {}.", "cat") == "a photo of a cat."
    assert fill_template("a photo of a {c}.", "cat") == "a photo of a cat."
    with pytest.raises(ConfigError, match="placeholder"):
        fill_template("a photo", "cat")


def test_clip_logits_scale_100():
    head = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    feats = F.normalize(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), dim=-1)
    logits = clip_logits(feats, head)
    assert torch.allclose(logits, torch.tensor([[0.0, 80.0], [100.0, 60.0]]))
    assert logits.argmax(dim=1).tolist() == [1, 0]


def test_backbone_constructed_directly_uses_its_tokenizer(tiny):
    def tokenizer(texts):
        return torch.full((len(texts), 77), 7, dtype=torch.long)

    micro = ClipBackbone(
        model=tiny.model,
        tokenizer=tokenizer,
        preprocess_train=tiny.preprocess_train,
        preprocess_val=tiny.preprocess_val,
        image_size=32,
        mean=CLIP_MEAN,
        std=CLIP_STD,
    )
    assert micro.tokenize(["x", "y"]).eq(7).all()


def test_local_checkpoints_round_trip(tmp_path, caplog):
    torch.manual_seed(11)
    source = load_clip(TINY)
    saved = _state(source.model)
    files = {"st": tmp_path / "w.safetensors", "pt": tmp_path / "w.pt", "wrapped": tmp_path / "w.bin"}
    save_file(saved, str(files["st"]))
    torch.save(saved, files["pt"])
    torch.save({"state_dict": {"module." + k: v for k, v in saved.items()}}, files["wrapped"])
    tokens = source.tokenize(["a photo of a cat."])
    with torch.no_grad():
        expected = source.encode_text(tokens)
    # open_clip's "initialized randomly" notice is noise for a random init that was asked for
    assert not any("initialized randomly" in r.getMessage() for r in caplog.records)
    caplog.clear()
    for path in files.values():
        torch.manual_seed(12)  # a different random init, which the file must overwrite
        loaded = load_clip(TINY, path)
        assert _same(_state(loaded.model), saved)
        with torch.no_grad():
            assert torch.equal(loaded.encode_text(tokens), expected)
    assert not any("initialized randomly" in r.getMessage() for r in caplog.records)  # not after a load


def test_bad_weights_give_one_weights_error(tmp_path):
    torch.manual_seed(0)
    good = _state(load_clip(TINY).model)
    with pytest.raises(WeightsError, match="no such file"):
        load_clip(TINY, str(tmp_path / "missing.safetensors"))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01 not a safetensors file" * 10)
    with pytest.raises(WeightsError, match="cannot be read"):
        load_clip(TINY, str(corrupt))
    truncated = tmp_path / "truncated.pt"
    torch.save(good, truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="cannot be read"):
        load_clip(TINY, str(truncated))
    pickled = tmp_path / "pickled.pt"
    torch.save({"visual.proj": Path("not a tensor")}, pickled)  # weights_only must refuse this
    with pytest.raises(WeightsError, match="cannot be read"):
        load_clip(TINY, str(pickled))
    fewer = dict(good)
    del fewer["ln_final.weight"]
    save_file(fewer, str(tmp_path / "fewer.safetensors"))
    with pytest.raises(WeightsError, match="1 missing keys .e.g. ln_final.weight") as err:
        load_clip(TINY, str(tmp_path / "fewer.safetensors"))
    assert "\n" not in err.value.one_line()
    reshaped = dict(good, text_projection=torch.zeros(32, 16))
    save_file(reshaped, str(tmp_path / "reshaped.safetensors"))
    with pytest.raises(WeightsError, match=r"shape mismatches .e.g. text_projection: file \(32, 16\)"):
        load_clip(TINY, str(tmp_path / "reshaped.safetensors"))


def test_unknown_arch_and_precision():
    with pytest.raises(UnknownNameError, match="did you mean 'madapt-tiny-ViT-B-16'"):
        load_clip("madapt-tiny-ViT-B16")
    with pytest.raises(ConfigError, match="precision"):
        load_clip(TINY, precision="fp8")
    half = load_clip(TINY, precision="pure_bf16")
    assert half.model.visual.conv1.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert half.encode_image(torch.randn(2, 3, 32, 32)).dtype == torch.bfloat16


def _refuse_network(*args, **kwargs):
    raise AssertionError("network access attempted")


def test_uncached_tag_raises_without_network(tmp_path, monkeypatch):
    """A real ViT-B-16 tag with an empty cache and sockets disabled: one WeightsError, no download."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", _refuse_network)
    monkeypatch.setattr(socket, "create_connection", _refuse_network)
    with pytest.raises(WeightsError) as err:
        load_clip("ViT-B-16", "openai", cache_dir=str(tmp_path))
    line = err.value.one_line()
    assert line.startswith("pretrained 'openai' of ViT-B-16") and "pass pretrained=/path/to/" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_import_and_uncached_tag_in_fresh_process(tmp_path):
    """Importing the module and asking for a tag never opens a socket (checked in a fresh interpreter)."""
    code = (
        "import socket\n"
        "def refuse(*a, **k):\n    raise AssertionError('network access attempted')\n"
        "socket.socket.connect = refuse\nsocket.create_connection = refuse\n"
        "import madapt.backbones.clip as c\n"
        "from madapt.errors import WeightsError\n"
        "try:\n"
        f"    c.load_clip('ViT-B-16', 'laion2b_s34b_b88k', cache_dir={str(tmp_path)!r})\n"
        "except WeightsError as e:\n    print('ERR', e.one_line())\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("ERR pretrained 'laion2b_s34b_b88k' of ViT-B-16")


def test_cached_tag_loads_from_cache(tmp_path, monkeypatch):
    """A tag resolved like open_clip would download it, read from an HF-layout cache instead."""
    torch.manual_seed(5)
    saved = _state(load_clip(TINY).model)
    snapshot = tmp_path / "models--madapt--tiny-test" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "models--madapt--tiny-test" / "refs").mkdir()
    (tmp_path / "models--madapt--tiny-test" / "refs" / "main").write_text("a" * 40)
    save_file(saved, str(snapshot / "open_clip_model.safetensors"))
    save_file(saved, str(tmp_path / "tiny-url.safetensors"))
    tags = {
        "hub_tag": dict(hf_hub="madapt/tiny-test/", quick_gelu=True, mean=(0.5,) * 3, std=(0.5,) * 3),
        "url_tag": dict(url="https://example.invalid/weights/tiny-url.safetensors"),
    }
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY, tags)
    torch.manual_seed(6)
    hub = load_clip(TINY, "hub_tag", cache_dir=str(tmp_path))
    assert _same(_state(hub.model), saved)
    assert hub.mean == (0.5, 0.5, 0.5) and hub.std == (0.5, 0.5, 0.5)
    assert type(hub.model.visual.transformer.resblocks[0].mlp.gelu) is open_clip.transformer.QuickGELU
    url = load_clip(TINY, "url_tag", cache_dir=str(tmp_path))
    assert _same(_state(url.model), saved)
    assert url.mean == pytest.approx(CLIP_MEAN)
    assert type(url.model.visual.transformer.resblocks[0].mlp.gelu) is torch.nn.GELU


def test_registered_backbone_names():
    names = registry.names("backbone")
    assert {"ViT-B-16", "ViT-B-16-quickgelu", TINY} <= set(names)
    torch.manual_seed(0)
    built = registry.build("backbone", TINY, pretrained=None)
    assert isinstance(built, ClipBackbone) and built.image_size == 32


@pytest.mark.slow
def test_real_vit_b16_random_init_forward():
    torch.manual_seed(0)
    clip = load_clip("ViT-B-16")
    assert clip.image_size == 224
    assert clip.model.visual.conv1.weight.shape == (768, 3, 16, 16)
    assert len(clip.model.visual.transformer.resblocks) == 12 and len(clip.model.transformer.resblocks) == 12
    with torch.no_grad():
        img = clip.encode_image(torch.randn(1, 3, 224, 224))
        txt = clip.encode_text(clip.tokenize(["a photo of a cat.", "a photo of a dog."]))
    assert img.shape == (1, 512) and txt.shape == (2, 512)
    assert torch.allclose(clip_logits(img, txt), 100 * img @ txt.T)
