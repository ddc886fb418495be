"""K shots per class per seed, drawn as Dassl's ``generate_fewshot_dataset`` draws them.

Dassl (``dassl/data/datasets/base_dataset.py``) groups a split by label in order of first
appearance (``split_dataset_by_label``, a ``defaultdict``) and, per label, takes
``random.sample(items, K)``, or ``random.choices(items, k=K)`` when the class has fewer than K items
(``repeat=True``, CoOp's default: duplicates). CoOp's datasets call it on train with K, then on val
with ``min(K, 4)`` (ImageNet: train only), after ``train.py``'s ``set_random_seed(cfg.SEED)``.

Relation to Dassl's python-random state: we draw with a private ``random.Random(seed)`` and make the
same calls in the same order on index lists of the same lengths. ``sample`` and ``choices`` consume
the generator according to the population's length only, and ``Random(seed)`` starts in the state
``random.seed(seed)`` sets, so the indices pick the items CoOp would pick *provided* its process
drew nothing from ``random`` between ``set_random_seed`` and the dataset (its ``train.py`` only
sets up the logger and prints the environment in between) and the split lists are in the same
order (true for the split files; ImageNet's listing order is filesystem-dependent in CoOp, sorted
here). The run in which CoOp first generated a missing split file drew its shuffles from the same
global state before sampling, so its shots are not reproduced; later runs read the file and are.
No global state is touched. CoOp's cached pkl files stay the authority
(`madapt.data.coop.cache.read_coop_cache`); the indices we sample are saved in the run folder.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence

from madapt.data.coop.readers import CoopSplit
from madapt.errors import ConfigError, DataError

VAL_SHOTS_MAX = 4  # CoOp: val = generate_fewshot_dataset(val, num_shots=min(num_shots, 4))


def dassl_fewshot(labels: Sequence[int], shots: int, rng: random.Random) -> list[int]:
    """Indices into ``labels``: ``shots`` per label, labels in first-appearance order (Dassl's draw)."""
    tracker: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        tracker.setdefault(label, []).append(i)
    chosen: list[int] = []
    for members in tracker.values():
        chosen += rng.sample(members, shots) if len(members) >= shots else rng.choices(members, k=shots)
    return chosen


def check_shots(shots: int) -> None:
    """`ConfigError` unless ``shots`` is a positive int (CoOp's NUM_SHOTS < 1, "all images", is not
    a few-shot run)."""
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ConfigError("shots", f"is {shots!r}", "a positive number of training images per class")


def shots_per_split(split: CoopSplit, shots: int) -> dict[str, int]:
    """Shots per class of each sampled split: train K, val min(K, 4); ImageNet has no val to sample."""
    check_shots(shots)
    return {"train": shots} if split.val is None else {"train": shots, "val": min(shots, VAL_SHOTS_MAX)}


def sample_indices(split: CoopSplit, shots: int, seed: int) -> dict[str, list[int]]:
    """``{"train": [...], "val": [...]}``: indices into ``split.train`` / ``split.val`` (see module)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("seed", f"is {seed!r}", "an integer (CoOp runs seeds 1, 2, 3)")
    rng = random.Random(seed)
    return {
        key: dassl_fewshot(getattr(split, key).labels, k, rng)
        for key, k in shots_per_split(split, shots).items()
    }


def check_indices(
    split: CoopSplit,
    shots: int,
    indices: Mapping[str, Sequence[int]],
    where: str,
) -> dict[str, list[int]]:
    """``indices`` as plain lists after checking they fit ``split`` and ``shots``: the expected
    keys, integers in range, exactly K (train) / min(K, 4) (val) per class. Stale indices (another
    shot count, another split file) are a one-line `DataError`, not a silent override."""
    wanted = shots_per_split(split, shots)
    if set(indices) != set(wanted):
        raise DataError(where, f"has keys {sorted(indices)}", f"exactly {sorted(wanted)} for '{split.name}'")
    out = {}
    for key, k in wanted.items():
        items = getattr(split, key)
        values = indices[key]
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(items) for i in values):
            raise DataError(
                f"{where}['{key}']",
                "holds a value that is not an index into the split",
                f"integers in 0..{len(items) - 1} ({split.source})",
            )
        counts = Counter(items.labels[i] for i in values)
        bad = next((c for c in sorted(set(items.labels)) if counts.get(c, 0) != k), None)
        if bad is not None:
            raise DataError(
                f"{where}['{key}']",
                f"has {counts.get(bad, 0)} image(s) of class {bad} '{split.classnames[bad]}'",
                f"{k} per class ({shots} shots)",
            )
        out[key] = list(values)
    return out
