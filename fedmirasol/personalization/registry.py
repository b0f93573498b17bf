"""The personalization methods, one class each, by their `personalization.method` name.

A method decides how a client's round trains (`train_round`) and what its personalized model
is at evaluation (`personal_result`). The algorithms themselves live in one file each
(fedrep.py, ditto.py, reptile.py, perfedavg.py, adaptation.py). A new method is a subclass here
(or in its own file) and one line in `METHODS`, with its name in
`fedmirasol.config.personalization.METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable, Mapping

import numpy as np
import torch
from flwr.app import RecordDict
from torch import nn

from fedmirasol.config.personalization import PersonalizationConfig
from fedmirasol.core.parameters import load_state
from fedmirasol.data.batch import Batch
from fedmirasol.personalization.ditto import load_personal_model, train_personal
from fedmirasol.personalization.fedrep import train_fedrep
from fedmirasol.personalization.perfedavg import train_perfedavg, train_perfedavg_private
from fedmirasol.personalization.reptile import train_reptile
from fedmirasol.personalization.trainable import MakeOptimizer, TrainOnData, restored_afterwards
from fedmirasol.training.loop import ExtraLoss, evaluate

Result = Mapping[str, float]  # {"accuracy": ..., "loss": ...}


@dataclass(frozen=True)
class LocalWork:
    """What a client's round works with. Every pass over the private data goes through
    `train`, so under DP each one is DP-SGD, accounted in the same accountant."""

    model: nn.Module
    loader: Iterable[Batch]  # the client's training batches (plain training)
    make_optimizer: MakeOptimizer
    train: TrainOnData
    epochs: int
    personal: tuple[str, ...]  # state_dict names kept on the client (never sent)
    global_shared: Mapping[str, np.ndarray]
    state: RecordDict
    device: torch.device | str = "cpu"
    extra_loss: ExtraLoss | None = None
    private: bool = False  # train is DP-SGD
    steps_per_epoch: int = 0  # under DP: int(1 / q)

    def train_pass(self, model: nn.Module) -> dict[str, float]:
        """The ordinary local training: `epochs` with the client's optimizer."""
        return self.train(model, self.make_optimizer(model, None), epochs=self.epochs,
                          extra_loss=self.extra_loss)


class PersonalizationMethod:
    """FedAvg's behaviour: the ordinary local pass, no personalized model of its own."""

    name: ClassVar[str] = "none"

    def __init__(self, settings: PersonalizationConfig) -> None:
        self.settings = settings

    def train_round(self, work: LocalWork) -> dict[str, float]:
        return work.train_pass(work.model)

    def private_steps(self, steps_per_epoch: int, epochs: int) -> int:
        """DP-SGD steps of one round under DP (steps_per_epoch = int(1/q))."""
        return epochs * steps_per_epoch

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
        return train_fedrep(work.model, work.train, work.make_optimizer, personal=work.personal,
                            head_epochs=self.settings.head_epochs,
                            body_epochs=self.settings.body_epochs, extra_loss=work.extra_loss)

    def private_steps(self, steps_per_epoch: int, epochs: int) -> int:
        return (self.settings.head_epochs + self.settings.body_epochs) * steps_per_epoch


class Ditto(PersonalizationMethod):
    """A personal model pulled towards the global one, kept in the client's state."""

    name = "ditto"

    def train_round(self, work: LocalWork) -> dict[str, float]:
        model = work.model
        with restored_afterwards(model):
            extra = train_personal(model, work.train, work.make_optimizer, state=work.state,
                                   global_shared=work.global_shared, lam=self.settings.lam,
                                   epochs=self.settings.personal_epochs)
        model.to(work.device)
        return {**work.train_pass(model), **extra}

    def private_steps(self, steps_per_epoch: int, epochs: int) -> int:
        return (self.settings.personal_epochs + epochs) * steps_per_epoch

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
        return train_reptile(work.model, work.train, inner_lr=self.settings.inner_lr,
                             meta_lr=self.settings.meta_lr, epochs=work.epochs,
                             extra_loss=work.extra_loss)


class PerFedAvg(Reptile):
    """Per-FedAvg (first order); the personalized model is the locally adapted one."""

    name = "perfedavg"

    def train_round(self, work: LocalWork) -> dict[str, float]:
        optimizer = work.make_optimizer(work.model, None)
        if work.private:  # each meta step: two DP-SGD steps on fresh Poisson batches
            return train_perfedavg_private(work.model, work.train, optimizer,
                                           alpha=self.settings.inner_lr,
                                           meta_steps=self.meta_steps(
                                               work.epochs, work.steps_per_epoch),
                                           extra_loss=work.extra_loss)
        return train_perfedavg(work.model, work.loader, optimizer,
                               alpha=self.settings.inner_lr, epochs=work.epochs,
                               device=work.device, extra_loss=work.extra_loss)

    @staticmethod
    def meta_steps(epochs: int, steps_per_epoch: int) -> int:
        """Under DP, meta steps per round: half an epoch's steps each epoch (two per step)."""
        return epochs * max(1, steps_per_epoch // 2)

    def private_steps(self, steps_per_epoch: int, epochs: int) -> int:
        return 2 * self.meta_steps(epochs, steps_per_epoch)


METHODS: dict[str, type[PersonalizationMethod]] = {
    cls.name: cls for cls in (PersonalizationMethod, FedPer, FedRep, Ditto, Reptile, PerFedAvg)
}


def method(settings: PersonalizationConfig) -> PersonalizationMethod:
    return METHODS[settings.method](settings)
