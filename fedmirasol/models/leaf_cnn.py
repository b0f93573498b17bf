"""LEAF's reference CNNs (TalwalkarLab/leaf, ``models/femnist/cnn.py``, ``models/celeba/cnn.py``).

FEMNIST (1 x 28 x 28, 62 classes): conv 5x5 32 ('same') + ReLU + max-pool 2, conv 5x5 64 + ReLU
+ max-pool 2, dense 2048 + ReLU, dense classes.

CelebA (3 x 84 x 84, 2 classes): four blocks of conv 3x3 32 ('same'), normalization, max-pool 2
('same': odd sizes round up) and ReLU, then dense classes. LEAF normalizes with BatchNorm, which
mixes the samples of a batch and cannot run under DP-SGD; here it is GroupNorm with one group
per channel, what Opacus' ModuleValidator puts in BatchNorm's place, and what FedBN keeps local.

`MirasolConfig.input_norm` adds the learned per-channel input stem (`input_norm.py`) in front.
"""

from __future__ import annotations

import torch
from torch import nn

from fedmirasol.models.config import MirasolConfig
from fedmirasol.models.input_norm import optional_input_norm
from fedmirasol.models.leaf_common import LeafOutput, check_input

# task -> (channels, image size)
IMAGE_SHAPES = {"femnist": (1, 28), "celeba": (3, 84)}


def _femnist_features() -> tuple[nn.Sequential, int]:
    features = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(7 * 7 * 64, 2048), nn.ReLU(),
    )
    return features, 2048


def _celeba_features() -> tuple[nn.Sequential, int]:
    blocks: list[nn.Module] = []
    channels, size = 3, 84
    for _ in range(4):
        blocks += [nn.Conv2d(channels, 32, 3, padding=1), nn.GroupNorm(32, 32),
                   nn.MaxPool2d(2, 2, ceil_mode=True), nn.ReLU()]
        channels, size = 32, -(-size // 2)
    return nn.Sequential(*blocks, nn.Flatten()), 32 * size * size


class LeafCNN(nn.Module):
    """LEAF's CNN for `config.leaf_task` (checked by the config); reads ``batch["image"]``."""

    def __init__(self, config: MirasolConfig) -> None:
        super().__init__()
        self.config = config
        channels, size = IMAGE_SHAPES[config.leaf_task]
        self.input_shape = (channels, size, size)
        self.input_norm = optional_input_norm(config.input_norm, channels, dim=1)
        build = _femnist_features if config.leaf_task == "femnist" else _celeba_features
        self.features, width = build()
        self.classifier = nn.Linear(width, config.num_classes)

    def forward(self, batch: dict[str, torch.Tensor]) -> LeafOutput:
        image = check_input(batch, "image", self.input_shape, "leaf-cnn")
        if self.input_norm is not None:
            image = self.input_norm(image)
        features = self.features(image)
        return LeafOutput(self.classifier(features), features[:, None], None)
