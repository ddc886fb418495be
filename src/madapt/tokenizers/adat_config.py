"""The options of recipe ``kind: adat`` (seed 000 ch. 5), each with the section it comes from.

`tokenizers.adat` runs them; the fields are documented here, one pydantic model per part:
the scoring LM, a pruning variant (Table 5.5 ablations), the evaluation, BytePiece's trainer.
"""

from __future__ import annotations

import itertools
import re
from typing import Literal

from pydantic import Field, model_validator

from madapt.config import Strict
from madapt.errors import ConfigError
from madapt.tokenizers import evaluate as ev
from madapt.tokenizers.bytepiece import BytePieceSettings
from madapt.tokenizers.lm_scoring import LMSettings

BASELINES = ("unigram", "bpe", "bytepiece")


class LMConfig(Strict):
    preset: str = Field("pythia-micro", description="a GPT-NeoX preset from madapt.backbones.causal_lm")
    seq_len: int = Field(128, ge=8, description="Pythia: 2048")
    batch_size: int = Field(16, gt=0, description="sequences per step (Pythia: 1024)")
    lr: float = Field(1e-3, gt=0, description="Pythia-70M: 1e-3")
    weight_decay: float = Field(0.1, ge=0)
    warmup_frac: float = Field(0.01, ge=0, le=1, description="Pythia: 1% warmup")
    eval_batch_size: int = Field(32, gt=0)

    def settings(self) -> LMSettings:
        return LMSettings(**self.model_dump())


class VariantConfig(Strict):
    name: str = Field("adat", pattern=r"^[A-Za-z0-9_.-]+$")
    balance: Literal["ratio", "diff", "logdiff"] = Field("ratio", description="Table 5.5: F(a, b)")
    lam: float = Field(1.0, gt=0, description="λ of eq. 5.4")
    beta: float = Field(0.9, ge=0, description="momentum β of eq. 5.5 (0 = no momentum)")
    momentum_on: Literal["score", "lm_loss"] = Field("score", description="what eq. 5.5 smooths")


# The nine lm-eval tasks of Table 5.1 (names of lm-evaluation-harness 0.4).
TABLE_5_1_TASKS = (
    "arc_challenge",
    "arc_easy",
    "boolq",
    "lambada_openai",
    "logiqa",
    "piqa",
    "sciq",
    "sst2",
    "winogrande",
)


class LMEvalConfig(Strict):
    """lm-evaluation-harness tasks (§5.4.1.4: five-shot ARC-C/E, BoolQ, LAMBADA, LogiQA, PIQA, SciQ,
    SST-2, Winogrande, `TABLE_5_1_TASKS`); needs the ``lm-eval`` extra and Hub access or local copies
    of the data (``data_root``)."""

    tasks: list[str] = Field(min_length=1, description="lm-eval task names, e.g. arc_easy, piqa")
    num_fewshot: int = Field(5, ge=0, description="§5.4.1.4: five-shot")
    limit: int | None = Field(None, gt=0, description="examples per task (None = all)")
    batch_size: int = Field(8, gt=0)
    data_root: str | None = Field(
        None,
        description="a Hugging Face cache folder holding the tasks' datasets "
        "(lm-eval's offline guide); read offline. None = download from the Hub",
    )

    @model_validator(mode="after")
    def _check(self) -> LMEvalConfig:
        for task in self.tasks:
            if not re.fullmatch(r"[A-Za-z0-9_.\-]+", task):
                raise ConfigError(
                    "evaluate.lm_eval.tasks",
                    f"'{task}' is not a task name",
                    "lm-eval task names such as arc_easy or lambada_openai",
                )
        repeated = [t for t in self.tasks if self.tasks.count(t) > 1]
        if repeated:
            raise ConfigError("evaluate.lm_eval.tasks", f"'{repeated[0]}' is listed twice", "each task once")
        return self

    def spec(self) -> ev.LMEvalSpec:
        return ev.LMEvalSpec(tuple(self.tasks), self.num_fewshot, self.limit, self.batch_size, self.data_root)


class BytePieceConfig(Strict):
    """BytePiece trainer arguments (bojone/bytepiece 0.6 defaults; `tokenizers.bytepiece`)."""

    order: int = Field(6, ge=2, le=8, description="byte n-gram order")
    max_piece_length: int = Field(36, gt=0, description="bytes")
    min_count: int = Field(2, gt=0)
    isolate_digits: bool = False

    def settings(self) -> BytePieceSettings:
        return BytePieceSettings(**self.model_dump())


class EvalConfig(Strict):
    enabled: bool = True
    lm_eval: LMEvalConfig | None = Field(None, description="optional lm-evaluation-harness tasks")
    baselines: list[Literal["unigram", "bpe", "bytepiece"]] = Field(
        default_factory=lambda: list(BASELINES), description="Table 5.1's baselines"
    )
    epochs: int = Field(
        2,
        gt=0,
        description="passes over the training text (under equal steps: by the "
        "tokenizer with the fewest tokens)",
    )
    protocol: Literal["steps", "bytes"] = Field(
        "steps",
        description="steps: every LM takes the same optimizer steps (tokenizers.evaluate.equal_steps); "
        "bytes: the same passes over the same text, so finer tokenizers get more steps (§5.4.2)",
    )
    train_bytes: int | None = Field(None, gt=0, description="cap on training text bytes (None = all)")
    lm: LMConfig | None = Field(None, description="evaluation LM; default: the scoring LM")


