"""The personalization methods, one class each, by their `personalization.method` name.

A method decides how a client's round trains (`train_round`) and what its personalized model
is at evaluation (`personal_result`). The algorithms themselves live in one file each
(fedrep.py, ditto.py, reptile.py, perfedavg.py, adaptation.py). A new method is a subclass here
(or in its own file) and one line in `METHODS`, with its name in
`fedmirasol.config.personalization.METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Mapping

import numpy as np
import torch
from flwr.app import RecordDict
from torch import nn

from fedmirasol.config.personalization import PersonalizationConfig
from fedmirasol.core.parameters import load_state
from fedmirasol.data.batch import Batch
from fedmirasol.personalization.ditto import load_personal_model, train_personal
from fedmirasol.personalization.fedrep import train_fedrep
from fedmirasol.personalization.perfedavg import train_perfedavg
from fedmirasol.personalization.reptile import train_reptile
from fedmirasol.personalization.trainable import MakeOptimizer, restored_afterwards
from fedmirasol.training.loop import ExtraLoss, evaluate

# The client's ordinary local-training pass over its data (plain or DP-SGD), on `model`.
TrainPass = Callable[[nn.Module], dict[str, float]]
Result = Mapping[str, float]  # {"accuracy": ..., "loss": ...}


@dataclass(frozen=True)
class LocalWork:
    """What a client's round works with."""

    model: nn.Module
    loader: Iterable[Batch]  # the client's training batches
    make_optimizer: MakeOptimizer
    train_pass: TrainPass
    epochs: int
    personal: tuple[str, ...]  # state_dict names kept on the client (never sent)
    global_shared: Mapping[str, np.ndarray]
    state: RecordDict
    device: torch.device | str = "cpu"
    extra_loss: ExtraLoss | None = None


class PersonalizationMethod:
    """FedAvg's behaviour: the ordinary local pass, no personalized model of its own."""

    name: ClassVar[str] = "none"

    def __init__(self, settings: PersonalizationConfig) -> None:
        self.settings = settings

    def train_round(self, work: LocalWork) -> dict[str, float]:
        return work.train_pass(work.model)

    def personal_result(self, model: nn.Module, val_loader: Iterable[Batch], state: RecordDict,
                        global_result: Result, adapted: Result | None,
                        device: torch.device | str) -> Result | None:
        """The personalized model's accuracy and loss (None: the method has none); `adapted`
        is the locally adapted model's when `adapt-steps > 0`."""
        return adapted


class FedPer(PersonalizationMethod):
    """Personal layers stay on the client (never sent); the round trains like FedAvg."""

    name = "fedper"

    def personal_result(self, model, val_loader, state, global_result, adapted, device):  # noqa: ANN001, ANN201
        return global_result  # the global body with the client's own layers


class FedRep(FedPer):
    """Personal-head epochs, then shared-body epochs."""

    name = "fedrep"

    def train_round(self, work: LocalWork) -> dict[str, float]:
        return train_fedrep(work.model, work.loader, work.make_optimizer, personal=work.personal,
                            head_epochs=self.settings.head_epochs,
                            body_epochs=self.settings.body_epochs, device=work.device,
                            extra_loss=work.extra_loss)


class Ditto(PersonalizationMethod):
    """A personal model pulled towards the global one, kept in the client's state."""

    name = "ditto"

    def train_round(self, work: LocalWork) -> dict[str, float]:
        model = work.model
        with restored_afterwards(model):
            extra = train_personal(model, work.loader, work.make_optimizer, state=work.state,
                                   global_shared=work.global_shared, lam=self.settings.lam,
                                   epochs=self.settings.personal_epochs, device=work.device)
        model.to(work.device)
        return {**work.train_pass(model), **extra}

    def personal_result(self, model, val_loader, state, global_result, adapted, device):  # noqa: ANN001, ANN201
        stored = load_personal_model(state)
        with restored_afterwards(model):
            if stored is not None:
                load_state(model, stored)
            return evaluate(model, val_loader, device=device)


class Reptile(PersonalizationMethod):
    """First-order meta-learning; the personalized model is the locally adapted one."""

    name = "reptile"

    def train_round(self, work: LocalWork) -> dict[str, float]:
        return train_reptile(work.model, work.loader, inner_lr=self.settings.inner_lr,
                             meta_lr=self.settings.meta_lr, epochs=work.epochs,
                             device=work.device, extra_loss=work.extra_loss)


class PerFedAvg(Reptile):
    """Per-FedAvg (first order); the personalized model is the locally adapted one."""

    name = "perfedavg"

    def train_round(self, work: LocalWork) -> dict[str, float]:
        return train_perfedavg(work.model, work.loader, work.make_optimizer(work.model, None),
                               alpha=self.settings.inner_lr, epochs=work.epochs,
                               device=work.device, extra_loss=work.extra_loss)


METHODS: dict[str, type[PersonalizationMethod]] = {
    cls.name: cls for cls in (PersonalizationMethod, FedPer, FedRep, Ditto, Reptile, PerFedAvg)
}


def method(settings: PersonalizationConfig) -> PersonalizationMethod:
    return METHODS[settings.method](settings)
