"""Generated-text metrics from the field's libraries: CIDEr (pycocoevalcap, the COCO caption
evaluation code) and BLEU-4 (sacrebleu), plus exact match for short answers.

pycocoevalcap's own PTBTokenizer runs a Java program; the captions here are tokenized as it
tokenizes English captions instead: lower-cased, punctuation removed, split on whitespace.
"""

from __future__ import annotations

import re
from typing import Sequence

_PUNCTUATION = re.compile(r"[^\w\s]")


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, single spaces: how answers and captions are compared."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def exact_match(prediction: str, answer: str) -> bool:
    """Whether the normalized prediction is the normalized answer (the VQA convention)."""
    return normalize(prediction) == normalize(answer)


def cider(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus CIDEr-D of `predictions` against one reference each (pycocoevalcap's Cider)."""
    from pycocoevalcap.cider.cider import Cider

    _check(predictions, references)
    refs = {i: [normalize(r)] for i, r in enumerate(references)}
    preds = {i: [normalize(p)] for i, p in enumerate(predictions)}
    score, _ = Cider().compute_score(refs, preds)
    return float(score)


def bleu4(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 (sacrebleu, 0-100) of `predictions` against one reference each."""
    import sacrebleu

    _check(predictions, references)
    result = sacrebleu.corpus_bleu([normalize(p) for p in predictions],
                                   [[normalize(r) for r in references]])
    return float(result.score)


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need as many predictions as references (at least one), got "
                         f"{len(predictions)} and {len(references)}")
