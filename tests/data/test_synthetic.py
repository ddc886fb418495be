"""The procedural micro world: determinism, balance, captions and the MTIL-micro / CIL-micro specs."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest

from madapt import registry
from madapt.data import synthetic as syn
from madapt.errors import DataError, UnknownNameError

MTIL = ["colour", "count", "digit", "letter", "shape", "texture"]


def test_same_seed_same_images_and_different_seed_different_images() -> None:
    a_img, a_lab = syn.make_split("shape", "test", 24, seed=3)
    b_img, b_lab = syn.make_split("shape", "test", 24, seed=3)
    c_img, c_lab = syn.make_split("shape", "test", 24, seed=4)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == (24, 32, 32, 3) and a_img.dtype == np.uint8
    assert a_lab.dtype == np.int64


def test_pretraining_stream_is_deterministic() -> None:
    first = list(islice(syn.pretraining_batches(seed=1, batch_size=16), 2))
    again = list(islice(syn.pretraining_batches(seed=1, batch_size=16), 2))
    other = next(syn.pretraining_batches(seed=2, batch_size=16))
    for (xa, ca), (xb, cb) in zip(first, again):
        np.testing.assert_array_equal(xa, xb)
        assert ca == cb
    assert first[0][0].shape == (16, 32, 32, 3) and first[0][0].dtype == np.uint8
    assert not np.array_equal(first[0][0], other[0]) and first[0][1] != other[1]


def test_train_and_test_splits_differ() -> None:
    train, _ = syn.make_split("digit", "train", 20, seed=0)
    test, _ = syn.make_split("digit", "test", 20, seed=0)
    assert not any(np.array_equal(a, b) for a in train for b in test)


@pytest.mark.parametrize("name", sorted(syn.DOMAINS))
def test_every_domain_is_class_balanced_with_valid_labels(name: str) -> None:
    spec = syn.DOMAINS[name]
    images, labels = syn.make_split(name, "train", 2 * spec.n_classes, seed=0)
    assert len(images) == len(labels) == 2 * spec.n_classes
    assert labels.min() == 0 and labels.max() == spec.n_classes - 1
    assert np.all(np.bincount(labels, minlength=spec.n_classes) == 2)
    assert images.std() > 5  # not blank


def test_heldout_fraction_selects_the_style() -> None:
    # Held-out colours are dark or pastel: far from every pretraining colour (tested on 'colour').
    def dist_to_palette(fraction: float) -> float:
        images, labels = syn.make_split("colour", "test", 60, seed=0, heldout_fraction=fraction)
        palette = np.array(list(syn.COLOURS.values()), np.float32)
        # the most saturated-looking pixel of each image is the object's fill colour
        flat = images.reshape(len(images), -1, 3).astype(np.float32)
        spread = flat.max(-1) - flat.min(-1) + flat.mean(-1) * 0.01
        fill = flat[np.arange(len(flat)), spread.argmax(1)]
        return float(np.abs(fill - palette[labels]).sum(1).mean())

    assert dist_to_palette(1.0) > dist_to_palette(0.0) + 40


def test_mtil_micro_domains_and_orders() -> None:
    specs = syn.micro_domains()
    assert set(MTIL) <= set(specs)
    for order in syn.MTIL_MICRO_ORDERS.values():
        assert sorted(order) == MTIL
    assert syn.MTIL_MICRO_ORDERS["order1"] != syn.MTIL_MICRO_ORDERS["order2"]
    for spec in specs.values():
        assert len(spec.templates) >= 3 and all("{}" in t for t in spec.templates)
        assert len(set(spec.classnames)) == spec.n_classes >= 4
        assert 0.0 <= spec.heldout_fraction <= 1.0


def test_cil_micro_steps_partition_the_classes() -> None:
    assert syn.DOMAINS[syn.CIL_MICRO].n_classes >= 20
    for n_steps in (2, 4, 5, 10):
        steps = syn.cil_micro_steps(n_steps)
        assert len(steps) == n_steps and len({len(s) for s in steps}) == 1
        assert sorted(c for s in steps for c in s) == list(range(20))
    assert syn.cil_micro_steps(5) == syn.cil_micro_steps(5)
    assert syn.cil_micro_steps(5)[0] != list(range(4))  # a seeded class order, not 0..19
    with pytest.raises(DataError):
        syn.cil_micro_steps(3)


def test_bad_requests_raise_user_errors() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'shape'"):
        syn.make_split("shapes", "test", 10)
    with pytest.raises(DataError, match="split"):
        syn.make_split("shape", "val", 10)
    with pytest.raises(DataError):
        syn.make_split("shape", "test", 0)


def test_domains_are_registered_as_datasets() -> None:
    for name, spec in syn.DOMAINS.items():
        assert registry.build("dataset", f"micro/{name}") is spec


def test_every_caption_classname_and_template_word_is_in_the_vocabulary() -> None:
    vocab = set(syn.vocabulary_words())
    _, captions = next(syn.pretraining_batches(seed=0, batch_size=400))
    words = {w for c in captions for w in syn.tokenize_words(c)}
    for spec in syn.DOMAINS.values():
        words |= {w for t in spec.templates for c in spec.classnames for w in syn.tokenize_words(t.format(c))}
    assert words <= vocab
    assert len(vocab) < 150


def test_captions_mention_attributes_with_probability_between_half_and_most() -> None:
    _, captions = next(syn.pretraining_batches(seed=0, batch_size=800))
    colours = set(syn.COLOURS)
    shapes = set(syn.SHAPES) | set(syn.PLURALS.values())
    objects = [
        set(syn.tokenize_words(c))
        for c in captions
        if set(syn.tokenize_words(c)) & (shapes | {"object", "objects"})
    ]
    assert len(objects) > 200
    with_colour = np.mean([bool(ws & colours) for ws in objects])
    with_shape = np.mean([bool(ws & shapes) for ws in objects])
    assert 0.55 < with_colour < 0.85 and 0.65 < with_shape < 0.9
