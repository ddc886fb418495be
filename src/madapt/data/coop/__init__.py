"""The CoOp few-shot data protocol for the 11 datasets of seed 003 Table 1 (issue 14).

One file per concern:

- `specs`: folders, split files, class counts, class-name fixes and hand templates (CoOp facts);
- `readers`: the full train / val / test lists from ``split_zhou_<Name>.json`` or the official
  layouts (FGVC-Aircraft's variant lists, ImageNet's folders, the fallbacks CoOp uses without a
  split file);
- `sampling`: K shots for train and min(K, 4) for val per class per seed, Dassl's draw;
- `cache`: CoOp's ``split_fewshot/shot_{K}-seed_{S}.pkl`` read without running code from it;
- `load`: `load_coop` (-> `FewShotSplits`) and `check_coop` (``madapt data check coop``).
"""

from madapt.data.coop.cache import read_coop_cache
from madapt.data.coop.load import FewShotSplits, check_coop, load_coop
from madapt.data.coop.readers import CoopSplit, Items, read_split
from madapt.data.coop.sampling import sample_indices
from madapt.data.coop.specs import COOP_DATASETS, CUSTOM_TEMPLATES, IMAGENET_TEMPLATES_SELECT, ensemble_of

__all__ = [
    "COOP_DATASETS",
    "CUSTOM_TEMPLATES",
    "IMAGENET_TEMPLATES_SELECT",
    "CoopSplit",
    "FewShotSplits",
    "Items",
    "check_coop",
    "ensemble_of",
    "load_coop",
    "read_coop_cache",
    "read_split",
    "sample_indices",
]
