"""The CoOp data protocol (issue 14 item 2): split files, official layouts, Dassl's few-shot draw,
indices round trip, CoOp's pickled caches read safely, `madapt data check coop`."""

from __future__ import annotations

import json
import os
import pickle
import random
from collections import Counter, defaultdict
from pathlib import Path

import coop_fixtures as cf
import pytest
import torch
from fixtures import EUROSAT_FOLDERS, color_of
from torchvision.transforms import ToTensor

from madapt.data import coop
from madapt.data.coop import COOP_DATASETS, check_coop, load_coop, read_coop_cache, read_split
from madapt.data.coop.specs import SPECS
from madapt.errors import ConfigError, DataError, UnknownNameError

TF = ToTensor()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """One data root holding a split file (EuroSAT) and the official layouts of 8 more datasets."""
    base = tmp_path_factory.mktemp("coop")
    cf.write_eurosat_split(base)
    cf.write_caltech_raw(base)
    cf.write_pets_raw(base)
    cf.write_aircraft(base)
    cf.write_ucf101_raw(base)
    cf.write_flowers_raw(base)
    cf.write_cars_raw(base)
    cf.write_sun397_raw(base)
    cf.write_imagenet(base)
    return base


def _picked(split: coop.CoopSplit, indices: dict[str, list[int]], key: str) -> list[str]:
    return [getattr(split, key).paths[i] for i in indices[key]]


# ---------------------------------------------------------------------------------------------
# split file


def test_split_file_reproduces_items_and_label_order(root) -> None:
    written = json.loads((root / "eurosat" / "split_zhou_EuroSAT.json").read_text())
    split = read_split("eurosat", root)
    for key in ("train", "val", "test"):
        items = getattr(split, key)
        assert items.paths == [r[0] for r in written[key]] and items.labels == [r[1] for r in written[key]]
    # names in label order, although the file lists label 3 first
    assert split.classnames == list(cf.EUROSAT_NAMES) and written["train"][0][1] == 3
    assert split.image_root == root / "eurosat" / "2750" and "split_zhou_EuroSAT.json" in split.source
    data = load_coop("eurosat", root, 4, 1, TF, TF)
    assert data.classnames == list(cf.EUROSAT_NAMES) and data.templates == [
        "a centered satellite photo of {}."
    ]
    assert len(data.test) == len(written["test"]) and data.test.paths[0] == str(
        split.image_root / written["test"][0][0]
    )


def test_items_are_image_tensors_with_their_labels(root) -> None:
    data = load_coop("eurosat", root, 2, 1, TF, TF)
    for dataset in (data.train, data.val, data.test):
        for i in (0, len(dataset) - 1):
            image, label = dataset[i]
            expected = torch.tensor(color_of(label), dtype=torch.float32) / 255
            assert image.shape == (3, 8, 8) and torch.allclose(image.mean((1, 2)), expected, atol=0.02)


def _dassl_reference(split: coop.CoopSplit, shots: int, seed: int) -> list[list[str]]:
    """Dassl's ``generate_fewshot_dataset`` restated on the item rows with the global ``random``
    seeded by ``set_random_seed``: train with K, then val with min(K, 4)."""
    state = random.getstate()
    random.seed(seed)
    try:
        out = []
        for items, k in ((split.train, shots), (split.val, min(shots, 4))):
            tracker = defaultdict(list)
            for row in zip(items.paths, items.labels):
                tracker[row[1]].append(row)
            picked = []
            for rows in tracker.values():
                picked += random.sample(rows, k) if len(rows) >= k else random.choices(rows, k=k)
            out.append([p for p, _ in picked])
        return out
    finally:
        random.setstate(state)


@pytest.mark.parametrize("shots", [1, 4, 16])
def test_sampling_is_dassls_draw_for_the_same_seed(root, shots) -> None:
    split = read_split("eurosat", root)
    for seed in (1, 2, 3):
        indices = coop.sample_indices(split, shots, seed)
        assert [_picked(split, indices, "train"), _picked(split, indices, "val")] == _dassl_reference(
            split, shots, seed
        )


