"""A DP round record's means over clients: from clear figures only, and only when every
evaluating client's site declared its validation split public."""

from __future__ import annotations

import pytest

from fedmirasol.privacy.round_figures import dp_round_figures

TRAIN = {0: {"dp-loss-sum-noised": 4.0, "dp-count-noised": 8.0}}


def _public(accuracy: float, personal: float, examples: float) -> dict[str, float]:
    return {"eval-split-public": 1.0, "val-accuracy": accuracy, "val-loss": 1.0,
            "personal-accuracy": personal, "num-examples": examples}


def test_all_public_splits_give_the_means_over_clients() -> None:
    figures = dp_round_figures(TRAIN, {0: _public(0.5, 0.9, 10), 1: _public(1.0, 0.7, 30)})
    assert figures["federated_accuracy_client_mean"] == pytest.approx(0.75)
    assert figures["personal_accuracy_client_mean"] == pytest.approx(0.8)
    assert figures["federated_accuracy"] == pytest.approx((5 + 30) / 40)  # pooled
    assert figures["privacy_figures"]["clear-from-public-split"] == [0, 1]


def test_a_noised_client_leaves_no_mean_over_clients() -> None:
    noised = {"dp-eval-correct-noised": 3.2, "dp-eval-personal-correct-noised": 4.1,
              "dp-eval-count-noised": 5.3, "dp-eval-loss-sum-noised": 6.0}
    figures = dp_round_figures(TRAIN, {0: _public(0.5, 0.9, 10), 1: noised})
    assert figures["federated_accuracy_client_mean"] is None
    assert figures["personal_accuracy_client_mean"] is None
    assert figures["federated_accuracy"] == pytest.approx((5 + 3.2) / (10 + 5.3))
    assert figures["personal_accuracy"] == pytest.approx((9 + 4.1) / (10 + 5.3))
