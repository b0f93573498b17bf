"""The length curriculum (`fedmirasol.training.curriculum`): stages run in order, each on clips
of its own length, training the same weights; stage lists are parsed and checked."""

from __future__ import annotations

import pytest
import torch

from fedmirasol.models import build_model, get_config
from fedmirasol.training.centralized import TrainSettings, VideoQASettings
from fedmirasol.training.curriculum import Stage, parse_stages, train_curriculum

torch.set_num_threads(1)


def test_stages_are_parsed_with_one_value_for_all():
    assert parse_stages("16,32", "3,1", "8") == (Stage(16, 3, 8), Stage(32, 1, 8))
    with pytest.raises(ValueError, match="epochs lists 2 values for 3 stages"):
        parse_stages("16,32,64", "3,1", "8")
    with pytest.raises(ValueError, match="positive"):
        parse_stages("16", "0", "8")


def test_stages_train_the_same_weights_in_order_on_their_frame_counts():
    config = get_config("tiny", num_frames=16, text_weight=1.0, text_depth=1)
    torch.manual_seed(0)
    model = build_model(config)
    seen_frames: list[int] = []
    original_forward = model.forward

    def recording_forward(batch, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        seen_frames.append(int(batch["video"].shape[1]))
        return original_forward(batch, *args, **kwargs)

    model.forward = recording_forward
    before = [p.detach().clone() for p in model.parameters()]
    finished: list[int] = []
    stages = parse_stages("16,32", "1", "4")
    results = train_curriculum(
        model, config, TrainSettings(batch_size=4, seed=0, device="cpu"), stages,
        VideoQASettings(questions=("first", "last"), late_tone=True),
        after_stage=lambda stage, metrics: finished.append(stage.frames))
    assert finished == [16, 32]
    assert [r["frames"] for r in results] == [16, 32]
    assert seen_frames == [16, 32]  # one batch of 4 clips per stage, in the stages' order
    assert all(r["steps"] == 1 for r in results)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