def test_shots_per_class_exact_and_seeded(root) -> None:
    split = read_split("eurosat", root)
    for shots, val_shots in ((2, 2), (5, 4), (8, 4)):  # 8 > the 6 train images per class: repeats
        data = load_coop("eurosat", root, shots, 1, TF, TF)
        assert Counter(data.train.targets) == {c: shots for c in range(10)}
        assert Counter(data.val.targets) == {c: val_shots for c in range(10)}
        distinct = len(set(data.indices["train"]))
        assert distinct == 10 * shots if shots <= 6 else 10 <= distinct < 10 * shots  # choices repeat
    a, b, c = (coop.sample_indices(split, 4, s) for s in (1, 1, 2))
    assert a == b and a["train"] != c["train"] and a["val"] != c["val"]


def test_indices_round_trip_through_json_and_win_over_the_seed(root) -> None:
    first = load_coop("eurosat", root, 4, 1, TF, TF)
    back = json.loads(json.dumps(first.indices))
    again = load_coop("eurosat", root, 4, 3, TF, TF, indices=back)
    assert again.indices == first.indices and again.train.paths == first.train.paths
    assert again.val.paths == first.val.paths
    assert load_coop("eurosat", root, 4, 3, TF, TF).train.paths != first.train.paths


def test_indices_that_do_not_fit_are_one_line_data_errors(root) -> None:
    two = load_coop("eurosat", root, 2, 1, TF, TF).indices
    cases = [
        (dict(two), "class"),  # 2-shot indices for a 4-shot run
        ({"train": two["train"]}, "keys"),  # val missing
        ({"train": [*two["train"][:-1], 10**6], "val": two["val"]}, "not an index"),
    ]
    for indices, fragment in cases:
        with pytest.raises(DataError) as err:
            load_coop("eurosat", root, 4, 1, TF, TF, indices=indices)
        assert fragment in err.value.one_line() and "\n" not in str(err.value)


def test_bad_name_and_shots(root) -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'eurosat'"):
        load_coop("eurosta", root, 4, 1, TF, TF)
    with pytest.raises(ConfigError, match="shots"):
        load_coop("eurosat", root, 0, 1, TF, TF)


# ---------------------------------------------------------------------------------------------
# official layouts and CoOp's class-name fixes


def test_eurosat_without_split_file_uses_new_cnames_and_50_20_30(tmp_path) -> None:
    cf.write_eurosat_raw(tmp_path, per_class=10)
    split = read_split("eurosat", tmp_path)
    assert split.classnames == list(cf.EUROSAT_NAMES) and "generated" in split.source
    for items, n in ((split.train, 5), (split.val, 2), (split.test, 3)):
        assert Counter(items.labels) == {c: n for c in range(10)}
    every = split.train.paths + split.val.paths + split.test.paths
    assert len(set(every)) == 100 and all(
        p.split("/")[0] == EUROSAT_FOLDERS[y]
        for p, y in zip(every, split.train.labels + split.val.labels + split.test.labels)
    )
    assert read_split("eurosat", tmp_path).train.paths == split.train.paths  # fixed split seed


def test_caltech101_drops_background_and_faces_easy_and_renames(root) -> None:
    split = read_split("caltech101", root)
    renames = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
    folders = sorted([*cf.CALTECH_REAL, *(f"object_{i:02d}" for i in range(95))])
    assert split.classnames == [renames.get(c, c) for c in folders] and split.classnames[0] == "face"
    assert not any(
        p.startswith(("BACKGROUND_Google/", "Faces_easy/")) for p in split.train.paths + split.test.paths
    )
    assert Counter(split.train.labels) == {c: 2 for c in range(100)}


