"""The generated-text scores of a round's record (the videoqa task): per client, over the
clients (each score weighted by the client's count of what it averages: questions of the
type, captions) and on the server's test set. Keys: ``<where>_exact_match``,
``<where>_em_<type>``, ``<where>_cider``, ``<where>_bleu4``.

Clients' CIDEr is computed over each client's own captions (its IDF from them); their
weighted mean is not the corpus CIDEr of all captions, which the server's test set gives.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from fedmirasol.core.metrics import weighted_mean
from fedmirasol.training.text_eval import count_key, is_text_metric


def _plain(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """``val-em-shape`` -> ``em_shape`` for the text metrics of a reply."""
    plain = {key[len(prefix):].replace("-", "_"): value for key, value in metrics.items()
             if key.startswith(prefix)}
    return {key: value for key, value in plain.items() if is_text_metric(key)}


def client_text(val: Mapping[str, Any]) -> dict[str, float]:
    """A client's text scores and counts as its row in the round record (``val_em_shape``)."""
    return {f"val_{key}": value for key, value in _plain(val, "val-").items()}


def federated_text(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Each score over the clients, weighted by the client's count behind it."""
    plain = [_plain(row, "val-") for row in rows]
    scores = sorted({key for row in plain for key in row if count_key(key)})
    means = {f"federated_{key}": weighted_mean(plain, key, count_key(key)) for key in scores}
    return {key: value for key, value in means.items() if value is not None}


def central_text(central: Mapping[str, Any]) -> dict[str, float]:
    """The server's test-set scores (``test-em-shape`` -> ``centralized_em_shape``)."""
    return {f"centralized_{key}": value for key, value in _plain(central, "test-").items()
            if count_key(key)}
