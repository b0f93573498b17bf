"""Ditto (Li et al., 2021): a personal model beside the client's contribution to the global one.

Each round the client (1) trains its personal model v for `personal_epochs` on
``loss(v) + lambda/2 ||v - w_global||^2`` (w_global: the model it just received), keeping v in
its state, and (2) trains the global model as FedAvg does and sends that update. lambda = 0
leaves v purely local; a large lambda pins it to the global model.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from flwr.app import RecordDict
from torch import nn

from fedmirasol.core.parameters import NumpyState, from_record, load_state, to_record
from fedmirasol.core.proximal import proximal_term
from fedmirasol.personalization.trainable import MakeOptimizer, TrainOnData, full_state

PERSONAL_MODEL_KEY = "ditto-personal-model"  # ArrayRecord in the client's context.state


def load_personal_model(state: RecordDict) -> NumpyState | None:
    """The client's personal model (every state_dict entry), or None before its first round."""
    record = state.array_records.get(PERSONAL_MODEL_KEY)
    return None if record is None else from_record(record)


def save_personal_model(state: RecordDict, values: NumpyState) -> None:
    state[PERSONAL_MODEL_KEY] = to_record(values)


def train_personal(model: nn.Module, train: TrainOnData, make_optimizer: MakeOptimizer, *,
                   state: RecordDict, global_shared: Mapping[str, np.ndarray], lam: float,
                   epochs: int) -> dict[str, float]:
    """Ditto's personal step: load v (the received model on the first round), train it with
    the lambda-proximal term towards `global_shared` (a pass of `train`: DP-SGD under DP; the
    term reads no data), store it. The model is left holding v."""
    personal = load_personal_model(state)
    if personal is not None:
        load_state(model, personal)
    extra = proximal_term(lam, global_shared) if lam > 0 else None
    result = train(model, make_optimizer(model, None), epochs=epochs, extra_loss=extra)
    model.to("cpu")
    save_personal_model(state, full_state(model))
    return {"personal-loss": result["loss"], "personal-steps": result["steps"],
            "personal-proximal-term": result.get("loss_extra", 0.0)}