def test_oxford_pets_names_from_file_names(root) -> None:
    split = read_split("oxford_pets", root)
    assert split.classnames[:4] == ["abyssinian", "american_bulldog", "bengal", "great_pyrenees"]
    assert Counter(split.train.labels) == {c: 4 for c in range(37)} and len(split.val) == 37
    assert split.test.paths[0] == "Abyssinian_100.jpg" and split.test.labels[1] == 1
    data = load_coop("oxford_pets", root, 2, 1, TF, TF)
    assert data.classnames[1] == "american bulldog" and data.templates == ["a photo of a {}, a type of pet."]


def test_aircraft_reads_variant_files_in_variants_order(root) -> None:
    split = read_split("fgvc_aircraft", root)
    variants = (root / "fgvc_aircraft" / "variants.txt").read_text().splitlines()
    assert split.classnames == variants and split.classnames[2] == "F/A-18"
    for key, offset in (("train", 1000000), ("val", 2000000), ("test", 3000000)):
        items = getattr(split, key)
        assert items.labels == [(i * 13) % 100 for i in range(len(items))]
        assert items.paths[:2] == [f"{offset}.jpg", f"{offset + 1}.jpg"]
    assert load_coop("fgvc_aircraft", root, 1, 1, TF, TF).templates == [
        "a photo of a {}, a type of aircraft."
    ]


def test_ucf101_middle_frames_tree(root) -> None:
    split = read_split("ucf101", root)
    assert split.image_root == root / "ucf101" / "UCF-101-midframes"
    assert split.classnames[:3] == ["Apply_Eye_Makeup", "Yo_Yo", "Playing_Daf"]
    assert split.test.paths[0] == "Apply_Eye_Makeup/v_ApplyEyeMakeup_g01_c01.jpg"
    data = load_coop("ucf101", root, 2, 1, TF, TF)
    assert data.classnames[:2] == ["Apply Eye Makeup", "Yo Yo"]
    assert data.templates == ["a photo of a person doing {}."]
    assert all(
        Path(p).parent.name == split.classnames[y] for p, y in zip(data.train.paths, data.train.targets)
    )


def test_flowers_cars_sun397_names(root) -> None:
    flowers = read_split("oxford_flowers", root)
    assert flowers.classnames[0] == "pink primrose" and flowers.classnames[101] == "flower number 102"
    labels = [1 + (i * 7) % 102 for i in range(510)]
    assert all(labels[int(p[6:11]) - 1] - 1 == y for p, y in zip(flowers.train.paths, flowers.train.labels))
    cars = read_split("stanford_cars", root)
    assert cars.classnames[0] == "2000 AM General Hummer SUV" and cars.image_root == root / "stanford_cars"
    assert cars.test.paths[0] == "cars_test/test0000.jpg" and Counter(cars.val.labels)[195] == 1
    sun = read_split("sun397", root)
    assert sun.classnames[:2] == ["abbey", "shop bakery"] and sun.test.paths[1] == "b/bakery/shop/sun_T0.jpg"


def test_imagenet_validates_on_test_with_the_ensemble(root) -> None:
    data = load_coop("imagenet", root, 1, 1, TF, TF)
    wnids = sorted(p.name for p in (root / "imagenet" / "images" / "train").iterdir())
    assert data.val is data.test and set(data.indices) == {"train"} and len(data.test) == 1000
    assert data.classnames[0] == f"class {wnids[0][-3:]} name" and data.templates[0] == "a photo of a {}."
    assert data.templates[1:] == list(coop.IMAGENET_TEMPLATES_SELECT) and len(data.templates) == 8
    assert coop.ensemble_of("imagenet") == data.templates[1:]
    assert coop.ensemble_of("dtd")[-1] == "{} texture." and len(coop.ensemble_of("dtd")) == 8
    with pytest.raises(DataError, match="keys"):
        load_coop("imagenet", root, 1, 1, TF, TF, indices={"train": data.indices["train"], "val": [0]})


# ---------------------------------------------------------------------------------------------
# missing data


