"""Export a pruned Unigram vocabulary as a sentencepiece ``.model`` and a Hugging Face tokenizer folder
(issue 5 item 5, issue 16 item 3).

``export`` writes, into one folder: ``tokenizer.model`` (the initial model's ModelProto with its
pieces replaced: normaliser and trainer specs kept, model type UNIGRAM, byte fallback on with the
256 ``<0xXX>`` pieces) and what ``PreTrainedTokenizerFast.save_pretrained`` writes:
``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``, so that
``AutoTokenizer.from_pretrained(folder)`` gives a tokenizer with bos/eos/unk/pad set.

The ``tokenizer.json`` segments like sentencepiece: the ModelProto's compiled normalisation rules
(``normalizers.Precompiled``), spaces as "▁", a split before each "▁" when no piece crosses one
(`units.unit_mode`), the same Unigram scores with byte fallback. For the models madapt trains
(`units`: no dummy prefix, U+2581 escaped) decode(encode(text)) == text in both formats for every
string, and text next to a special token gets no "▁" (a dummy prefix would be added to every
stretch of text between special tokens, as ``tokenizers`` normalises each one separately; for
sentencepiece models trained with a dummy prefix that known difference remains).

Special tokens: control and ``<unk>`` pieces are special tokens in ``tokenizer.json`` (their
literal text, e.g. "<s>", becomes the special token), while sentencepiece reads such text as
plain characters; the two formats agree on every text that holds no special token's string.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

from madapt.tokenizers.unigram import (
    BYTE,
    CONTROL,
    NORMAL,
    UNKNOWN,
    USER_DEFINED,
    UnigramModel,
    read_model_proto,
)
from madapt.tokenizers.units import ESCAPE, SPACE, escape, unit_mode
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def model_proto(template: str | Path | bytes, model: UnigramModel) -> bytes:
    """Serialized ModelProto: ``template``'s specs with ``model``'s pieces, scores and types.

    Byte pieces missing from ``model`` are appended (type BYTE, score 0) so byte fallback works.
    """
    proto = read_model_proto(template)
    del proto.pieces[:]
    present = set(model.pieces)
    for piece, score, kind in zip(model.pieces, model.scores, model.types):
        proto.pieces.append(pb.ModelProto.SentencePiece(piece=piece, score=float(score), type=int(kind)))
    for piece in BYTE_PIECES:
        if piece not in present:
            proto.pieces.append(pb.ModelProto.SentencePiece(piece=piece, score=0.0, type=BYTE))
    proto.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.vocab_size = len(proto.pieces)
    return proto.SerializeToString()


def _escapes_u2581(proto_bytes: bytes) -> bool:
    """Whether the model's normaliser is `units`' (U+2581 and U+E000 escaped, inverted on decode)."""
    sp = spm.SentencePieceProcessor(model_proto=proto_bytes)
    return sp.normalize(SPACE + ESCAPE) == escape(SPACE + ESCAPE)


def hf_tokenizer(proto_bytes: bytes) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` that segments like sentencepiece with this ModelProto."""
    proto = read_model_proto(proto_bytes)
    vocab = [(p.piece, p.score) for p in proto.pieces]
    unk_id = next(i for i, p in enumerate(proto.pieces) if p.type == UNKNOWN)
    tok = Tokenizer(models.Unigram(vocab, unk_id=unk_id, byte_fallback=proto.trainer_spec.byte_fallback))
    spec = proto.normalizer_spec
    steps: list[Any] = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPACE))
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPACE))
    tok.normalizer = normalizers.Sequence(steps)
    matchable = [p.piece for p in proto.pieces if p.type in (NORMAL, USER_DEFINED)]
    if proto.trainer_spec.split_by_whitespace and unit_mode(matchable) == "space":
        # Whitespace is already escaped, so Metaspace only splits before each "▁" (speed only:
        # no piece crosses such a cut, so the segmentation is that of the whole text).
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never", split=True)
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if _escapes_u2581(proto_bytes):  # on the whole decoded text: a code may span two pieces
        steps += [decoders.Replace(ESCAPE + "1", SPACE), decoders.Replace(ESCAPE + "2", ESCAPE)]
    if spec.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)
    special = [p.piece for p in proto.pieces if p.type in (CONTROL, UNKNOWN)]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    return tok


def hf_pretrained(proto_bytes: bytes) -> Any:
    """A ``transformers.PreTrainedTokenizerFast`` over `hf_tokenizer` with the model's unk, bos,
    eos and pad pieces (pad falls back to eos when the model has none) and no space clean-up."""
    from transformers import PreTrainedTokenizerFast

    sp = spm.SentencePieceProcessor(model_proto=proto_bytes)
    pad = sp.pad_id() if sp.pad_id() >= 0 else sp.eos_id()
    return PreTrainedTokenizerFast(
        tokenizer_object=hf_tokenizer(proto_bytes),
        unk_token=sp.id_to_piece(sp.unk_id()),
        bos_token=sp.id_to_piece(sp.bos_id()),
        eos_token=sp.id_to_piece(sp.eos_id()),
        pad_token=sp.id_to_piece(pad),
        clean_up_tokenization_spaces=False,
    )


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def save_hf(proto_bytes: bytes, out_dir: str | Path) -> list[Path]:
    """``save_pretrained`` of `hf_pretrained` into ``out_dir``, each file replaced atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = hf_pretrained(proto_bytes)
    with tempfile.TemporaryDirectory(dir=out, prefix=".hf-") as staging:
        tokenizer.save_pretrained(staging)
        # transformers 5 writes no special_tokens_map.json and names its own backend class;
        # older versions (and other tools) read these two.
        config_path = Path(staging) / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        special = {
            f"{name}_token": getattr(tokenizer, f"{name}_token") for name in ("bos", "eos", "unk", "pad")
        }
        (Path(staging) / "special_tokens_map.json").write_text(
            json.dumps(special, indent=2) + "\n", encoding="utf-8"
        )
        paths = []
        for name in HF_FILES:
            os.replace(Path(staging) / name, out / name)
            paths.append(out / name)
    return paths


def export(template: str | Path | bytes, model: UnigramModel, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``tokenizer.model`` and the Hugging Face files into ``out_dir``; returns the paths
    of ``tokenizer.model`` and ``tokenizer.json``."""
    out = Path(out_dir)
    proto_bytes = model_proto(template, model)
    sp_path = out / "tokenizer.model"
    _atomic_write(sp_path, proto_bytes)
    json_path = save_hf(proto_bytes, out)[0]
    return sp_path, json_path
