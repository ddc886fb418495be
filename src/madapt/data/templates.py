"""Class names and prompt templates of the MTIL and CIL datasets, as plain data.

Facts copied from ZSCL `mtil/src/datasets/collections.py` (identical in MoE-Adapters and ConDU)
and ZSCL `cil/configs/class/*.yaml`; see seed 000 §3.5 / §4.5 and seed 002 §5.

- ``templates[0]`` is the training prompt, the whole list is ensembled at evaluation.
- ``CLASSNAMES`` holds the hand-written lists (the CLIP-paper names ZSCL uses for Caltech101,
  EuroSAT and Flowers102) and the lists that are fixed by the dataset files (CIFAR-100, DTD,
  MNIST: torchvision's ``.classes`` with "_" -> " "). Datasets missing from ``CLASSNAMES``
  (Aircraft, Food-101, Oxford Pets, Stanford Cars, SUN397, TinyImageNet) take their names from
  the files on disk, as ZSCL does, so that a reordered metadata file cannot silently shift names.
"""

from __future__ import annotations

_CIFAR_TEMPLATES = (
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.",
    "a photo of the {}.", "a blurry photo of the {}.", "a black and white photo of the {}.",
    "a low contrast photo of the {}.", "a high contrast photo of the {}.",
    "a bad photo of the {}.", "a good photo of the {}.", "a photo of the small {}.",
    "a photo of the big {}.",
)

_CALTECH_TEMPLATES = (
    "a photo of a {}.", "a painting of a {}.", "a plastic {}.", "a sculpture of a {}.",
    "a sketch of a {}.", "a tattoo of a {}.", "a toy {}.", "a rendition of a {}.",
    "a embroidered {}.", "a cartoon {}.", "a {} in a video game.", "a plushie {}.",
    "a origami {}.", "art of a {}.", "graffiti of a {}.", "a drawing of a {}.",
    "a doodle of a {}.", "a photo of the {}.", "a painting of the {}.", "the plastic {}.",
    "a sculpture of the {}.", "a sketch of the {}.", "a tattoo of the {}.", "the toy {}.",
    "a rendition of the {}.", "the embroidered {}.", "the cartoon {}.",
    "the {} in a video game.", "the plushie {}.", "the origami {}.", "art of the {}.",
    "graffiti of the {}.", "a drawing of the {}.", "a doodle of the {}.",
)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "aircraft": ("a photo of a {}, a type of aircraft.", "a photo of the {}, a type of aircraft."),
    "caltech101": _CALTECH_TEMPLATES,
    "cifar100": _CIFAR_TEMPLATES,
    "dtd": (
        "a photo of a {} texture.", "a photo of a {} pattern.", "a photo of a {} thing.",
        "a photo of a {} object.", "a photo of the {} texture.", "a photo of the {} pattern.",
        "a photo of the {} thing.", "a photo of the {} object.",
    ),
    "eurosat": (
        "a centered satellite photo of {}.", "a centered satellite photo of a {}.",
        "a centered satellite photo of the {}.",
    ),
    "flowers": ("a photo of a {}, a type of flower.",),
    "food": ("a photo of a {}, a type of food.",),
    "mnist": ('a photo of the number: "{}".',),
    "oxford_pet": ("a photo of a {}, a type of pet.",),
    "stanford_cars": (
        "a photo of a {}, a type of car.", "a photo of a {}.", "a photo of the {}.",
        "a photo of my {}.", "i love my {}!", "a photo of my dirty {}.",
        "a photo of my clean {}.", "a photo of my new {}.", "a photo of my old {}.",
    ),
    "sun397": ("a photo of a {}.", "a photo of the {}."),
    # ZSCL cil/configs/class/*.yaml: `prompt_template: "a bad photo of a {}."`
    "cil_cifar100": ("a bad photo of a {}.",),
    "cil_tinyimagenet": ("a bad photo of a {}.",),
}

# Order = torchvision's label order (sorted category folders, "BACKGROUND_Google" removed).
# "head of a  crocodile" keeps ZSCL's double space: the prompts must match the reference.
_CALTECH101 = (
    "off-center face", "centered face", "leopard", "motorbike", "accordion", "airplane",
    "anchor", "ant", "barrel", "bass", "beaver", "binocular", "bonsai", "brain", "brontosaurus",
    "buddha", "butterfly", "camera", "cannon", "side of a car", "ceiling fan", "cellphone",
    "chair", "chandelier", "body of a cougar cat", "face of a cougar cat", "crab", "crayfish",
    "crocodile", "head of a  crocodile", "cup", "dalmatian", "dollar bill", "dolphin",
    "dragonfly", "electric guitar", "elephant", "emu", "euphonium", "ewer", "ferry", "flamingo",
    "head of a flamingo", "garfield", "gerenuk", "gramophone", "grand piano", "hawksbill",
    "headphone", "hedgehog", "helicopter", "ibis", "inline skate", "joshua tree", "kangaroo",
    "ketch", "lamp", "laptop", "llama", "lobster", "lotus", "mandolin", "mayfly", "menorah",
    "metronome", "minaret", "nautilus", "octopus", "okapi", "pagoda", "panda", "pigeon", "pizza",
    "platypus", "pyramid", "revolver", "rhino", "rooster", "saxophone", "schooner", "scissors",
    "scorpion", "sea horse", "snoopy (cartoon beagle)", "soccer ball", "stapler", "starfish",
    "stegosaurus", "stop sign", "strawberry", "sunflower", "tick", "trilobite", "umbrella",
    "watch", "water lilly", "wheelchair", "wild cat", "windsor chair", "wrench",
    "yin and yang symbol",
)

