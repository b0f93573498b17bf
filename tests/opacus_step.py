"""One Opacus DP-SGD step on a model config, shared by the model families' DP tests."""

from __future__ import annotations

import warnings

import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader

from fedmirasol.data.batch import collate
from fedmirasol.data.synthetic import SyntheticAVDataset, SyntheticConfig
from fedmirasol.models import build_model, mirasol_loss
from fedmirasol.models.config import MirasolConfig


def take_dp_step(config: MirasolConfig) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Build `config`'s model, check Opacus accepts it, take one make_private step (batch 4)
    after checking every parameter got per-sample gradients; returns the model and its
    parameters from before the step."""
    torch.manual_seed(0)
    model = build_model(config)
    assert ModuleValidator.validate(model, strict=False) == []
    dataset = SyntheticAVDataset(SyntheticConfig.for_model(config), 8, seed=0)
    loader = DataLoader(dataset, batch_size=4, collate_fn=collate)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns about secure RNG being off
        private_model, private_optimizer, private_loader = PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=optimizer, data_loader=loader,
            noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False,
        )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    batch = next(iter(private_loader))
    loss, _ = mirasol_loss(private_model._module, batch, output=private_model(batch))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad_sample is not None, f"{name} has no per-sample gradient"
        assert parameter.grad_sample.shape == (4, *parameter.shape), name
    private_optimizer.step()
    return model, before


def assert_per_sample_gradients_match(model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    """Opacus' per-sample gradients equal each sample's gradient computed alone, everywhere."""
    from opacus import GradSampleModule

    wrapped = GradSampleModule(model, loss_reduction="mean")  # rescales by the batch size
    mirasol_loss(model, batch, output=wrapped(batch))[0].backward()
    per_sample = {name: p.grad_sample.clone() for name, p in model.named_parameters()}
    wrapped.disable_hooks()
    for index in range(len(batch["label"])):
        model.zero_grad()
        single = {key: value[index : index + 1] for key, value in batch.items()}
        mirasol_loss(model, single)[0].backward()
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(
                per_sample[name][index], parameter.grad, rtol=1e-3, atol=1e-5, msg=name)
