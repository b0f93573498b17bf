"""The late-fusion baseline: TimeSformer + AST, alpha-weighted concatenation, FC head."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fedmirasol.cli import main
from fedmirasol.data.batch import collate
from fedmirasol.data.synthetic import SyntheticAVDataset, SyntheticConfig
from flwr.app import RecordDict

from fedmirasol.client import task as client_task
from fedmirasol.task.model import init_model
from fedmirasol.core.parameters import ParameterSplit, model_state
from fedmirasol.config import load_config
from fedmirasol.models import LateFusion, build_model, get_config, mirasol_loss
from fedmirasol.models.late_fusion import FusionHead
from fedmirasol.models.timesformer import DividedSpaceTimeBlock
from fedmirasol.training.checkpoint import load_checkpoint
from opacus_step import assert_per_sample_gradients_match, take_dp_step

TINY = "latefusion-tiny"


def tiny(**overrides: object):
    return get_config(TINY, num_frames=8, **overrides)


def batch_for(config, size: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    dataset = SyntheticAVDataset(SyntheticConfig.for_model(config), size, seed=seed)
    return collate([dataset[i] for i in range(size)])


def tone(config, frequency: float, start_seconds: float = 0.0) -> torch.Tensor:
    """``1 x M`` sine at `frequency` Hz, silent before `start_seconds`."""
    t = torch.arange(config.num_samples) / config.sample_rate
    return (0.5 * torch.sin(2 * math.pi * frequency * t) * (t >= start_seconds))[None]


# Configs and selection.

def test_configs_from_tiny_to_the_published_base(capsys):
    assert main(["model", "info", "latefusion", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)["parameters"]
    base = get_config("latefusion")
    assert (base.width, base.video_depth, base.audio_depth, base.heads) == (768, 12, 12, 12)
    assert (base.image_size, base.video_patch, base.num_frames, base.n_mels) == (224, 16, 8, 128)
    assert (base.audio_patch, base.audio_stride, base.head_dropout) == ((16, 16), (10, 10), 0.5)
    assert 115e6 < table["video_encoder"] < 125e6  # TimeSformer-Base: 121M
    assert 80e6 < table["audio_encoder"] < 90e6  # AST-Base: about 87M
    assert main(["model", "info", TINY]) == 0
    assert "TimeSformer + AST late fusion, alpha 1 on audio" in capsys.readouterr().out
    model = build_model(TINY)
    assert isinstance(model, LateFusion)
    assert sum(p.numel() for p in model.parameters()) < 0.5e6


def test_head_is_the_published_one_at_768_and_scales_with_the_width():
    def shapes(head):
        return [(m.in_features, m.out_features) for m in head if isinstance(m, torch.nn.Linear)]

    head = FusionHead(768, 10, 0.5)
    assert shapes(head) == [(1536, 1024), (1024, 512), (512, 10)]
    assert [type(m).__name__ for m in head] == [
        "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert head[2].p == 0.5
    assert shapes(FusionHead(96, 8, 0.5)) == [(192, 128), (128, 64), (64, 8)]


def test_invalid_late_fusion_configs_are_refused():
    with pytest.raises(ValueError, match="alpha_modality"):
        tiny(alpha_modality="text")
    with pytest.raises(ValueError, match="latent_weight"):
        tiny(latent_weight=0.1)
    with pytest.raises(ValueError, match="video_patch"):
        tiny(video_patch=5)


def test_a_run_config_picks_the_model_and_its_alpha():
    config = load_config(None, [f"model.name='{TINY}'", "model.alpha=0.5",
                                "model.alpha-modality='video'", "model.learn-alpha=true"])
    chosen = config.model.mirasol
    assert (chosen.architecture, chosen.alpha, chosen.alpha_modality, chosen.learn_alpha) == (
        "latefusion", 0.5, "video", True)


# Forward pass, alpha and missing modalities.

def test_forward_shapes_and_only_the_classification_term():
    config = tiny()
    model = build_model(config)
    batch = batch_for(config)
    output = model(batch)
    assert output.logits.shape == (4, config.num_classes)
    assert output.latents.shape == (4, 2, config.width)
    assert output.latent_loss is None
    loss, parts = mirasol_loss(model, batch, output)
    assert set(parts) == {"class"} and torch.isfinite(loss)


@pytest.mark.parametrize("modality", ["audio", "video"])
def test_fixed_alpha_scales_the_chosen_modality(modality):
    torch.manual_seed(0)
    reference = build_model(tiny(alpha=1.0, alpha_modality=modality)).eval()
    scaled = build_model(tiny(alpha=1.5, alpha_modality=modality)).eval()
    scaled.load_state_dict(reference.state_dict())
    batch = batch_for(reference.config)
    index = 1 if modality == "audio" else 0
    plain, weighted = reference(batch).latents, scaled(batch).latents
    torch.testing.assert_close(weighted[:, index], 1.5 * plain[:, index])
    torch.testing.assert_close(weighted[:, 1 - index], plain[:, 1 - index])


def test_alpha_zero_on_audio_makes_the_logits_ignore_the_audio():
    model = build_model(tiny(alpha=0.0)).eval()
    batch = batch_for(model.config)
    changed = dict(batch, audio=torch.randn_like(batch["audio"]))
    torch.testing.assert_close(model(batch).logits, model(changed).logits)


def test_learned_alpha_starts_at_its_value_and_gets_a_gradient():
    model = build_model(tiny(alpha=1.5, learn_alpha=True))
    assert model.modality_weight.value == 1.5
    loss, _ = mirasol_loss(model, batch_for(model.config))
    loss.backward()
    grad = model.modality_weight.learned.embedding.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    fixed = build_model(tiny(alpha=1.5))
    assert "modality_weight" not in dict(fixed.named_parameters())  # a fixed alpha is no parameter


def test_frozen_encoders_leave_only_the_fusion_trainable():
    torch.manual_seed(0)
    model = build_model(tiny(freeze_encoders=True, learn_alpha=True))
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"video_gate", "audio_gate", "modality_weight", "head"}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    batch = batch_for(model.config)
    for _ in range(2):
        optimizer.zero_grad()
        mirasol_loss(model, batch)[0].backward()
        optimizer.step()
    for name, p in model.named_parameters():
        if name.startswith(("video_encoder.", "audio_encoder.")):
            assert torch.equal(p, before[name]), name
    assert not torch.equal(model.head[0].weight, before["head.0.weight"])


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_a_missing_modality_is_never_read(modality):
    """Like Mirasol: the absent sample's placeholder does not move the output."""
    model = build_model(tiny()).eval()
    batch = batch_for(model.config)
    batch[f"{modality}_present"] = torch.tensor([True, False, True, False])
    changed = dict(batch, **{modality: batch[modality] + torch.randn_like(batch[modality])})
    before, after = model(batch).logits, model(changed).logits
    torch.testing.assert_close(before[1::2], after[1::2])  # absent: unchanged
    assert not torch.allclose(before[0::2], after[0::2])  # present: read