@pytest.mark.parametrize("name", COOP_DATASETS)
def test_missing_dataset_is_one_line_naming_the_path_and_layout(tmp_path, name) -> None:
    with pytest.raises(DataError) as err:
        load_coop(name, tmp_path, 16, 1, TF, TF)
    line = err.value.one_line()
    assert str(tmp_path / SPECS[name].folder) in line and f"expected <root>/{SPECS[name].layout}" in line


def test_missing_pieces_are_named(tmp_path) -> None:
    with pytest.raises(DataError, match="data_root .*does not exist"):
        load_coop("dtd", tmp_path / "nowhere", 1, 1, TF, TF)
    (tmp_path / "dtd" / "images").mkdir(parents=True)
    (tmp_path / "oxford_pets" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="split_zhou_OxfordPets.json: is missing"):
        load_coop("oxford_pets", tmp_path, 1, 1, TF, TF)
    cf.write_eurosat_split(tmp_path)
    gone = tmp_path / "eurosat" / "2750" / "River" / "River_test1.jpg"
    gone.unlink()
    with pytest.raises(DataError, match=f"image {gone}: is missing .*split_zhou_EuroSAT.json"):
        load_coop("eurosat", tmp_path, 1, 1, TF, TF)


def test_malformed_files_are_data_errors(tmp_path) -> None:
    split = cf.write_eurosat_split(tmp_path)
    path = tmp_path / "eurosat" / "split_zhou_EuroSAT.json"
    cases = [
        (
            {**split, "train": [r for r in split["train"] if r[1] != 9]},
            "training labels 9 distinct in 0..8 .all splits: 10 distinct in 0..9. but EuroSAT has 10",
        ),
        (
            {**split, "val": [*split["val"], ["Forest/x.jpg", 1, "Woods"]]},
            "names label 1 both 'Forest' and 'Woods'",
        ),
        ({**split, "test": [["Forest/x.jpg", "one", "Forest"]]}, "is not \\[path, label, name\\]"),
        ({"train": split["train"]}, "does not hold lists under 'train', 'val' and 'test'"),
    ]
    for content, fragment in cases:
        path.write_text(json.dumps(content))
        with pytest.raises(DataError, match=fragment):
            read_split("eurosat", tmp_path)
    cf.write_pets_raw(tmp_path)
    with (tmp_path / "oxford_pets" / "annotations" / "test.txt").open("a") as file:
        file.write("Abyssinian_7 first 1 1\n")
    with pytest.raises(DataError, match="cannot parse .ValueError"):
        read_split("oxford_pets", tmp_path)


# ---------------------------------------------------------------------------------------------
# CoOp's shot_K-seed_S.pkl


def _cache_rows(split: coop.CoopSplit, indices: dict[str, list[int]]) -> dict[str, list]:
    return {
        key: [
            [
                getattr(split, key).paths[i],
                getattr(split, key).labels[i],
                split.classnames[getattr(split, key).labels[i]],
            ]
            for i in indices[key]
        ]
        for key in indices
    }


def test_cache_written_like_dassl_reads_back_as_the_same_indices(root, tmp_path) -> None:
    split = read_split("eurosat", root)
    drawn = coop.sample_indices(split, 4, 2)
    pkl = tmp_path / "split_fewshot" / "shot_4-seed_2.pkl"
    cf.write_coop_cache(pkl, "/home/someone/DATA/eurosat/2750", _cache_rows(split, drawn))
    assert b"dassl.data.datasets.base_dataset" in pkl.read_bytes()
    data = load_coop("eurosat", root, 4, 1, TF, TF)
    assert read_coop_cache(pkl, data) == drawn == read_coop_cache(pkl, split)
    assert load_coop("eurosat", root, 4, 1, TF, TF, indices=read_coop_cache(pkl, data)).indices == drawn
    imagenet = read_split("imagenet", root)
    shots = coop.sample_indices(imagenet, 1, 1)
    ipkl = tmp_path / "shot_1-seed_1.pkl"
    cf.write_coop_cache(ipkl, "C:\\data\\imagenet\\images", _cache_rows(imagenet, shots))
    assert read_coop_cache(ipkl, imagenet) == shots


