"""Centralized evaluation of the global model on the server's held-out test set.

Under a split (FedBN), the server has no client's local parameters: it evaluates the shared
parameters together with the initial local ones, which is what a new client would start from.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch

from fedmirasol.config import RunConfig
from fedmirasol.task import data as client_data
from fedmirasol.task.model import init_model
from fedmirasol.core.parameters import load_state, model_state
from fedmirasol.task.model import parameter_split
from fedmirasol.training.device import resolve_device
from fedmirasol.training.loop import evaluate
from fedmirasol.training.text_eval import text_reply_metrics
from fedmirasol.training.pretrain_eval import OBJECTIVE_METRICS

EvaluateFn = Callable[[Mapping[str, np.ndarray]], dict[str, float]]


def make_evaluate_fn(config: RunConfig, device: str = "cpu") -> EvaluateFn:
    """`fn(global_shared) -> {"test-loss", "test-accuracy", "num-examples"}`; for the
    videoqa task, the generated text's scores (``test-exact-match``, ``test-em-<type>``,
    ``test-cider``, ``test-bleu4``, with their counts), with a pre-training objective its
    figures (``test-knn_accuracy``, ``test-v2t_r1``, ...: the keys of `OBJECTIVE_METRICS` after
    ``test-``); under a targeted attack (backdoor,
    label flipping) `"attack-success-rate"`: the accuracy on the test set poisoned the attack's
    way (`task.data.attack_test_dataset`).

    The model and the test set are built on the first call: a run that never evaluates
    centrally (`server.evaluate-every = 0`) never renders the test set."""
    built: dict[str, Any] = {}

    def evaluate_global(global_shared: Mapping[str, np.ndarray]) -> dict[str, float]:
        if not built:
            model = init_model(config)
            built.update(model=model, target=resolve_device(device),
                         initial_local=model_state(model, parameter_split(model, config).local),
                         test_loader=client_data.loader(client_data.test_dataset(config),
                                                        config.client.eval_batch_size,
                                                        shuffle=False))
            poisoned = client_data.attack_test_dataset(config)
            built["attack_loader"] = None if poisoned is None else client_data.loader(
                poisoned, config.client.eval_batch_size, shuffle=False)
        model, initial_local, target = built["model"], built["initial_local"], built["target"]
        test_loader = built["test_loader"]
        load_state(model, global_shared)
        load_state(model, initial_local)
        model.to(target)
        result = evaluate(model, test_loader, device=target,
                          generation=config.task.generation())
        figures = {"test-loss": result["loss"], "test-accuracy": result["accuracy"],
                   "num-examples": result["num_examples"], **text_reply_metrics(result, "test-"),
                   **{f"test-{key}": result[key] for key in OBJECTIVE_METRICS if key in result}}
        if built["attack_loader"] is not None:
            figures["attack-success-rate"] = evaluate(model, built["attack_loader"],
                                                      device=target)["accuracy"]
        model.to("cpu")
        return figures

    return evaluate_global


def full_state(config: RunConfig, global_shared: Mapping[str, np.ndarray]
               ) -> dict[str, torch.Tensor]:
    """A complete state_dict: the global shared parameters plus the initial local ones."""
    model = init_model(config)
    load_state(model, global_shared)
    return model.state_dict()


def central_objective(central: Mapping[str, Any]) -> dict[str, float]:
    """A pre-training objective's test-set figures as round-record keys (``centralized_v2t_r1``)."""
    return {f"centralized_{key}": central[f"test-{key}"] for key in OBJECTIVE_METRICS
            if f"test-{key}" in central}