# The encoders.

def _moved_tokens(block: DividedSpaceTimeBlock) -> torch.Tensor:
    """``T x N`` bool: which patch tokens change when the token (frame 1, position 2) does."""
    torch.manual_seed(1)
    cls, patches = torch.randn(1, 16), torch.randn(1, 3, 4, 16)  # 3 frames x 4 positions
    moved = patches.clone()
    moved[0, 1, 2] = torch.randn(16)
    with torch.no_grad():
        difference = block(cls, patches)[1] - block(cls, moved)[1]
    return difference.abs().sum(-1)[0] > 1e-6


def test_divided_attention_attends_across_time_then_within_each_frame():
    torch.manual_seed(0)
    block = DividedSpaceTimeBlock(16, 2, 2.0)
    temporal_only, spatial_only = DividedSpaceTimeBlock(16, 2, 2.0), DividedSpaceTimeBlock(16, 2, 2.0)
    temporal_only.load_state_dict(block.state_dict())
    spatial_only.load_state_dict(block.state_dict())
    torch.nn.init.zeros_(temporal_only.spatial_attention.out.weight)  # silence one stage
    torch.nn.init.zeros_(temporal_only.spatial_attention.out.bias)
    torch.nn.init.zeros_(spatial_only.temporal_fc.weight)
    torch.nn.init.zeros_(spatial_only.temporal_fc.bias)
    same_position = torch.zeros(3, 4, dtype=torch.bool)
    same_position[:, 2] = True
    same_frame = torch.zeros(3, 4, dtype=torch.bool)
    same_frame[1, :] = True
    assert torch.equal(_moved_tokens(temporal_only), same_position)  # across frames only
    assert torch.equal(_moved_tokens(spatial_only), same_frame)  # within the frame only
    assert bool(_moved_tokens(block).all())  # composed: time, then space


