"""FedProx: the client's proximal term mu/2 ||w - w_global||^2 pulls its update towards the
global model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import RecordDict
from torch import nn

from fedmirasol.client import task as client_task
from fedmirasol.core.parameters import ParameterSplit, model_state
from fedmirasol.core.proximal import proximal_term
from fedmirasol.config import load_config


def test_proximal_term_value_and_gradient() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    anchor = {name: (p.detach().numpy() + 0.5).astype(np.float32)
              for name, p in model.named_parameters() if name.startswith("0.")}
    term = proximal_term(0.3, anchor)(model)
    distance = sum(float(((p.detach().numpy() - anchor[n]) ** 2).sum())
                   for n, p in model.named_parameters() if n in anchor)
    assert math.isclose(float(term.detach()), 0.15 * distance, rel_tol=1e-5)
    term.backward()
    for name, param in model.named_parameters():
        if name in anchor:  # d/dw = mu (w - w_global): points away from the anchor
            np.testing.assert_allclose(param.grad.numpy(),
                                       0.3 * (param.detach().numpy() - anchor[name]), rtol=1e-5)
        else:  # parameters that are not shared (the LayerNorm here) are not pulled
            assert param.grad is None


def test_proximal_term_is_zero_at_the_global_model() -> None:
    model = nn.Linear(4, 4)
    anchor = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    assert float(proximal_term(1.0, anchor)(model).detach()) == 0.0
    with pytest.raises(ValueError):
        proximal_term(-1.0, anchor)


def update_norm(mu: float) -> float:
    config = load_config(None, [
        "data.num-clients=2", "data.clips-per-client=12", "data.test-clips=4",
        "model.num-frames=8", "client.batch-size=4", "client.local-epochs=2",
        "client.optimizer=sgd", "client.lr=0.05", "client.momentum=0.0",
    ])
    model = client_task.init_model(config)
    split = ParameterSplit.from_model(model, "")
    global_shared = model_state(model, split.shared)
    result = client_task.train(config, 0, 1, global_shared, RecordDict(), proximal_mu=mu)
    assert result.metrics["proximal-term"] >= 0.0
    return math.sqrt(sum(float((v.astype(np.float64) ** 2).sum())
                         for v in result.update.values()))


def test_fedprox_update_is_pulled_towards_the_global_model() -> None:
    torch.manual_seed(0)
    free, pulled, strongly_pulled = update_norm(0.0), update_norm(1.0), update_norm(4.0)
    assert free > pulled > strongly_pulled > 0
