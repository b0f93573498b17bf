"""The Mirasol model: shapes, chunking, causality, missing modalities, configs."""

from __future__ import annotations

import pytest
import torch

from fedmirasol.data.synthetic import SyntheticConfig
from fedmirasol.models import build_model, get_config, mirasol_loss
from fedmirasol.models.audio_encoder import split_audio_chunks
from fedmirasol.models.autoregressive import block_causal_mask
from fedmirasol.models.config import PAPER_TUBES
from fedmirasol.models.position import sincos_1d, sincos_3d
from fedmirasol.models.summary import parameter_table
from fedmirasol.models.tokenizer import ByteTokenizer
from fedmirasol.models.video_encoder import scale_tubes

VARIANTS = [
    ("transformer", "chunked"),
    ("ttm", "chunked"),
    ("transformer", "joint"),
]


def make_batch(config, batch_size: int = 3, frames: int | None = None, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    frames = frames or config.num_frames
    chunks = frames // config.frames_per_chunk
    tokenizer = ByteTokenizer()
    return {
        "video": torch.randn(batch_size, frames, 3, config.image_size, config.image_size, generator=generator),
        "audio": 0.1 * torch.randn(batch_size, chunks * config.samples_per_chunk, generator=generator),
        "video_present": torch.ones(batch_size, dtype=torch.bool),
        "audio_present": torch.ones(batch_size, dtype=torch.bool),
        "label": torch.arange(batch_size) % config.num_classes,
        "text": torch.stack([tokenizer.encode(f"clip {i}", config.max_text_len) for i in range(batch_size)]),
    }


@pytest.mark.parametrize("combiner,fusion", VARIANTS)
def test_forward_shapes_and_loss_terms(combiner, fusion):
    config = get_config("tiny", combiner=combiner, fusion=fusion)
    model = build_model(config)
    batch = make_batch(config)
    output = model(batch)
    chunks = config.num_chunks
    assert output.logits.shape == (3, config.num_classes)
    if fusion == "chunked":
        assert output.latents.shape == (3, chunks * config.latents_per_chunk, config.width)
        assert output.latent_loss.shape == (3,)
    else:
        tokens = model.video_encoder.tokens_per_chunk + model.audio_encoder.tokens_per_chunk
        assert output.latents.shape == (3, chunks * tokens, config.width)
        assert output.latent_loss is None
    loss, parts = mirasol_loss(model, batch)
    loss.backward()
    expected = {"class", "text"} | ({"latent"} if fusion == "chunked" else set())
    assert set(parts) == expected
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_parameter_count_does_not_depend_on_frames():
    config = get_config("tiny")
    model = build_model(config).eval()
    count = sum(p.numel() for p in model.parameters())
    for frames in (32, 512):
        output = model(make_batch(config, batch_size=1, frames=frames))
        assert output.latents.shape[1] == frames // config.frames_per_chunk * config.latents_per_chunk
    assert sum(p.numel() for p in model.parameters()) == count
    assert count < 2_000_000


def test_audio_that_does_not_cover_the_video_seconds_is_an_error():
    config = get_config("tiny")
    model = build_model(config)
    batch = make_batch(config)
    batch["audio"] = batch["audio"][:, :-160]
    with pytest.raises(ValueError, match="audio has .* samples but 4 video chunks cover"):
        model(batch)


def test_video_frames_that_do_not_fill_chunks_are_an_error():
    config = get_config("tiny")
    batch = make_batch(config)
    batch["video"] = batch["video"][:, :-1]
    with pytest.raises(ValueError, match="do not split into chunks"):
        build_model(config)(batch)


def test_audio_chunks_are_contiguous_spans():
    audio = torch.arange(12.0).view(1, 12)
    chunks = split_audio_chunks(audio, num_chunks=3, samples_per_chunk=4)
    assert chunks[0, 0].tolist() == [0, 1, 2, 3]
    assert chunks[0, 2].tolist() == [8, 9, 10, 11]


def test_tiny_audio_tokens_carry_the_pitch_in_their_content():
    """A low and a high synthetic tone light the same tiny audio tokens with different contents.

    With patches of 8 of the 32 mel bins the two tones lit different tokens of similar content
    (the pitch was only in which token was loud), and the tiny model took hundreds of steps to
    learn the pitch (none at 256 frames, benchmarks/README.md, video QA)."""
    config = get_config("tiny")
    encoder = build_model(config).audio_encoder
    seconds = torch.arange(config.samples_per_chunk) / config.sample_rate
    low_hz, high_hz = SyntheticConfig.for_model(config).pitches_hz()
    low, high = (encoder.patches(0.5 * torch.sin(2 * torch.pi * hz * seconds)[None], 1)[0, 0]
                 for hz in (low_hz, high_hz))
    loudest = [int(patches.amax(dim=-1).argmax()) for patches in (low, high)]
    assert loudest[0] == loudest[1]
    centred = [patches - patches.mean(dim=-1, keepdim=True) for patches in (low, high)]
    similarity = torch.nn.functional.cosine_similarity(*centred, dim=-1)
    assert float(similarity.max()) < 0.2


@pytest.mark.parametrize("combiner", ["transformer", "ttm"])
def test_chunk_t_never_sees_later_chunks(combiner):
    config = get_config("tiny", combiner=combiner)
    model = build_model(config).eval()
    batch = make_batch(config, batch_size=2)
    changed = {key: value.clone() for key, value in batch.items()}
    last = config.frames_per_chunk * (config.num_chunks - 1)
    changed["video"][:, last:] += 1.0
    changed["audio"][:, config.samples_per_chunk * (config.num_chunks - 1) :] += 0.5
    with torch.no_grad():
        before, after = model(batch).latents, model(changed).latents
    early = (config.num_chunks - 1) * config.latents_per_chunk
    torch.testing.assert_close(before[:, :early], after[:, :early])
    assert not torch.allclose(before[:, early:], after[:, early:])


def test_block_causal_mask():
    mask = block_causal_mask(chunks=3, tokens_per_chunk=2)
    assert mask.shape == (6, 6)
    assert mask[1, 0] and mask[0, 1]  # within a chunk: both ways
    assert mask[2, 1] and not mask[1, 2]  # chunk 1 sees chunk 0, not the reverse


def test_latent_target_is_detached():
    """The last chunk's latents are only ever a target: with a stop-gradient they get no gradient."""
    config = get_config("tiny")
    model = build_model(config)
    latents = torch.randn(2, config.num_chunks, config.latents_per_chunk, config.width, requires_grad=True)
    _, latent_loss = model.autoregressive(latents)
    (grad,) = torch.autograd.grad(latent_loss.sum(), latents)
    assert grad[:, -1].abs().max() == 0
    assert grad[:, 0].abs().max() > 0


@pytest.mark.parametrize("modality", ["audio", "video"])
def test_missing_modality_is_ignored_not_read(modality):
    config = get_config("tiny")
    model = build_model(config).eval()
    batch = make_batch(config, batch_size=2)
    batch[f"{modality}_present"] = torch.tensor([False, True])
    other = {key: value.clone() for key, value in batch.items()}
    other[modality] = torch.randn_like(other[modality])
    with torch.no_grad():
        first, second = model(batch).logits, model(other).logits
    torch.testing.assert_close(first[0], second[0])  # absent: its tensor is never read
    assert not torch.allclose(first[1], second[1])  # present: it is


def test_loss_skips_terms_the_batch_cannot_support():
    config = get_config("tiny")
    model = build_model(config)
    batch = make_batch(config)
    batch["label"][:] = -1
    batch["text"][:] = ByteTokenizer.pad_id
    _, parts = mirasol_loss(model, batch)
    assert set(parts) == {"latent"}
    single_chunk = make_batch(config, frames=config.frames_per_chunk)
    single_chunk["label"][:] = -1
    single_chunk["text"][:] = ByteTokenizer.pad_id
    with pytest.raises(ValueError, match="nothing to learn"):
        mirasol_loss(model, single_chunk)


def test_scaled_tubes_fit_the_chunk():
    tubes = scale_tubes(PAPER_TUBES, reference=(32, 224), frames=8, size=112)
    for tube in tubes:
        for k, s, o, dim in zip(tube.kernel, tube.stride, tube.offset, (8, 112, 112)):
            assert 1 <= k <= dim and s >= 1 and 0 <= o <= dim - k
        assert all(n >= 1 for n in tube.counts((8, 112, 112)))
    # The 16-frame tube becomes a 4-frame tube at a quarter of the frames.
    assert tubes[1].kernel[0] == 4
    # Unscaled, the tube centres follow index * stride + offset + kernel // 2.
    (tube,) = scale_tubes((PAPER_TUBES[1],), (32, 224), 32, 224)
    centres = tube.centres((32, 224, 224))
    assert centres[0].tolist() == [4 + 8, 8 + 2, 8 + 2]
    assert centres[-1].tolist() == [4 + 2 * 6 + 8, 8 + 6 * 32 + 2, 8 + 6 * 32 + 2]


@pytest.mark.parametrize("width", [30, 63, 64, 96, 100, 129])
def test_sincos_works_for_any_width(width):
    coordinates = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(4), torch.arange(4), indexing="ij"), -1).reshape(-1, 3)
    embedding = sincos_3d(coordinates, width)
    assert embedding.shape == (48, width)
    assert torch.isfinite(embedding).all()
    assert torch.unique(embedding, dim=0).shape[0] == 48  # every position is distinct
    assert sincos_1d(torch.arange(5), width).shape == (5, width)