def test_ast_input_is_time_by_frequency_and_its_patch_grid_follows_it():
    """Pins AST's input orientation: a steady tone is constant along the grid's time axis and
    varies along frequency; a tone that starts half-way changes patches along time only."""
    config = tiny()
    ast = build_model(config).audio_encoder
    steady = ast.spectrogram(tone(config, 1000.0))
    frames = 1 + (config.num_samples - 400) // 160  # 25 ms windows, 10 ms hops
    assert steady.shape == (1, frames, config.n_mels)
    grid = ast.patch_grid(steady)
    (pt, pf), (st, sf) = config.audio_patch, config.audio_stride
    assert grid.shape == (1, (frames - pt) // st + 1, (config.n_mels - pf) // sf + 1, pt * pf)
    torch.testing.assert_close(grid, grid[:, :1].expand_as(grid), atol=0.02, rtol=0)
    assert (grid[:, :, 0] - grid[:, :, 1]).abs().max() > 0.1

    half = config.num_samples / config.sample_rate / 2
    onset = ast.patch_grid(ast.spectrogram(tone(config, 1000.0, start_seconds=half)))
    rows = onset.shape[1]
    early, late = onset[0, : rows // 2 - 2], onset[0, rows // 2 + 2 :]
    torch.testing.assert_close(early, early[:1].expand_as(early))  # silence throughout
    torch.testing.assert_close(late, late[:1].expand_as(late), atol=0.02, rtol=0)  # the tone
    assert (late[0] - early[0]).abs().max() > 0.1


# Training: DP, FedBN, federated and centralized.

def test_takes_a_dp_step_with_per_sample_gradients_for_every_parameter():
    model, before = take_dp_step(tiny(learn_alpha=True))
    assert all(not torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_per_sample_gradients_match_single_sample_gradients():
    torch.manual_seed(0)
    model = build_model(tiny(learn_alpha=True, head_dropout=0.0))
    batch = batch_for(model.config, size=2, seed=1)
    assert_per_sample_gradients_match(model, batch)


def test_fedbn_client_round_keeps_both_encoders_norms_and_shares_the_head():
    config = load_config(None, [
        f"model.name='{TINY}'", "model.num-frames=8", "model.learn-alpha=true",
        "data.num-clients=2", "data.clips-per-client=6", "data.test-clips=4",
        "client.batch-size=4", "strategy.name='fedbn'",
    ])
    model = init_model(config)
    split = ParameterSplit.from_model(model, config.local_selectors())
    assert "video_encoder.blocks.0.norm_temporal.weight" in split.local
    assert "audio_encoder.transformer.norm.bias" in split.local
    assert {"head.0.weight", "modality_weight.learned.embedding.weight"} <= set(split.shared)
    result = client_task.train(config, 0, 1, model_state(model, split.shared), RecordDict())
    assert set(result.update) == set(split.shared)
    assert all(np.isfinite(v).all() for v in result.update.values())
    assert any(np.abs(v).sum() > 0 for v in result.update.values())
    assert result.num_examples > 0


def test_train_command_trains_and_checkpoints_a_late_fusion_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([
        "train", "--model", TINY, "--alpha", "1.5", "--learn-alpha", "--epochs", "1",
        "--train-clips", "8", "--val-clips", "8", "--batch-size", "8", "--device", "cpu",
        "--drop-modality", "audio", "--out", str(out),
    ]) == 0
    assert "learned alpha (from 1.5) on audio" in capsys.readouterr().out
    model, _ = load_checkpoint(out / "final.pt")
    assert isinstance(model, LateFusion)
    assert (model.config.alpha, model.config.learn_alpha) == (1.5, True)
    assert json.loads((out / "summary.json").read_text())["drop_modality"] == "audio"
