"""Every Mirasol component trains under Opacus DP-SGD."""

from __future__ import annotations

import pytest
import torch

from fedmirasol.data.batch import collate
from fedmirasol.data.synthetic import SyntheticAVDataset, SyntheticConfig
from fedmirasol.models import build_model, get_config
from opacus_step import assert_per_sample_gradients_match, take_dp_step


@pytest.mark.parametrize("combiner", ["transformer", "ttm"])
def test_tiny_model_takes_a_dp_step_with_per_sample_gradients(combiner):
    model, before = take_dp_step(get_config("tiny", combiner=combiner))
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert len(changed) == len(before)  # noise reaches every parameter


@pytest.mark.parametrize("combiner", ["transformer", "ttm"])
def test_per_sample_gradients_match_single_sample_gradients(combiner):
    """Opacus' hooks give each sample the gradient it would get alone, for every parameter,
    including modules called once per chunk (the batch axis is kept first throughout)."""
    torch.manual_seed(0)
    config = get_config("tiny", combiner=combiner)
    model = build_model(config)
    dataset = SyntheticAVDataset(SyntheticConfig.for_model(config), 2, seed=1)
    batch = collate([dataset[i] for i in range(2)])
    assert_per_sample_gradients_match(model, batch)
