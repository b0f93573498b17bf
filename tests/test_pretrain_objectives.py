"""VideoMAE and video-text contrastive objectives: tube masking, what the encoder and the loss
read, InfoNCE against a hand computation, zero-shot and retrieval metrics, per-sample losses for
DP-SGD, and a pre-training checkpoint as the start of fine-tuning."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmirasol.config import load_config
from fedmirasol.config.pretrain import OBJECTIVES as CONFIG_OBJECTIVES
from fedmirasol.data.batch import collate
from fedmirasol.data.synthetic import SyntheticAVDataset, SyntheticConfig
from fedmirasol.errors import ConfigError
from fedmirasol.models import build_model, get_config
from fedmirasol.models.masked_encoding import (
    MirasolVideoMasking,
    TimeSformerMasking,
    pixel_targets,
)
from fedmirasol.models.objectives import (
    OBJECTIVES,
    attach_objective,
    training_loss,
    untrained_names,
)
from fedmirasol.models.objectives.contrastive import (
    info_nce,
    info_nce_fixed_negatives,
    zero_shot_classes,
    zero_shot_predict,
)
from fedmirasol.models.objectives.videomae import reconstruction_error
from fedmirasol.models.text_encoder import TextEncoder
from fedmirasol.models.tube_mask import masked_count, tube_mask
from fedmirasol.privacy.expanded_weights import ExpandedWeightsObjective
from fedmirasol.task.data import Materialized, keep_labels
from fedmirasol.training.pretraining import attach_pretraining, public_negatives
from fedmirasol.training.retrieval import knn_accuracy, retrieval_metrics


def clips(name: str, count: int, seed: int = 0) -> dict[str, torch.Tensor]:
    data = SyntheticAVDataset(SyntheticConfig.for_model(get_config(name)), count, seed=seed)
    return collate([data[i] for i in range(count)])


def model_with(name: str, objective: str, **options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(get_config(name))
    attach_objective(model, objective, **options)
    return model


# ---- tube masking


def test_the_tube_mask_is_the_same_on_every_frame_and_hides_the_requested_fraction() -> None:
    for cells, ratio in ((16, 0.9), (196, 0.9), (16, 0.5), (1568, 0.75)):
        mask = tube_mask(6, cells, ratio, torch.Generator().manual_seed(cells))
        per_frame = mask.per_frame(8)  # B x frames x cells
        assert bool((per_frame == per_frame[:, :1]).all())
        hidden = per_frame.sum(dim=-1)
        assert bool((hidden == round(ratio * cells)).all())  # every sample, every frame
        assert len({tuple(row.tolist()) for row in mask.hidden}) > 1  # drawn per sample
    assert masked_count(16, 0.9) == 14 and masked_count(4, 0.99) == 3 and masked_count(4, 0.01) == 1
    with pytest.raises(ValueError, match="mask ratio"):
        masked_count(16, 1.0)


def test_hidden_pixels_of_a_tube_mask_cover_whole_cells_on_every_frame() -> None:
    mask = tube_mask(2, 16, 0.75, torch.Generator().manual_seed(1))
    pixels = mask.pixels((4, 4), (8, 8))  # B x 32 x 32
    assert pixels.float().mean().item() == pytest.approx(12 / 16)
    cell = mask.hidden_index()[0, 0]
    row, col = divmod(int(cell), 4)
    assert bool(pixels[0, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8].all())


@pytest.mark.parametrize("name", ["tiny", "latefusion-tiny"])
def test_the_encoder_never_sees_a_hidden_pixel_and_the_targets_are_the_hidden_patches(
        name: str) -> None:
    """Changing only hidden pixels changes the targets, not the encoded visible tokens;
    changing only visible pixels changes the encoding, not the targets."""
    model = build_model(get_config(name)).eval()
    masking = (MirasolVideoMasking(model.video_encoder) if name == "tiny"
               else TimeSformerMasking(model.video_encoder))
    video = clips(name, 2)["video"]

    def encode(frames: torch.Tensor):  # noqa: ANN202
        return masking(model.video_encoder, frames, 0.75, torch.Generator().manual_seed(3))

    reference = encode(video)
    hidden = tube_mask(2, masking.cells, 0.75, torch.Generator().manual_seed(3))
    grid = masking.grid if isinstance(masking.grid, tuple) else (masking.grid, masking.grid)
    cell = masking.cell if name == "tiny" else (masking.patch, masking.patch)
    pixels = hidden.pixels(grid, cell)[:, None, None]  # B x 1 x 1 x H x W
    noise = torch.randn_like(video) * 3
    in_hidden = encode(torch.where(pixels, video + noise, video))
    in_visible = encode(torch.where(pixels, video, video + noise))
    with torch.no_grad():
        assert torch.equal(in_hidden.encoded, reference.encoded)
        assert not torch.allclose(in_hidden.targets, reference.targets)
        assert not torch.allclose(in_visible.encoded, reference.encoded)
        assert torch.equal(in_visible.targets, reference.targets)


def test_mirasol_keeps_a_sparse_tube_visible_only_when_all_its_cells_are() -> None:
    model = build_model(get_config("tiny"))
    masking = MirasolVideoMasking(model.video_encoder)
    footprint = masking.footprint  # tokens x cells
    assert footprint.shape == (model.video_encoder.tokens_per_chunk, 16)
    assert bool((footprint.sum(dim=1) >= 1).all())
    # The tiny tube set: each of its 48 tokens lies in exactly one 8 x 8 cell.
    assert bool((footprint.sum(dim=1) == 1).all())


def test_the_reconstruction_loss_reads_the_hidden_patches_only() -> None:
    """The error is the mean over the hidden patches' targets; the targets of a hidden cell are
    its pixels normalized per patch and colour."""
    encoding = MirasolVideoMasking(build_model(get_config("tiny")).video_encoder)(
        build_model(get_config("tiny")).video_encoder, clips("tiny", 2)["video"], 0.9,
        torch.Generator().manual_seed(0))
    batch, chunks, hidden, values = encoding.targets.shape
    assert (chunks, hidden, values) == (4, 14, 4 * 8 * 8 * 3)
    predicted = torch.zeros_like(encoding.targets)
    assert torch.allclose(reconstruction_error(predicted, encoding),
                          encoding.targets.pow(2).mean(dim=(1, 2, 3)))
    patch = torch.arange(12.0).reshape(1, 12)  # 4 positions x 3 colours
    normalized = pixel_targets(patch, normalize=True).reshape(4, 3)
    assert torch.allclose(normalized.mean(dim=0), torch.zeros(3), atol=1e-6)
    assert torch.allclose(normalized.std(dim=0), torch.ones(3), atol=1e-4)
    assert torch.equal(pixel_targets(patch, normalize=False), patch)


def test_videomae_trains_the_encoders_and_its_decoders_only() -> None:
    model = model_with("tiny", "videomae", audio_mask_ratio=0.8)
    frozen = untrained_names(model)
    assert not any(name.startswith(("video_encoder.", "audio_encoder.", "objective."))
                   for name in frozen)
    assert any(name.startswith("classifier.") for name in frozen)
    loss, parts = training_loss(model, clips("tiny", 3))
    assert set(parts) == {"mae_video", "mae_audio"} and loss.requires_grad
    loss.backward()
    reached = {name for name, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("audio_encoder.") for n in reached)
    assert reached <= {n for n, _ in model.named_parameters()} - frozen


def test_audio_masking_is_refused_where_patches_overlap() -> None:
    with pytest.raises(ValueError, match="overlap"):
        model_with("latefusion-tiny", "videomae", audio_mask_ratio=0.8)
    with pytest.raises(ConfigError, match="audio-mask-ratio"):
        load_config(None, ["model.name='latefusion-tiny'", "pretrain.objective='videomae'",
                           "pretrain.audio-mask-ratio=0.8"])


# ---- contrastive: InfoNCE, zero-shot, retrieval


def test_info_nce_equals_a_hand_computed_value() -> None:
    video = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    text = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    # scale 2: logits = 2 * [[0.8, 0.0], [0.96, 0.8]]
    a, b, c, d = 1.6, 0.0, 1.92, 1.6
    rows = -math.log(math.exp(a) / (math.exp(a) + math.exp(b))) \
        - math.log(math.exp(d) / (math.exp(c) + math.exp(d)))
    columns = -math.log(math.exp(a) / (math.exp(a) + math.exp(c))) \
        - math.log(math.exp(d) / (math.exp(b) + math.exp(d)))
    expected = (rows / 2 + columns / 2) / 2
    assert float(info_nce(video, text, 2.0)) == pytest.approx(expected, rel=1e-6)
    # Against fixed negatives: clip 0 vs [its text, one negative text], text 0 vs [its clip,
    # one negative clip]; the other sample does not enter.
    negative_video, negative_text = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    losses = info_nce_fixed_negatives(video, text, torch.tensor([2.0, 2.0]), negative_video,
                                      negative_text)
    v2t = -math.log(math.exp(1.6) / (math.exp(1.6) + math.exp(2.0)))
    t2v = -math.log(math.exp(1.6) / (math.exp(1.6) + math.exp(1.2)))
    assert float(losses[0]) == pytest.approx((v2t + t2v) / 2, rel=1e-6)


def test_zero_shot_picks_the_class_whose_prompt_embedding_is_nearest() -> None:
    # Two classes, two prompts each; class 1's mean points along the second axis.
    prompts = [torch.tensor([[1.0, 0.0], [0.8, 0.6]]), torch.tensor([[0.0, 1.0], [-0.6, 0.8]])]
    classes = zero_shot_classes(prompts)
    assert torch.allclose(classes.norm(dim=-1), torch.ones(2))
    video = torch.tensor([[0.9, 0.1], [0.1, 0.9], [-1.0, 0.2]])
    assert zero_shot_predict(video, classes).tolist() == [0, 1, 1]


def test_retrieval_metrics_on_a_known_similarity_matrix() -> None:
    similarity = torch.tensor([[0.9, 0.1, 0.5, 0.0],   # its text first: rank 1
                               [0.8, 0.7, 0.1, 0.0],   # one scored higher: rank 2
                               [0.9, 0.8, 0.1, 0.7],   # three higher: rank 4
                               [0.5, 0.5, 0.5, 0.5]])  # ties count against: rank 4
    metrics = retrieval_metrics(similarity)
    assert metrics["v2t_r1"] == 0.25 and metrics["v2t_r5"] == 1.0
    assert metrics["v2t_median_rank"] == 2.0  # ranks 1, 2, 4, 4 (the lower middle)
    # text -> video reads the columns: ranks 2, 2, 4, 2
    assert metrics["t2v_r1"] == 0.0 and metrics["t2v_r5"] == 1.0
    assert metrics["t2v_median_rank"] == 2.0
    # Several relevant texts: the best-scored one counts (ranks 2 and 1).
    relevant = torch.tensor([[False, True], [True, True]])
    multi = retrieval_metrics(torch.tensor([[0.9, 0.2], [0.1, 0.3]]), relevant)
    assert multi["v2t_r1"] == 0.5 and multi["v2t_median_rank"] == 1.0


def test_knn_probe_separates_clusters() -> None:
    features = torch.cat([torch.randn(10, 4) * 0.1 + torch.tensor([5.0, 0, 0, 0]),
                          torch.randn(10, 4) * 0.1 + torch.tensor([0, 5.0, 0, 0])])
    labels = torch.tensor([0] * 10 + [1] * 10)
    assert knn_accuracy(features, labels, k=5) == 1.0
    odd_one = labels.clone()
    odd_one[0] = 1  # in cluster 0, its neighbours outvote it: the only miss
    assert knn_accuracy(features, odd_one, k=5) == pytest.approx(0.95)


def test_the_caption_encoder_ignores_padding_and_embeds_an_empty_row_without_nan() -> None:
    torch.manual_seed(0)
    encoder = TextEncoder(32, 1, 4, 2.0, 24).eval()
    tokenizer = encoder.tokenizer
    short = torch.stack([tokenizer.encode("a red disc", 16), tokenizer.empty(16)])
    longer = torch.stack([tokenizer.encode("a red disc", 24), tokenizer.empty(24)])
    with torch.no_grad():
        first, second = encoder(short), encoder(longer)
    assert torch.allclose(first, second, atol=1e-5) and bool(torch.isfinite(first).all())


def test_prompts_are_each_class_caption_with_every_colour() -> None:
    data = SyntheticConfig()
    prompts = data.class_prompts(3)
    assert len(prompts) == 6 and all(p.endswith(data.describe(3)) for p in prompts)
    assert "an orange " + data.describe(3) in prompts


# ---- DP-SGD: per-sample losses


def test_public_negative_loss_reads_each_sample_and_public_data_only() -> None:
    """Per-sample gradients (expanded weights) of the public-negative InfoNCE equal each sample's
    own gradient; in-batch InfoNCE has none and says so."""
    model = model_with("tiny", "contrastive", negatives="public")
    objective = model.objective
    objective.set_public_negatives(public_negatives(model.config, 4))
    objective.before_training(model)
    assert objective.negative_text.shape[0] == 4
    batch = clips("tiny", 3, seed=5)
    frozen = untrained_names(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    losses_of = ExpandedWeightsObjective(model)
    losses_of(batch).sum().backward()
    per_sample = {n: p.grad_sample.clone() for n, p in trained}
    losses_of.close()
    for index in range(3):
        single = {k: v[index:index + 1] for k, v in batch.items()}
        grads = torch.autograd.grad(objective.per_sample_loss(model, single).sum(),
                                    [p for _, p in trained], allow_unused=True)
        for (name, _), grad in zip(trained, grads):
            expected = torch.zeros_like(per_sample[name][index]) if grad is None else grad
            assert torch.allclose(per_sample[name][index], expected, atol=1e-5), name
    in_batch = model_with("tiny", "contrastive")
    with pytest.raises(ValueError, match="couples the samples"):
        in_batch.objective.per_sample_loss(in_batch, batch)


def test_videomae_per_sample_loss_does_not_read_the_other_samples() -> None:
    model = model_with("tiny", "videomae", audio_mask_ratio=0.8)
    batch = clips("tiny", 2)
    changed = dict(batch, video=batch["video"].clone(), audio=batch["audio"].clone())
    changed["video"][1] += 1.0
    changed["audio"][1] *= 0.5
    with torch.no_grad():
        torch.manual_seed(11)
        first = model.objective.per_sample_loss(model, batch)
        torch.manual_seed(11)
        second = model.objective.per_sample_loss(model, changed)
    assert float(first[0]) == pytest.approx(float(second[0]), rel=1e-6)
    assert float(first[1]) != pytest.approx(float(second[1]), rel=1e-3)


def test_contrastive_in_batch_negatives_are_refused_under_dp_sgd() -> None:
    with pytest.raises(ConfigError, match="pretrain.negatives = 'public'"):
        load_config(None, ["pretrain.objective='contrastive'", "privacy.enabled=true"])
    load_config(None, ["pretrain.objective='contrastive'", "privacy.enabled=true",
                       "pretrain.negatives='public'"])
    load_config(None, ["pretrain.objective='contrastive'", "privacy.client-level=true"])
    with pytest.raises(ConfigError, match="needs task.name = 'classification'"):
        load_config(None, ["pretrain.objective='videomae'", "task.name='videoqa'",
                           "model.text-weight=1.0"])


# ---- config, checkpoints, labels


def test_the_config_names_the_registered_objectives() -> None:
    assert set(CONFIG_OBJECTIVES) == {"none", *OBJECTIVES}


def test_a_pretraining_checkpoint_starts_a_fine_tuning_run(tmp_path: Path) -> None:
    """The objective's parts are dropped on loading, the encoders come back as trained; a run
    with an objective loads a plain checkpoint and keeps its own objective fresh."""
    from fedmirasol.pretrained.checkpoint import load_pretrained
    from fedmirasol.runs.run_dir import save_final_model

    pretrained = model_with("tiny", "videomae")
    with torch.no_grad():
        for p in pretrained.video_encoder.parameters():
            p.add_(0.5)
    path = save_final_model(tmp_path, pretrained.state_dict(), pretrained.config.to_dict())
    config = load_config(None, [f"pretrained.checkpoint='{path}'"])
    fine_tune = build_model(get_config("tiny"))
    load_pretrained(fine_tune, config.pretrained)
    assert torch.equal(fine_tune.state_dict()["video_encoder.transformer.norm.weight"],
                       pretrained.state_dict()["video_encoder.transformer.norm.weight"])
    assert not any(name.startswith("objective.") for name in fine_tune.state_dict())
    again = model_with("tiny", "contrastive")
    fresh = again.objective.text_projection[1].weight.clone()
    load_pretrained(again, load_config(None, [f"pretrained.checkpoint='{path}'",
                                              "pretrain.objective='contrastive'"]).pretrained)
    assert torch.equal(again.objective.text_projection[1].weight, fresh)


def test_label_fraction_keeps_labels_and_captions_of_that_share() -> None:
    data = Materialized(SyntheticAVDataset(SyntheticConfig(), 20, seed=0))
    keep_labels(data, 0.1, np.random.default_rng(0))
    labels = torch.stack([s["label"] for s in data.samples])
    captioned = torch.stack([(s["text"] != 256).any() for s in data.samples])
    assert int((labels >= 0).sum()) == 2 and torch.equal(labels >= 0, captioned)


def test_attach_pretraining_gives_a_contrastive_objective_its_prompts() -> None:
    model = build_model(get_config("tiny"))
    config = load_config(None, ["pretrain.objective='contrastive'"])
    prompts = [["a"], ["b"]]
    objective = attach_pretraining(model, config.pretrain, prompts)
    assert objective.class_prompts == prompts and objective.public_batch is None
    assert attach_pretraining(build_model(get_config("tiny")),
                              load_config(None, []).pretrain) is None