class AdatConfig(Strict):
    kind: Literal["adat"]
    seed: int = 0
    seeds: list[int] | None = Field(
        None,
        min_length=1,
        description="run everything once per seed (held-out "
        "split, initial sample, LMs, sampling) and report mean ± std; None = seed",
    )
    threads: int = Field(1, ge=1, description="torch intra-op threads (1 is fastest for micro models)")
    corpus: str = Field(
        "stdlib_docstrings", description="a bundled corpus name or a .txt/.jsonl(.xz/.gz) path"
    )
    max_corpus_bytes: int | None = Field(None, gt=0, description="read the file's first documents up to this")
    score_fraction: float = Field(
        0.1,
        gt=0,
        lt=0.5,
        description="documents held out (spread evenly) for the LM loss b (§5.4.2: 0.1B tokens)",
    )
    score_bytes: int | None = Field(
        None,
        gt=0,
        description="read at most this many bytes of the scoring slice "
        "(Tables 5.5/5.11: inference data 1M-1000M tokens); None = all of it",
    )
    eval_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="documents held out (spread evenly) for the evaluation"
    )
    unigram_docs: int | None = Field(
        None,
        gt=0,
        description="seeded sample of training documents for the initial vocabulary, the removal "
        "loss a, EM and the baseline vocabularies (sentencepiece's input_sentence_size); None = every one",
    )
    initial: Literal["unigram", "bytepiece"] = Field(
        "unigram", description="initial vocabulary (Table 5.1: ADAT on Unigram or on BytePiece)"
    )
    bytepiece: BytePieceConfig = BytePieceConfig()
    initial_vocab: int = Field(8000, gt=0, description="§5.4.2: 150k in the paper")
    target_vocab: int = Field(2000, gt=0, description="paper: 50k")
    rounds: int = Field(3, gt=0, description="paper: 5 (used when no schedule is given)")
    schedule: list[int] | None = Field(None, description="vocabulary size after each round")
    character_coverage: float = Field(0.9995, gt=0, le=1)
    sampling_alpha: float | Literal["auto"] = Field(
        "auto",
        description="sampling smoothing α: P(seg) ∝ exp(α Σ log p) (§5.3.2.1); auto = the smallest α "
        "whose sampled segmentation stays within max_length_ratio of Viterbi's length, per round",
    )
    max_length_ratio: float = Field(1.2, gt=1, description="bound on sampled/Viterbi tokens for auto α")
    calibration_docs: int = Field(512, gt=0, description="documents the auto α is calibrated on (each round)")
    round_train_tokens: int = Field(
        200_000,
        gt=0,
        description="LM training tokens per round (paper ~0.3B); "
        "each round reads on from where the previous one stopped",
    )
    reestimate_iters: int = Field(2, ge=0, description="EM iterations after each pruning")
    unseen_pieces: Literal["evidence", "literal"] = Field(
        "evidence",
        description="pieces absent from the scoring slice: scored on unseen training text "
        "(tokenizers.evidence), or eq. 5.3 literally (b = 0, ratio score +inf)",
    )
    evidence_fraction: float = Field(
        1.0, ge=0, description="evidence text scored per round, at most this times the scoring slice's tokens"
    )
    lm: LMConfig = LMConfig()
    variants: list[VariantConfig] = Field(default_factory=lambda: [VariantConfig()], min_length=1)
    evaluate: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _check(self) -> AdatConfig:
        if self.target_vocab > self.initial_vocab:
            raise ConfigError(
                "target_vocab",
                f"{self.target_vocab} is larger than initial_vocab {self.initial_vocab}",
                "a target no larger than the initial vocabulary (pruning only removes pieces)",
            )
        sizes = self.sizes()
        if sizes[-1] != self.target_vocab:
            raise ConfigError(
                "schedule",
                f"{sizes} ends at {sizes[-1]}, not target_vocab {self.target_vocab}",
                "a schedule whose last size is the target",
            )
        steps = [self.initial_vocab, *sizes]
        if any(b > a for a, b in itertools.pairwise(steps)):
            raise ConfigError(
                "schedule",
                f"{sizes} grows somewhere after initial_vocab {self.initial_vocab}",
                "non-increasing sizes from initial_vocab down to target_vocab",
            )
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("seeds", f"{self.seeds} repeats a seed", "distinct seeds")
        names = [v.name for v in self.variants]
        clash = [n for n in names if n in BASELINES or names.count(n) > 1]
        if clash:
            raise ConfigError("variants", f"name '{clash[0]}' is repeated or a baseline name", "unique names")
        if self.round_train_tokens < self.lm.seq_len:
            raise ConfigError(
                "round_train_tokens", f"{self.round_train_tokens}", f">= lm.seq_len ({self.lm.seq_len})"
            )
        return self

    def seeded(self, seed: int) -> AdatConfig:
        """This config for one seed alone."""
        return self.model_copy(update={"seed": seed, "seeds": None})

    def sizes(self) -> list[int]:
        """Vocabulary size after each round: the schedule, or a linear one (as in the reference notes)."""
        if self.schedule:
            return list(self.schedule)
        drop = self.initial_vocab - self.target_vocab
        return [self.initial_vocab - round(drop * (r + 1) / self.rounds) for r in range(self.rounds)]