def test_stale_cache_is_a_data_error(root, tmp_path) -> None:
    split = read_split("eurosat", root)
    rows = _cache_rows(split, coop.sample_indices(split, 1, 1))
    rows["train"][0][1] = (rows["train"][0][1] + 1) % 10
    cf.write_coop_cache(tmp_path / "label.pkl", "/x/eurosat/2750", rows)
    with pytest.raises(DataError, match="stale"):
        read_coop_cache(tmp_path / "label.pkl", split)
    rows["train"][0][0] = "Forest/not_in_the_split.jpg"
    cf.write_coop_cache(tmp_path / "path.pkl", "/x/eurosat/2750", rows)
    with pytest.raises(DataError, match="not in the train split"):
        read_coop_cache(tmp_path / "path.pkl", split)


class _RunsCode:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.mkdir, (str(self.target),)


def test_cache_reader_refuses_a_pickle_that_would_run_code(root, tmp_path) -> None:
    split = read_split("eurosat", root)
    target = tmp_path / "created_by_the_pickle"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(
        pickle.dumps({"train": [_RunsCode(target)], "val": []}, protocol=pickle.HIGHEST_PROTOCOL)
    )
    with pytest.raises(DataError, match="global posix.mkdir, refused"):
        read_coop_cache(evil, split)
    eval_pickle = tmp_path / "eval.pkl"  # protocol 0, GLOBAL + REDUCE of builtins.eval
    eval_pickle.write_bytes(b"cbuiltins\neval\n(V__import__('os').mkdir(%r)\ntR." % str(target).encode())
    with pytest.raises(DataError, match="builtins.eval"):
        read_coop_cache(eval_pickle, split)
    assert not target.exists()
    bad_state = tmp_path / "state.pkl"
    cf.write_datums(bad_state, {"train": [cf.Datum(5, 0, 0, "Forest")], "val": []})
    with pytest.raises(DataError, match="Datum._impath"):
        read_coop_cache(bad_state, split)
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a readable pickle"):
        read_coop_cache(tmp_path / "junk.pkl", split)


# ---------------------------------------------------------------------------------------------
# madapt data check coop


def test_check_coop_rows(root, tmp_path) -> None:
    rows = {name: (ok, message) for name, ok, message in check_coop(root)}
    assert list(rows) == list(COOP_DATASETS)
    assert rows["eurosat"] == (True, f"found {root / 'eurosat'} with split_zhou_EuroSAT.json")
    assert rows["oxford_pets"][0] and "generated split" in rows["oxford_pets"][1]
    assert rows["dtd"] == (False, f"missing {root / 'dtd'}; expected {root}/{SPECS['dtd'].layout}")
    cf.write_coop_cache(tmp_path / "eurosat" / "split_fewshot" / "shot_1-seed_1.pkl", "/x", {"train": []})
    (tmp_path / "eurosat" / "2750").mkdir()
    (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").write_text("{}")
    assert check_coop(tmp_path)[COOP_DATASETS.index("eurosat")][2].endswith(
        "1 CoOp few-shot cache(s) in split_fewshot/"
    )


def test_cli_data_check_coop(root) -> None:
    """The typer command in-process (a subprocess would import torch a second time)."""
    from typer.testing import CliRunner

    from madapt.cli import app

    out = CliRunner().invoke(app, ["data", "check", "coop", "--root", str(root)])
    assert out.exit_code == 1 and f"ok      eurosat: found {root / 'eurosat'}" in out.stdout
    assert "MISSING dtd: missing" in out.stdout and len(out.stdout.strip().splitlines()) == 11
    bad = CliRunner().invoke(app, ["data", "check", "coopp", "--root", str(root)])
    assert isinstance(bad.exception, ConfigError) and "did you mean 'coop'" in str(bad.exception)
