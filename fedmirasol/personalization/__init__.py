"""Personalization: personal layers (FedPer), FedRep, Ditto, local adaptation and first-order
meta-learning (Reptile, Per-FedAvg). `dispatch` is the one entry point of the client task."""

from fedmirasol.personalization.dispatch import (
    LocalWork,
    evaluate_personal,
    reply_metrics,
    train_round,
)
from fedmirasol.personalization.settings import (
    LAYER_PRESETS,
    METHODS,
    PersonalizationSettings,
)

__all__ = ["LAYER_PRESETS", "METHODS", "LocalWork", "PersonalizationSettings",
           "evaluate_personal", "reply_metrics", "train_round"]
