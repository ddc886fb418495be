"""ADAT tokenizers (seed 000, chapter 5): Unigram likelihood and removal loss, LM-loss scoring, export."""

from madapt.tokenizers.export import export, hf_tokenizer, model_proto
from madapt.tokenizers.sampling import SegmentationSampler
from madapt.tokenizers.scoring import LossAccumulator, adat_score, carry_over, momentum, prune
from madapt.tokenizers.unigram import (
    UnigramModel,
    WordCorpus,
    corpus_loglik,
    corpus_loglik_without,
    exact_removal_loss,
    viterbi,
    word_counts,
    word_logliks,
)
from madapt.tokenizers.unigram_round import expected_counts, reestimate_scores, removal_loss

__all__ = [
    "LossAccumulator",
    "SegmentationSampler",
    "UnigramModel",
    "WordCorpus",
    "adat_score",
    "carry_over",
    "corpus_loglik",
    "corpus_loglik_without",
    "exact_removal_loss",
    "expected_counts",
    "export",
    "hf_tokenizer",
    "model_proto",
    "momentum",
    "prune",
    "reestimate_scores",
    "removal_loss",
    "viterbi",
    "word_counts",
    "word_logliks",
]
