"""The release boundary under DP: what a client's reply may carry, and the noise behind it.

Under DP a reply carries only the DP update, public bookkeeping and figures that are DP
themselves (noised and charged to the client's accountant). Two runs that differ only in their
secret noise must therefore release different figures: an unnoised loss on the sampled private
clips is the same in both (it is the public global model's loss on the private clips).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.client import handlers as client_handlers
from test_federated_messages import client_context, tiny_config, train_message

DP = {"privacy.enabled": "true", "privacy.noise-multiplier": 1.0, "client.local-epochs": 1}


@pytest.fixture(autouse=True)
def task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def public_bookkeeping() -> tuple[str, ...]:
    from fedmirasol.client.release import PUBLIC_BOOKKEEPING

    return PUBLIC_BOOKKEEPING


def released(reply) -> dict:
    return dict(reply.content.metric_records["metrics"])


def test_two_secret_noise_draws_release_no_common_private_figure() -> None:
    config = tiny_config(**DP)
    first, second = (released(client_handlers.handle_train(train_message(config, 1),
                                                           client_context()))
                     for _ in range(2))
    assert set(first) == set(second)
    for key in first:
        if key in public_bookkeeping() or key.startswith("dp-") and not key.endswith("-noised"):
            continue
        # every other figure depends on the private clips: it must be noised
        assert first[key] != second[key], f"{key} leaves the client unnoised"
    assert not {"train-loss", "train-class-loss", "steps", "proximal-term"} & set(first)
    # the noised loss figures are there, charged to the accountant with the update
    assert {"dp-loss-sum-noised", "dp-count-noised"} <= set(first)


def test_evaluation_on_the_private_split_releases_nothing_by_default() -> None:
    config = tiny_config(**DP)
    reply = client_handlers.handle_evaluate(train_message(config, 1), client_context())
    metrics = released(reply)
    assert not {"val-loss", "val-accuracy"} & set(metrics)
    assert set(metrics) <= set(public_bookkeeping()) | {k for k in metrics if k.startswith("dp-")}


def test_dp_evaluation_is_noised_and_charged() -> None:
    config = tiny_config(**DP, **{"privacy.eval-noise-multiplier": 2.0})
    context = client_context()
    trained = released(client_handlers.handle_train(train_message(config, 1), context))
    evaluated = released(client_handlers.handle_evaluate(train_message(config, 1), context))
    assert {"dp-eval-count-noised", "dp-eval-correct-noised",
            "dp-eval-loss-sum-noised"} <= set(evaluated)
    assert "val-accuracy" not in evaluated
    assert evaluated["dp-epsilon"] > trained["dp-epsilon"]  # the evaluation was charged


def test_a_declared_public_evaluation_split_is_released_and_labelled() -> None:
    config = tiny_config(**DP)
    context = client_context()
    context.node_config["privacy.eval-split"] = "public"
    metrics = released(client_handlers.handle_evaluate(train_message(config, 1), context))
    assert {"val-accuracy", "val-loss"} <= set(metrics)
    assert metrics["eval-split-public"] == 1


def test_dp_sgd_noise_comes_from_a_csprng_not_torch_or_numpy_global_state() -> None:
    import torch

    from fedmirasol.privacy.secure_noise import SecureNoise

    torch.manual_seed(0)
    np.random.seed(0)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    noise = SecureNoise()
    draws = noise.normal((200_000,), std=1.0)
    assert draws.dtype == torch.float64
    assert abs(float(draws.mean())) < 0.01 and abs(float(draws.std()) - 1.0) < 0.01
    assert not torch.equal(draws[:100], SecureNoise().normal((100,), std=1.0))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


def test_client_level_noise_is_float64_from_a_csprng() -> None:
    from fedmirasol.privacy.client_level import noise_aggregate

    np.random.seed(0)
    numpy_state = np.random.get_state()[1].copy()
    # a mean that float32 cannot hold next to small noise: the sum must be formed in float64
    mean = {"w": np.full(50_000, 1.0, dtype=np.float64)}
    noised = noise_aggregate(mean, clip_norm=1e-3, noise_multiplier=1.0, num_sampled=1)
    assert np.array_equal(np.random.get_state()[1], numpy_state)  # not numpy's global RNG
    assert noised["w"].dtype == np.float64
    noise = noised["w"] - 1.0
    assert math.isclose(float(noise.std()), 1e-3, rel_tol=0.02)
