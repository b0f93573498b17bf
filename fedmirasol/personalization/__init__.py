"""Personalization: personal layers (FedPer), FedRep, Ditto, local adaptation and first-order
meta-learning (Reptile, Per-FedAvg), one class each in `registry`; `dispatch` holds the entry
points the client task calls."""

from fedmirasol.personalization.dispatch import evaluate_personal, reply_metrics, train_round
from fedmirasol.personalization.registry import METHODS, LocalWork

__all__ = ["METHODS", "LocalWork", "evaluate_personal", "reply_metrics", "train_round"]
