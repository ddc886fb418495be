"""The 11 datasets of the CoOp protocol as plain data: folders, files, class-name fixes, templates.

Seed 003 §4.1 (Table 1) evaluates on CoOp's few-shot protocol. Every fact here is copied from
KaiyangZhou/CoOp: ``DATASETS.md`` (folder layouts), ``datasets/*.py`` (folder names, split files,
class-name fixes), ``trainers/zsclip.py`` (``CUSTOM_TEMPLATES``) and ``trainers/imagenet_templates.py``
(``IMAGENET_TEMPLATES_SELECT``, the ensemble of CoOp's ``ZeroshotCLIP2``). Names are our short keys;
``config`` is CoOp's ``DATASET.NAME``.
"""

from __future__ import annotations

from dataclasses import dataclass

from madapt.errors import UnknownNameError, closest


@dataclass(frozen=True)
class CoopSpec:
    """Where one dataset lives under the data root and how CoOp reads it."""

    name: str  # our key, e.g. "oxford_pets"
    config: str  # CoOp's DATASET.NAME, e.g. "OxfordPets"
    folder: str  # dataset folder directly under the data root (CoOp's ``dataset_dir``)
    image_dir: str  # folder the split file's paths are relative to ("" = the dataset folder)
    split_file: str  # ``split_zhou_<Name>.json`` ("" = the dataset has none)
    raw_files: tuple[str, ...]  # files of the official layout CoOp reads when the split file is absent
    n_classes: int
    layout: str  # one line: the expected layout under the data root

    @property
    def template(self) -> str:
        return CUSTOM_TEMPLATES[self.name]


_JSON = "split_zhou_{}.json"

# fmt: off
SPECS: dict[str, CoopSpec] = {s.name: s for s in (
    CoopSpec("imagenet", "ImageNet", "imagenet", "images", "",
             ("classnames.txt", "images/train", "images/val"), 1000,
             "imagenet/{classnames.txt ('<wnid> <class name>' lines, CLIP's names), "
             "images/train/<wnid>/*.JPEG, images/val/<wnid>/*.JPEG (val sorted into wnid folders)}"),
    CoopSpec("caltech101", "Caltech101", "caltech-101", "101_ObjectCategories", _JSON.format("Caltech101"),
             ("101_ObjectCategories",), 100,
             "caltech-101/{101_ObjectCategories/<category>/image_0001.jpg, split_zhou_Caltech101.json}"),
    CoopSpec("oxford_pets", "OxfordPets", "oxford_pets", "images", _JSON.format("OxfordPets"),
             ("annotations/trainval.txt", "annotations/test.txt"), 37,
             "oxford_pets/{images/<Breed>_<n>.jpg, annotations/{trainval,test}.txt, "
             "split_zhou_OxfordPets.json}"),
    CoopSpec("stanford_cars", "StanfordCars", "stanford_cars", "", _JSON.format("StanfordCars"),
             ("devkit/cars_train_annos.mat", "devkit/cars_meta.mat", "cars_test_annos_withlabels.mat"), 196,
             "stanford_cars/{cars_train/*.jpg, cars_test/*.jpg, devkit/{cars_meta,cars_train_annos}.mat, "
             "cars_test_annos_withlabels.mat, split_zhou_StanfordCars.json}"),
    CoopSpec("oxford_flowers", "OxfordFlowers", "oxford_flowers", "jpg", _JSON.format("OxfordFlowers"),
             ("imagelabels.mat", "cat_to_name.json"), 102,
             "oxford_flowers/{jpg/image_00001.jpg, imagelabels.mat, cat_to_name.json, "
             "split_zhou_OxfordFlowers.json}"),
    CoopSpec("food101", "Food101", "food-101", "images", _JSON.format("Food101"), ("images",), 101,
             "food-101/{images/<class>/<id>.jpg, split_zhou_Food101.json}"),
    CoopSpec("fgvc_aircraft", "FGVCAircraft", "fgvc_aircraft", "images", "",
             ("variants.txt", "images_variant_train.txt", "images_variant_val.txt",
              "images_variant_test.txt"), 100,
             "fgvc_aircraft/{images/<id>.jpg, variants.txt, images_variant_{train,val,test}.txt} "
             "(the data/ folder of fgvc-aircraft-2013b.tar.gz, renamed)"),
    CoopSpec("sun397", "SUN397", "sun397", "SUN397", _JSON.format("SUN397"),
             ("ClassName.txt", "Training_01.txt", "Testing_01.txt"), 397,
             "sun397/{SUN397/<letter>/<class>[/<sub>]/sun_*.jpg, split_zhou_SUN397.json} "
             "(or ClassName.txt, Training_01.txt, Testing_01.txt of Partitions.zip)"),
    CoopSpec("dtd", "DescribableTextures", "dtd", "images", _JSON.format("DescribableTextures"),
             ("images",), 47,
             "dtd/{images/<class>/<name>.jpg, split_zhou_DescribableTextures.json}"),
    CoopSpec("eurosat", "EuroSAT", "eurosat", "2750", _JSON.format("EuroSAT"), ("2750",), 10,
             "eurosat/{2750/<Class>/<Class>_<n>.jpg, split_zhou_EuroSAT.json}"),
    CoopSpec("ucf101", "UCF101", "ucf101", "UCF-101-midframes", _JSON.format("UCF101"),
             ("ucfTrainTestlist/classInd.txt", "ucfTrainTestlist/trainlist01.txt",
              "ucfTrainTestlist/testlist01.txt"), 101,
             "ucf101/{UCF-101-midframes/<Action_Name>/v_<Action>_g<nn>_c<nn>.jpg, split_zhou_UCF101.json}"),
)}
# fmt: on

