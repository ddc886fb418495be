"""Export a pruned Unigram vocabulary as sentencepiece ``.model`` and ``tokenizer.json`` (issue 5, item 5).

The ``.model`` is the initial model's ModelProto with its pieces replaced: normalizer and
trainer specs are kept, model type is UNIGRAM and byte fallback is on with the 256 ``<0xXX>``
pieces, so decode(encode(text)) == text for any text the normalizer leaves unchanged (use the
``identity`` normalization rule for an exact round trip). The ``tokenizer.json`` is built from
that same ModelProto for Hugging Face ``tokenizers`` / ``PreTrainedTokenizerFast``.

Known differences (inherent to ``tokenizers``' Unigram, which has no piece types): control and
``<unk>`` pieces are registered as special tokens, so their literal text (e.g. "<s>") becomes the
special token in ``tokenizer.json`` but plain characters in sentencepiece; a literal "<0x41>"
could match the byte piece in ``tokenizer.json``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from madapt.tokenizers.unigram import BYTE, CONTROL, SPACE, UNKNOWN, UnigramModel, read_model_proto

BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]


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


def hf_tokenizer(proto_bytes: bytes) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` that segments like sentencepiece with this ModelProto."""
    proto = read_model_proto(proto_bytes)
    vocab = [(p.piece, p.score) for p in proto.pieces]
    unk_id = next(i for i, p in enumerate(proto.pieces) if p.type == UNKNOWN)
    tok = Tokenizer(models.Unigram(vocab, unk_id=unk_id, byte_fallback=True))

    spec = proto.normalizer_spec
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPACE))
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPACE))
    tok.normalizer = normalizers.Sequence(steps)
    # Whitespace is already escaped, so Metaspace only splits before each "▁" like sentencepiece.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=SPACE, prepend_scheme="never", split=proto.trainer_spec.split_by_whitespace
    )
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if spec.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)
    special = [p.piece for p in proto.pieces if p.type in (CONTROL, UNKNOWN)]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    return tok


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def export(template: str | Path | bytes, model: UnigramModel, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``tokenizer.model`` and ``tokenizer.json`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    proto_bytes = model_proto(template, model)
    sp_path, json_path = out / "tokenizer.model", out / "tokenizer.json"
    _atomic_write(sp_path, proto_bytes)
    _atomic_write(json_path, hf_tokenizer(proto_bytes).to_str().encode("utf-8"))
    return sp_path, json_path
