"""LEAF's reference models: LEAF's layouts and sizes, Opacus-exact per-sample gradients, and
Mirasol taking LEAF images as single-frame clips without audio."""

from __future__ import annotations

import pytest
import torch

from fedmirasol.data.batch import collate
from fedmirasol.data.leaf.samples import image_clip, reference_sample
from fedmirasol.models import build_model, get_config
from fedmirasol.models.config import MirasolConfig
from fedmirasol.models.loss import mirasol_loss
from fedmirasol.privacy.dp_training import per_sample_losses
from fedmirasol.privacy.objective import per_sample_loss

LEAF_CONFIGS = {
    "femnist": get_config("leaf-cnn"),
    "celeba": get_config("leaf-cnn", leaf_task="celeba", num_classes=2),
    "shakespeare": get_config("leaf-lstm"),
    "sent140": get_config("leaf-lstm", leaf_task="sent140", leaf_vocab=300, num_classes=2),
    "synthetic": get_config("leaf-logreg", leaf_input_dim=7, num_classes=4),
}


def batch_for(task: str, config: MirasolConfig, size: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    if task in ("femnist", "celeba"):
        shape = (1, 28, 28) if task == "femnist" else (3, 84, 84)
        kind, values = "image", [torch.rand(shape, generator=generator) for _ in range(size)]
    elif task in ("shakespeare", "sent140"):
        length = 80 if task == "shakespeare" else 25
        kind = "tokens"
        values = [torch.randint(0, config.leaf_vocab, (length,), generator=generator)
                  for _ in range(size)]
    else:
        kind, values = "features", [torch.randn(config.leaf_input_dim, generator=generator)
                                    for _ in range(size)]
    labels = torch.randint(0, config.num_classes, (size,), generator=generator).tolist()
    return collate([reference_sample(kind, v, y) for v, y in zip(values, labels)])


def test_leafs_femnist_cnn_has_leafs_parameter_count() -> None:
    # conv 5x5x1x32 + 32, conv 5x5x32x64 + 64, dense 3136x2048 + 2048, dense 2048x62 + 62
    expected = (25 * 32 + 32) + (25 * 32 * 64 + 64) + (3136 * 2048 + 2048) + (2048 * 62 + 62)
    assert sum(p.numel() for p in build_model("leaf-cnn").parameters()) == expected


@pytest.mark.parametrize("task", list(LEAF_CONFIGS))
def test_each_model_gives_logits_for_its_tasks_batch(task: str) -> None:
    config = LEAF_CONFIGS[task]
    model = build_model(config)
    batch = batch_for(task, config)
    output = model(batch)
    assert output.logits.shape == (3, config.num_classes) and output.latent_loss is None
    loss, parts = mirasol_loss(model, batch)
    assert set(parts) == {"class"} and torch.isfinite(loss)


def test_a_model_refuses_another_tasks_batch_by_name() -> None:
    model = build_model(LEAF_CONFIGS["femnist"])
    with pytest.raises(ValueError, match=r"leaf-cnn reads batch\['image'\]"):
        model(batch_for("synthetic", LEAF_CONFIGS["synthetic"]))
    with pytest.raises(ValueError, match="B x 1 x 28 x 28"):
        model(batch_for("celeba", LEAF_CONFIGS["celeba"]))


@pytest.mark.parametrize("task", ["celeba", "sent140", "synthetic"])
@pytest.mark.parametrize("mode", ["ew", "hooks"])
def test_per_sample_gradients_are_each_samples_own(task: str, mode: str) -> None:
    """What DP-SGD clips: the project's per-sample gradients (expanded weights or Opacus' hooks)
    equal the gradient of each sample computed alone, for every parameter (the LSTM's weights
    are used at every step, the CelebA CNN has GroupNorm)."""
    torch.manual_seed(0)
    config = LEAF_CONFIGS[task].replace(input_norm=True)
    model = build_model(config)
    batch = batch_for(task, config)
    losses_of, close = per_sample_losses(model, mode)
    losses_of(batch).sum().backward()
    per_sample = {name: p.grad_sample.clone() for name, p in model.named_parameters()}
    close()
    for index in range(3):
        model.zero_grad()
        single = {key: value[index:index + 1] for key, value in batch.items()}
        per_sample_loss(model, single, model(single)).sum().backward()
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(per_sample[name][index], parameter.grad, rtol=1e-3,
                                       atol=1e-5, msg=f"{name} ({mode})")


def test_fedbn_finds_normalization_layers_in_every_leaf_model() -> None:
    from fedmirasol.core.parameters import select_names

    celeba = select_names(build_model(LEAF_CONFIGS["celeba"]), "normalization")
    assert len(celeba) == 8  # 4 GroupNorms (LEAF's BatchNorms), weight and bias each
    for task in ("femnist", "shakespeare", "synthetic"):
        model = build_model(LEAF_CONFIGS[task].replace(input_norm=True))
        assert select_names(model, "normalization") == {"input_norm.weight", "input_norm.bias"}
        assert select_names(model, "classifier.*")  # FedPer's "head" preset


def test_mirasol_takes_a_leaf_image_as_a_single_frame_clip_without_audio() -> None:
    config = get_config("tiny", num_frames=1, frames_per_chunk=1, image_size=28, num_classes=62)
    image = torch.ones(1, 28, 28)
    image[0, :4] = 0.0  # ink across the top
    clips = [image_clip(image, 5, config), image_clip(torch.rand(1, 28, 28), 7, config)]
    clip = clips[0]
    assert clip["video"].shape == (1, 3, 28, 28) and not clip["audio_present"]
    assert clip["audio"].shape == (config.num_samples,) and not clip["audio"].any()
    # grey repeated over the colours, normalized as video frames are: ink rows darker everywhere
    assert (clip["video"][0, :, :4] < clip["video"][0, :, 4:].amin(dim=(1, 2))[:, None, None]).all()
    model = build_model(config)
    output = model(collate(clips))
    assert output.logits.shape == (2, 62) and output.latent_loss is None
    # the silent audio is never read: changing it changes nothing
    loud = collate(clips)
    loud["audio"] = torch.randn_like(loud["audio"])
    model.eval()
    torch.testing.assert_close(model(loud).logits, model(collate(clips)).logits)
    resized = image_clip(image, 5, config.replace(image_size=32))
    assert resized["video"].shape == (1, 3, 32, 32)