def test_mirasol3b_has_about_three_billion_parameters_on_meta():
    table = parameter_table(build_model("mirasol3b", device="meta"))
    assert abs(table["total"] - 3e9) / 3e9 < 0.10
    assert table["total"] == sum(v for k, v in table.items() if k != "total")


def test_tokenizer_round_trip():
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode("héllo", 16)
    assert ids[0] == tokenizer.bos_id and ids.shape == (16,)
    assert tokenizer.decode(ids[1:]) == "héllo"
    assert tokenizer.decode(tokenizer.encode("x" * 40, 10)[1:]) == "x" * 8


def test_text_decoder_learns_a_caption_and_generates_it():
    torch.manual_seed(0)
    config = get_config("tiny", width=32, heads=2)
    decoder = build_model(config).text_decoder
    context = torch.randn(2, 4, config.width)
    captions = ["a red disc", "two beeps"]
    tokens = torch.stack([decoder.tokenizer.encode(c, 12) for c in captions])
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    for _ in range(80):
        losses, _ = decoder.loss_per_sample(tokens, context)
        optimizer.zero_grad()
        losses.mean().backward()
        optimizer.step()
    assert decoder.generate(context, max_new_tokens=11) == captions
    sampled = decoder.generate(context, max_new_tokens=11, temperature=5.0, generator=torch.Generator().manual_seed(1))
    assert sampled != captions and all(isinstance(s, str) for s in sampled)


def test_unknown_config_and_bad_overrides_are_named():
    with pytest.raises(KeyError, match="unknown model config 'huge'"):
        get_config("huge")
    with pytest.raises(ValueError, match="combiner must be"):
        get_config("tiny", combiner="lstm")
    with pytest.raises(ValueError, match="whole number"):
        get_config("tiny", fps=7.0)
