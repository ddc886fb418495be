"""CoOp's cached few-shot draws, ``<dataset>/split_fewshot/shot_{K}-seed_{S}.pkl``, read safely.

CoOp's ``datasets/*.py`` write ``pickle.dump({"train": [Datum, ...], "val": [Datum, ...]}, f,
protocol=pickle.HIGHEST_PROTOCOL)`` (ImageNet: ``"train"`` only), where ``Datum`` is
``dassl.data.datasets.base_dataset.Datum`` holding ``_impath`` (absolute, on the machine that made
the file), ``_label``, ``_domain`` and ``_classname``.

Choice (brief: a restricted unpickler or pickletools-level parsing): a restricted
``pickle.Unpickler`` whose ``find_class`` knows exactly one global, Dassl's ``Datum``, and returns
our own `DatumRecord` for it. This is the pattern of the Python documentation ("Restricting
Globals"): a pickle can reach code only through globals it names (GLOBAL / STACK_GLOBAL / EXT
opcodes all go through ``find_class``), so every other global (``os.system``, ``builtins.eval``,
``copyreg._reconstructor`` ...) is refused before anything is called, and what ``NEWOBJ`` / ``BUILD``
then do with a `DatumRecord` is our code: store four plain values after checking their types. No
persistent ids, no out-of-band buffers. The pickle machinery stays the standard library's, which is
less code to trust than a hand-written opcode interpreter.

Items are matched to the full split lists by path: the longest trailing part of ``_impath`` that is
a path of the split (the absolute prefix differs between machines), then the label is compared, so
a stale cache (another split file) is a `DataError`, not a silent override.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

from madapt.data.coop.readers import CoopSplit, Items
from madapt.errors import DataError

if TYPE_CHECKING:
    from madapt.data.coop.load import FewShotSplits

DATUM_GLOBAL = ("dassl.data.datasets.base_dataset", "Datum")
_FIELDS = {"_impath": str, "_label": int, "_domain": int, "_classname": str}
# What a corrupt or truncated pickle raises from the standard unpickler.
_BROKEN = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
    UnicodeDecodeError,
    MemoryError,
)


class _Refused(Exception):
    """The pickle holds something other than Dassl ``Datum`` records in dicts and lists."""


class DatumRecord:
    """Plain stand-in for Dassl's ``Datum``: its four values, type-checked; runs nothing of the file."""

    __slots__ = ("classname", "domain", "impath", "label")

    def __init__(self, impath: str = "", label: int = 0, domain: int = 0, classname: str = "") -> None:
        self.__setstate__({"_impath": impath, "_label": label, "_domain": domain, "_classname": classname})

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or not set(state) <= set(_FIELDS):
            raise _Refused(f"a Datum state {str(state)[:80]}")
        for key, kind in _FIELDS.items():
            value = state.get(key, "" if kind is str else 0)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise _Refused(f"Datum.{key} = {str(value)[:80]}")
            setattr(self, key[1:], value)


class _DatumUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        if (module, name) == DATUM_GLOBAL:
            return DatumRecord
        raise _Refused(f"global {module}.{name}")


def read_datums(path: str | Path) -> dict[str, list[DatumRecord]]:
    """The ``{"train": [...], "val": [...]}`` of a CoOp few-shot cache, as `DatumRecord` lists."""
    path = Path(path).expanduser()
    expected = "a CoOp split_fewshot/shot_<K>-seed_<S>.pkl holding {'train': [Datum...], 'val': [Datum...]}"
    if not path.is_file():
        raise DataError(f"CoOp few-shot cache {path}", "is missing", expected)
    try:
        with path.open("rb") as file:
            data = _DatumUnpickler(file).load()
    except _Refused as err:
        raise DataError(
            f"CoOp few-shot cache {path}", f"holds {err}, refused (nothing was run)", expected
        ) from None
    except _BROKEN as err:
        raise DataError(
            f"CoOp few-shot cache {path}", f"is not a readable pickle ({type(err).__name__}: {err})", expected
        ) from None
    if not (
        isinstance(data, dict)
        and data
        and all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(d, DatumRecord) for d in v)
            for k, v in data.items()
        )
    ):
        raise DataError(
            f"CoOp few-shot cache {path}", f"holds a {type(data).__name__}, not lists of Datum", expected
        )
    return data


def _index_of(records: list[DatumRecord], items: Items, path: Path, key: str) -> list[int]:
    lookup: dict[str, int] = {}
    for i, rel in enumerate(items.paths):
        lookup.setdefault(rel, i)
    out = []
    for record in records:
        parts = record.impath.replace("\\", "/").split("/")
        index = next(
            (lookup[t] for t in ("/".join(parts[j:]) for j in range(len(parts))) if t in lookup), None
        )
        if index is None:
            raise DataError(
                f"CoOp few-shot cache {path} ['{key}']",
                f"lists {record.impath}, which is not in the {key} split",
                "a cache made from the same split as the data root's",
            )
        if items.labels[index] != record.label:
            raise DataError(
                f"CoOp few-shot cache {path} ['{key}']",
                f"gives {record.impath} label {record.label}, the split says {items.labels[index]}",
                "a cache made from the same split file (a stale cache?)",
            )
        out.append(index)
    return out


def read_coop_cache(path: str | Path, full: FewShotSplits | CoopSplit) -> dict[str, list[int]]:
    """CoOp's ``shot_{K}-seed_{S}.pkl`` as indices into ``full``'s train / val lists, in the cache's
    order, ready for ``load_coop(..., indices=...)`` (which checks the per-class counts against K)."""
    split = full if isinstance(full, CoopSplit) else full.split
    if split is None:
        raise DataError(
            "read_coop_cache(full=...)",
            "has no full split lists",
            "the FewShotSplits of load_coop or a CoopSplit of read_split",
        )
    path = Path(path).expanduser()
    data = read_datums(path)
    keys = ["train"] if split.val is None else ["train", "val"]
    if sorted(data) != sorted(keys):
        raise DataError(
            f"CoOp few-shot cache {path}", f"has keys {sorted(data)}", f"exactly {keys} for '{split.name}'"
        )
    return {key: _index_of(data[key], getattr(split, key), path, key) for key in keys}