COOP_DATASETS: tuple[str, ...] = tuple(SPECS)

# `trainers/zsclip.py` CUSTOM_TEMPLATES: the hand prompt of zero-shot CLIP, one per dataset.
CUSTOM_TEMPLATES: dict[str, str] = {
    "imagenet": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "oxford_pets": "a photo of a {}, a type of pet.",
    "stanford_cars": "a photo of a {}.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "food101": "a photo of {}, a type of food.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "sun397": "a photo of a {}.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "ucf101": "a photo of a person doing {}.",
}

# `trainers/imagenet_templates.py` IMAGENET_TEMPLATES_SELECT: the 7 prompts `ZeroshotCLIP2` averages
# (it uses them alone on ImageNet and adds the hand template on the other datasets).
IMAGENET_TEMPLATES_SELECT: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

# `datasets/caltech101.py`: folders left out, and folder -> class name renames.
CALTECH_IGNORED: tuple[str, ...] = ("BACKGROUND_Google", "Faces_easy")
CALTECH_NEW_CNAMES: dict[str, str] = {
    "airplanes": "airplane",
    "Faces": "face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
}

# `datasets/eurosat.py` NEW_CNAMES: folder -> class name.
EUROSAT_NEW_CNAMES: dict[str, str] = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


def spec_of(name: str) -> CoopSpec:
    """The spec of ``name``; `UnknownNameError` (with the closest name) outside `COOP_DATASETS`."""
    if name not in SPECS:
        raise UnknownNameError(
            f"CoOp dataset '{name}'",
            "is not known" + closest(name, COOP_DATASETS),
            "one of: " + ", ".join(COOP_DATASETS),
        )
    return SPECS[name]


def templates_of(name: str) -> list[str]:
    """``[hand template]``, plus CoOp's ImageNet ensemble for ImageNet (`IMAGENET_TEMPLATES_SELECT`).

    CoOp's ``ZeroshotCLIP2`` ensembles ``templates[1:]`` on ImageNet and the 7 + the hand template
    elsewhere; `ensemble_of` gives that list for any dataset.
    """
    hand = CUSTOM_TEMPLATES[name]
    return [hand, *IMAGENET_TEMPLATES_SELECT] if name == "imagenet" else [hand]


def ensemble_of(name: str) -> list[str]:
    """The templates CoOp's ``ZeroshotCLIP2`` averages for ``name`` (`trainers/zsclip.py`)."""
    select = list(IMAGENET_TEMPLATES_SELECT)
    return select if name == "imagenet" else [*select, CUSTOM_TEMPLATES[name]]