# Order = torchvision's EuroSAT ImageFolder order (AnnualCrop, Forest, HerbaceousVegetation, ...).
_EUROSAT = (
    "annual crop land", "forest", "brushland or shrubland", "highway or road",
    "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
    "residential buildings or homes or apartments", "river", "lake or sea",
)

# Order = label index in imagelabels.mat (1-based there, 0-based here).
_FLOWERS102 = (
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea",
    "english marigold", "tiger lily", "moon orchid", "bird of paradise", "monkshood",
    "globe thistle", "snapdragon", "colt's foot", "king protea", "spear thistle", "yellow iris",
    "globe-flower", "purple coneflower", "peruvian lily", "balloon flower",
    "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger",
    "grape hyacinth", "corn poppy", "prince of wales feathers", "stemless gentian", "artichoke",
    "sweet william", "carnation", "garden phlox", "love in the mist", "mexican aster",
    "alpine sea holly", "ruby-lipped cattleya", "cape flower", "great masterwort", "siam tulip",
    "lenten rose", "barbeton daisy", "daffodil", "sword lily", "poinsettia", "bolero deep blue",
    "wallflower", "marigold", "buttercup", "oxeye daisy", "common dandelion", "petunia",
    "wild pansy", "primula", "sunflower", "pelargonium", "bishop of llandaff", "gaura",
    "geranium", "orange dahlia", "pink-yellow dahlia", "cautleya spicata", "japanese anemone",
    "black-eyed susan", "silverbush", "californian poppy", "osteospermum", "spring crocus",
    "bearded iris", "windflower", "tree poppy", "gazania", "azalea", "water lily", "rose",
    "thorn apple", "morning glory", "passion flower", "lotus", "toad lily", "anthurium",
    "frangipani", "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia",
    "cyclamen", "watercress", "canna lily", "hippeastrum", "bee balm", "ball moss", "foxglove",
    "bougainvillea", "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower",
    "trumpet creeper", "blackberry lily",
)

# torchvision CIFAR100 `.classes` (meta `fine_label_names`) with "_" -> " ".
_CIFAR100 = (
    "apple", "aquarium fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak tree", "orange", "orchid", "otter", "palm tree", "pear", "pickup truck", "pine tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow tree", "wolf", "woman", "worm",
)

# torchvision DTD `.classes`: sorted category folder names.
_DTD = (
    "banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked",
    "crosshatched", "crystalline", "dotted", "fibrous", "flecked", "freckled", "frilly", "gauzy",
    "grid", "grooved", "honeycombed", "interlaced", "knitted", "lacelike", "lined", "marbled",
    "matted", "meshed", "paisley", "perforated", "pitted", "pleated", "polka-dotted", "porous",
    "potholed", "scaly", "smeared", "spiralled", "sprinkled", "stained", "stratified", "striped",
    "studded", "swirly", "veined", "waffled", "woven", "wrinkled", "zigzagged",
)

# torchvision MNIST `.classes`, used verbatim by ZSCL ('a photo of the number: "0 - zero".').
_MNIST = (
    "0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six",
    "7 - seven", "8 - eight", "9 - nine",
)

CLASSNAMES: dict[str, tuple[str, ...]] = {
    "caltech101": _CALTECH101,
    "cifar100": _CIFAR100,
    "dtd": _DTD,
    "eurosat": _EUROSAT,
    "flowers": _FLOWERS102,
    "mnist": _MNIST,
}

# Class counts (seed 000 Table 3.1 / anchors §1: 11 datasets, 1201 classes; TinyImageNet 200).
N_CLASSES: dict[str, int] = {
    "aircraft": 100, "caltech101": 101, "cifar100": 100, "dtd": 47, "eurosat": 10,
    "flowers": 102, "food": 101, "mnist": 10, "oxford_pet": 37, "stanford_cars": 196,
    "sun397": 397, "tinyimagenet": 200,
}
