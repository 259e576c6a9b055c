"""Answer-quality metrics: SQuAD exact match and F1, ROUGE-L (rouge-score), BLEU (sacrebleu)."""

from __future__ import annotations

import re
import string
from collections import Counter

import pandas as pd
from nltk.stem import porter
from rouge_score import rouge_scorer
from rouge_score.tokenizers import Tokenizer
from sacrebleu.metrics import BLEU

from tunebook import quality


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, references: list[str]) -> float:
    return max(float(normalize_answer(prediction) == normalize_answer(ref)) for ref in references)


def answer_words(text: str) -> list[str]:
    """SQuAD's tokens: the words of the normalised answer."""
    return normalize_answer(text).split()


def token_f1(prediction: str, references: list[str]) -> float:
    return max(_f1(answer_words(prediction), answer_words(ref)) for ref in references)


def token_precision_recall(prediction: str, reference: str) -> tuple[float, float]:
    """SQuAD's token overlap: the share of the prediction's words that are in the reference, and of the
    reference's words that are in the prediction (0 where there are no words)."""
    return _precision_recall(answer_words(prediction), answer_words(reference))


def _f1(predicted: list[str], reference: list[str]) -> float:
    if not predicted or not reference:
        return float(predicted == reference)
    precision, recall = _precision_recall(predicted, reference)
    return 2 * precision * recall / (precision + recall) if precision else 0.0


def _precision_recall(predicted: list[str], reference: list[str]) -> tuple[float, float]:
    common = sum((Counter(predicted) & Counter(reference)).values())
    return common / max(1, len(predicted)), common / max(1, len(reference))


class UnicodeTokenizer(Tokenizer):
    """rouge-score's default tokenizer drops every non-ASCII character, so "café" scores 0 against
    itself; this one keeps Unicode words and applies the same Porter stemming to ASCII ones."""

    def __init__(self) -> None:
        self._stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        return [self._stemmer.stem(w) if w.isascii() and len(w) > 3 else w for w in quality.words(text)]


_ROUGE = rouge_scorer.RougeScorer(["rougeL"], tokenizer=UnicodeTokenizer())


def rouge_l(prediction: str, references: list[str]) -> float:
    return max(_ROUGE.score(ref, prediction)["rougeL"].fmeasure for ref in references)


def sentence_bleu(prediction: str, references: list[str]) -> float:
    return BLEU(effective_order=True).sentence_score(prediction, references).score


def corpus_bleu(predictions: list[str], references: list[str]) -> tuple[float, str]:
    """Corpus BLEU (0-100) and sacrebleu's signature, which says exactly how it was computed."""
    bleu = BLEU()
    return bleu.corpus_score(predictions, [references]).score, str(bleu.get_signature())


def score_examples(predictions: list[str], references: list[str]) -> pd.DataFrame:
    """Per-example metrics in [0, 1] (BLEU in 0-100, as sacrebleu reports it)."""
    rows = []
    for prediction, reference in zip(predictions, references, strict=True):
        refs = [reference]
        rows.append(
            {
                "exact_match": exact_match(prediction, refs),
                "f1": token_f1(prediction, refs),
                "rouge_l": rouge_l(prediction, refs),
                "bleu": sentence_bleu(prediction, refs),
            }
        )
    return pd.DataFrame(rows, columns=["exact_match", "f1", "rouge_l", "bleu"])
