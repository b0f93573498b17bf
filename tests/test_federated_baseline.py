"""The centralized baseline of `fedmirasol simulate --baseline`."""

from __future__ import annotations

from fedmirasol.task import data as client_data
from fedmirasol.engines.centralized_baseline import centralized_baseline
from fedmirasol.config import load_config


def test_baseline_trains_on_the_pooled_client_data_and_tests_on_the_server_set():
    config = load_config(None, [
        "data.num-clients=2", "data.clips-per-client=12", "data.test-clips=16",
        "data.partitioner='iid'", "data.min-partition-size=1", "num-rounds=1",
        "client.local-epochs=2",
    ])
    result = centralized_baseline(config)
    assert result["centralized_baseline_examples"] == len(client_data.pooled_train(config))
    assert result["centralized_baseline_epochs"] == 2.0  # num-rounds x local-epochs
    assert 0.0 <= result["centralized_baseline_accuracy"] <= 1.0
    assert result["centralized_baseline_loss"] > 0
