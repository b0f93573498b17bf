"""Starting a federation from a pre-trained checkpoint: loading, reset, freezing, integrity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from fedmirasol.client import task as client_task
from fedmirasol.core.parameters import model_state
from fedmirasol.config import RunConfig, load_config
from fedmirasol.pretrained.checkpoint import with_digest
from fedmirasol.task.model import parameter_split
from fedmirasol.training.checkpoint import save_checkpoint

SMALL = ["data.num-clients=2", "data.clips-per-client=12", "data.test-clips=4",
         "model.num-frames=8", "client.batch-size=4", "client.local-epochs=1"]
FROZEN = "video_encoder.*,audio_encoder.*"


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    """A 'pre-trained' model: the run's architecture with other weights (another seed)."""
    config = load_config(None, SMALL + ["seed=7"])
    path = tmp_path / "public" / "best.pt"
    save_checkpoint(path, client_task.init_model(config), config.model.mirasol)
    return path


def pretrained_config(path: Path, *extra: str) -> RunConfig:
    """The config as the server resolves it (the checkpoint's digest filled in)."""
    return with_digest(load_config(None, SMALL + [f'pretrained.checkpoint="{path}"', *extra]))


def test_every_process_starts_from_the_checkpoint_with_reset_parts_fresh(checkpoint: Path) -> None:
    config = pretrained_config(checkpoint, 'pretrained.reset="classifier.*"')
    loaded = client_task.init_model(config).state_dict()
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    fresh = client_task.init_model(load_config(None, SMALL)).state_dict()
    for name, value in loaded.items():
        expected = fresh[name] if name.startswith("classifier.") else saved[name]
        assert torch.equal(value, expected), name
    assert not torch.equal(saved["classifier.1.weight"], fresh["classifier.1.weight"])


def test_the_server_records_the_checkpoint_digest_and_a_different_file_is_refused(
        checkpoint: Path) -> None:
    config = pretrained_config(checkpoint)
    assert len(config.pretrained.sha256) == 64
    other = load_config(None, SMALL + ["seed=8"])  # the site's file is another model
    save_checkpoint(checkpoint, client_task.init_model(other), other.model.mirasol)
    with pytest.raises(ValueError, match=f"{checkpoint}.*not the file the server started from"):
        client_task.init_model(config)


def test_missing_or_mismatched_checkpoints_are_named(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pretrained.checkpoint.*nowhere.pt"):
        with_digest(load_config(None, SMALL + [
            f'pretrained.checkpoint="{tmp_path / "nowhere.pt"}"']))
    config = pretrained_config(checkpoint, "model.width=32")
    with pytest.raises(ValueError, match=r"best.pt does not fit .*fields that differ: \['width'\]"):
        client_task.init_model(config)
    with pytest.raises(ValueError, match="pretrained.reset' needs pretrained.checkpoint"):
        load_config(None, SMALL + ['pretrained.reset="classifier.*"'])


def shared_update(config: RunConfig) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    model = client_task.init_model(config)
    split = parameter_split(model, config)
    global_shared = model_state(model, split.shared)
    result = client_task.train(config, 0, 1, global_shared, RecordDict())
    return global_shared, result.update


@pytest.mark.parametrize("private", [False, True], ids=["plain", "dp-sgd"])
def test_frozen_parameters_are_neither_trained_nor_sent(checkpoint: Path, private: bool) -> None:
    dp = ["privacy.enabled=true", "privacy.noise-multiplier=0.5"] if private else []
    config = pretrained_config(checkpoint, f'pretrained.freeze="{FROZEN}"',
                               'pretrained.reset="classifier.*"', *dp)
    model = client_task.init_model(config)
    split = parameter_split(model, config)
    frozen = {name for name, _ in model.named_parameters()
              if name.startswith(("video_encoder.", "audio_encoder."))}
    assert frozen and not frozen & set(split.shared) and not frozen & set(split.local)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)

    global_shared, update = shared_update(config)
    assert set(update) == set(global_shared) == set(split.shared)
    assert max(float(np.abs(u).max()) for u in update.values()) > 0  # the rest did train
    trained, _, _ = client_task.model_and_split(config)  # the client's model after training
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    for name, value in trained.state_dict().items():
        if name in frozen:
            assert torch.equal(value, saved[name]), name


def test_trainable_freezes_everything_else(checkpoint: Path) -> None:
    config = pretrained_config(checkpoint, 'pretrained.trainable="classifier.*"')
    model = client_task.init_model(config)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "classifier.0.weight", "classifier.0.bias", "classifier.1.weight", "classifier.1.bias"}
    split = parameter_split(model, config)
    assert set(split.shared) == {n for n, p in model.named_parameters() if p.requires_grad}


def test_a_site_brings_its_own_copy_of_the_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    from fedmirasol.client.site import apply_site

    config = pretrained_config(checkpoint)  # the server's resolved config, digest included
    copy = tmp_path / "site" / "public.pt"
    copy.parent.mkdir()
    copy.write_bytes(checkpoint.read_bytes())
    site = apply_site(config, {"partition-id": 0, "pretrained.checkpoint": str(copy)})
    assert site.pretrained.checkpoint == str(copy)
    assert site.pretrained.sha256 == config.pretrained.sha256
    client_task.init_model(site)  # the same bytes: accepted
    other = load_config(None, SMALL + ["seed=9"])
    save_checkpoint(copy, client_task.init_model(other), other.model.mirasol)
    with pytest.raises(ValueError, match=f"{copy} is not the file the server started from"):
        client_task.init_model(site)


def test_parts_the_checkpoint_lacks_may_start_fresh(checkpoint: Path) -> None:
    """A checkpoint without the input-norm stem fits a model with one when the stem is reset."""
    with pytest.raises(ValueError, match=r"does not fit .*missing \['audio_encoder.input_norm"):
        client_task.init_model(pretrained_config(checkpoint, "model.input-norm=true"))
    config = pretrained_config(checkpoint, "model.input-norm=true", 'pretrained.reset="*input_norm*"')
    model = client_task.init_model(config)
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    stem = [name for name in model.state_dict() if "input_norm" in name]
    assert stem and all(name not in saved for name in stem)
    assert torch.equal(model.state_dict()["classifier.1.weight"], saved["classifier.1.weight"])


def test_a_selector_that_matches_nothing_names_its_key(checkpoint: Path) -> None:
    config = pretrained_config(checkpoint, 'pretrained.trainable="head.*"')
    with pytest.raises(ValueError, match="'pretrained.trainable': selector 'head.\\*' matches no"):
        client_task.init_model(config)


def test_a_part_both_reset_and_frozen_is_refused(checkpoint: Path) -> None:
    config = pretrained_config(checkpoint, 'pretrained.reset="classifier.*"',
                               'pretrained.trainable="combiner.*"')
    with pytest.raises(ValueError, match="reset and frozen, they would stay at random init"):
        client_task.init_model(config)
