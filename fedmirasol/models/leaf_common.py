"""What LEAF's reference models share: the output type of every fedmirasol model, the input check."""

from __future__ import annotations

import torch

from fedmirasol.models.mirasol import MirasolOutput

# logits, latents (B x 1 x d: the features the classifier reads), no latent loss
LeafOutput = MirasolOutput


def check_input(batch: dict[str, torch.Tensor], key: str, shape: tuple[int, ...],
                model: str) -> torch.Tensor:
    """``batch[key]``, checked to be ``B x *shape``; a clip batch or another task's input is
    refused by name."""
    if key not in batch:
        raise ValueError(f"{model} reads batch[{key!r}] (a LEAF {key} sample); the batch holds "
                         f"{sorted(batch)}")
    value = batch[key]
    if tuple(value.shape[1:]) != shape or value.shape[0] == 0:
        raise ValueError(f"{model} takes {key} batches of B x {' x '.join(map(str, shape))}, "
                         f"got {tuple(value.shape)}")
    return value
