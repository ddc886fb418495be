"""The micro tokenizer and the bundled micro CLIP asset (never retrained here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.model import CLIP
from PIL import Image
from safetensors.torch import load_file, save_file

from madapt import registry
from madapt.backbones.clip import ClipBackbone, clip_logits, zero_shot_head
from madapt.backbones.micro import (
    PAD_ID,
    UNK_ID,
    MicroTokenizer,
    bundled_dir,
    images_to_tensor,
    load_micro_clip,
)
from madapt.data.synthetic import DOMAINS, make_split, vocabulary_words
from madapt.errors import WeightsError

# scripts/calibrate_micro.py measured 61.7 % zero-shot on the 1,000-image colour test split of the
# shipped weights (assets/micro_clip/README.md); chance is 10 %. The floor leaves room for the noise
# of 200 images (about +-3.5 points) and fails for an untrained or broken model.
ZERO_SHOT_DOMAIN = "colour"
ZERO_SHOT_FLOOR = 10.0 + 30.0


@pytest.fixture(scope="module")
def micro() -> ClipBackbone:
    torch.set_num_threads(1)
    return load_micro_clip()


def test_tokenizer_layout_and_eot_at_argmax() -> None:
    tok = MicroTokenizer(["a", "red", "circle", "letter"], context_length=8)
    ids = tok(["a red circle", "A RED Circle!", "a zebra", "a red circle a red circle a red"])
    assert ids.shape == (4, 8) and ids.dtype == torch.long
    assert torch.equal(ids[0], ids[1])  # lower-cased, punctuation dropped
    assert ids[0].tolist() == [tok.sot_id, 2, 3, 4, tok.eot_id, PAD_ID, PAD_ID, PAD_ID]
    assert ids[2, 2].item() == UNK_ID
    assert tok.eot_id == tok.vocab_size - 1
    # open_clip pools text features at argmax(token id): that must be <eot>, also when truncated
    for row in ids:
        assert row[row.argmax()].item() == tok.eot_id
    assert ids[3, -1].item() == tok.eot_id


def test_shipped_vocabulary_covers_every_world_word() -> None:
    vocab = json.loads((bundled_dir() / "vocab.json").read_text())
    assert vocab["words"] == vocabulary_words()
    assert vocab["special_ids"]["eot"] == len(vocab["words"]) + 3
    tok = MicroTokenizer.from_json(vocab)
    for spec in DOMAINS.values():
        texts = [t.format(c) for t in spec.templates for c in spec.classnames]
        assert (tok(texts) != UNK_ID).all()


def test_bundled_weights_match_the_open_clip_class_strictly(micro: ClipBackbone) -> None:
    assert isinstance(micro.model, CLIP)
    stored = load_file(str(bundled_dir() / "weights.safetensors"))
    own = micro.model.state_dict()
    assert set(stored) == set(own)
    for key, value in stored.items():
        assert torch.equal(value.float(), own[key]), key
    n_params = sum(p.numel() for p in micro.model.parameters())
    assert 1e6 < n_params < 5e6
    assert (bundled_dir() / "weights.safetensors").stat().st_size < 20e6


def test_features_are_normalised_with_the_embedding_dim(micro: ClipBackbone) -> None:
    images, _ = make_split("shape", "test", 8, seed=0)
    with torch.no_grad():
        img = micro.encode_image(images_to_tensor(images, micro.mean, micro.std))
        txt = micro.encode_text(micro.tokenize(["a red circle", "the letter k"]))
    assert img.shape == (8, 128) and txt.shape == (2, 128)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(8))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))


def test_pil_preprocess_equals_the_batched_conversion(micro: ClipBackbone) -> None:
    images, _ = make_split("letter", "test", 2, seed=0)
    single = micro.preprocess_val(Image.fromarray(images[1]))
    torch.testing.assert_close(single, images_to_tensor(images, micro.mean, micro.std)[1])


def test_registered_backbone_loads_the_bundled_weights(micro: ClipBackbone) -> None:
    built = registry.build("backbone", "micro-clip")
    key = "visual.conv1.weight"
    assert torch.equal(built.model.state_dict()[key], micro.model.state_dict()[key])


def test_zero_shot_is_well_above_chance(micro: ClipBackbone) -> None:
    """Protects the shipped asset: a broken or retrained-badly model falls below the floor."""
    spec = DOMAINS[ZERO_SHOT_DOMAIN]
    images, labels = make_split(ZERO_SHOT_DOMAIN, "test", 200, seed=0)
    with torch.no_grad():
        head = zero_shot_head(micro, list(spec.classnames), list(spec.templates), ensemble=True)
        feats = micro.encode_image(images_to_tensor(images, micro.mean, micro.std))
        pred = clip_logits(feats, head).argmax(1).numpy()
    assert 100.0 * np.mean(pred == labels) > ZERO_SHOT_FLOOR


def test_bad_weights_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such file"):
        load_micro_clip(str(tmp_path / "missing.safetensors"))
    for name in ("config.json", "vocab.json"):
        shutil.copy(bundled_dir() / name, tmp_path / name)
    corrupt = tmp_path / "weights.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="cannot be read"):
        load_micro_clip(str(corrupt))
    state = load_file(str(bundled_dir() / "weights.safetensors"))
    state.pop("logit_scale")
    save_file(state, str(corrupt))
    with pytest.raises(WeightsError, match="logit_scale"):
        load_micro_clip(str(corrupt))
