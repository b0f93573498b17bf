"""The built-in synthetic audio-visual task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmirasol.data.batch import collate
from fedmirasol.data.synthetic import DomainShift, SyntheticAVDataset, SyntheticConfig
from fedmirasol.models import get_config

CONFIG = SyntheticConfig.for_model(get_config("tiny"))


def clips_with_labels(labels, seed=3, **kwargs):
    return SyntheticAVDataset(CONFIG, len(labels), seed=seed, labels=np.asarray(labels), **kwargs)


def test_samples_match_the_model_geometry():
    model = get_config("tiny")
    sample = SyntheticAVDataset(CONFIG, 4, seed=0)[0]
    assert sample["video"].shape == (model.num_frames, 3, model.image_size, model.image_size)
    assert sample["audio"].shape == (model.num_samples,)
    assert sample["video_present"] and sample["audio_present"]
    assert sample["text"].shape == (model.max_text_len,)
    batch = collate([SyntheticAVDataset(CONFIG, 4, seed=0)[i] for i in range(4)])
    assert batch["video"].shape[0] == 4


def test_clips_are_deterministic_by_seed_and_index():
    first, again, other = (SyntheticAVDataset(CONFIG, 8, seed=s) for s in (1, 1, 2))
    torch.testing.assert_close(first[5]["video"], again[5]["video"])
    torch.testing.assert_close(first[5]["audio"], again[5]["audio"])
    assert not torch.equal(first[5]["audio"], other[5]["audio"])
    assert not torch.equal(first[5]["video"], first[6]["video"])


def test_label_needs_both_modalities():
    """Flipping what only the audio carries leaves the video identical, and the reverse."""
    for label in range(CONFIG.num_classes):
        shape, pitch, in_sync = CONFIG.decompose(label)
        sync_flipped = label ^ 1
        pitch_flipped = next(l for l in range(CONFIG.num_classes) if CONFIG.decompose(l) == (shape, 1 - pitch, in_sync))
        shape_flipped = next(l for l in range(CONFIG.num_classes) if CONFIG.decompose(l) == (1 - shape, pitch, in_sync))
        base, no_sync, no_pitch, no_shape = (
            clips_with_labels([l]).render_clip(0) for l in (label, sync_flipped, pitch_flipped, shape_flipped)
        )
        # Sync and pitch are invisible: the frames are the same.
        np.testing.assert_array_equal(base.frames, no_sync.frames)
        np.testing.assert_array_equal(base.frames, no_pitch.frames)
        # Shape is inaudible: the sound is the same.
        np.testing.assert_array_equal(base.audio, no_shape.audio)
        # And each attribute does change its own modality.
        assert not np.array_equal(base.audio, no_sync.audio)
        assert not np.array_equal(base.audio, no_pitch.audio)
        assert not np.array_equal(base.frames, no_shape.frames)


def test_tones_coincide_with_flashes_only_when_in_sync():
    dataset = SyntheticAVDataset(CONFIG, 40, seed=4)
    for index in range(40):
        clip = dataset.render_clip(index)
        in_sync = CONFIG.decompose(clip.label)[2]
        if in_sync:
            assert clip.tone_frames == clip.event_frames
        else:
            event_slots = {f // CONFIG.slot_frames for f in clip.event_frames}
            tone_slots = {f // CONFIG.slot_frames for f in clip.tone_frames}
            assert not event_slots & tone_slots


def test_tone_energy_lands_in_the_tone_slots():
    clip = clips_with_labels([0]).render_clip(0)
    samples_per_slot = len(clip.audio) // CONFIG.num_slots
    energy = [float(np.mean(clip.audio[s * samples_per_slot : (s + 1) * samples_per_slot] ** 2)) for s in range(CONFIG.num_slots)]
    tone_slots = {f // CONFIG.slot_frames for f in clip.tone_frames}
    quiet = max(e for s, e in enumerate(energy) if s not in tone_slots)
    assert all(energy[s] > 10 * quiet for s in tone_slots)


def test_domain_shift_changes_appearance_and_sound_not_labels():
    plain = clips_with_labels([5])
    shifted = clips_with_labels([5], domain=DomainShift.random(seed=7, strength=1.0))
    assert shifted.domain != DomainShift()
    assert plain[0]["label"] == shifted[0]["label"]
    assert not torch.allclose(plain[0]["video"], shifted[0]["video"])
    assert not torch.allclose(plain[0]["audio"], shifted[0]["audio"])
    assert DomainShift.random(seed=7, strength=0.0) == DomainShift()


def test_dropped_modality_is_marked_missing():
    sample = SyntheticAVDataset(CONFIG, 2, seed=0, drop_audio=True)[0]
    assert not sample["audio_present"] and sample["video_present"]
    assert sample["audio"].abs().sum() == 0


def test_caption_describes_the_clip():
    clip = clips_with_labels([CONFIG.num_classes - 1]).render_clip(0)
    assert "in sync" in clip.caption and "high tones" in clip.caption


@pytest.mark.parametrize("classes,expected", [(2, (1, 1)), (4, (2, 1)), (8, (2, 2)), (16, (4, 2)), (32, (4, 4))])
def test_class_counts_factor_into_attributes(classes, expected):
    config = SyntheticConfig(num_classes=classes)
    assert config.attribute_counts == expected
    labels = range(classes)
    assert len({config.decompose(l) for l in labels}) == classes


def test_bad_knobs_are_named():
    with pytest.raises(ValueError, match="num_classes must be even"):
        SyntheticConfig(num_classes=7)
    with pytest.raises(ValueError, match="at most 4 shapes"):
        SyntheticConfig(num_classes=64)
    with pytest.raises(ValueError, match="two slots"):
        SyntheticConfig(num_frames=4, slot_frames=4)


def dominant_hz(audio: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.fft.rfftfreq(len(audio), 1.0 / sample_rate)[spectrum.argmax()])


def test_public_variant_has_other_shapes_and_pitches():
    """Pre-training data for transfer: same kind of clips, none of the main task's shapes or
    pitches, so a model pre-trained on it still has to learn them."""
    public = SyntheticConfig.for_model(get_config("tiny"), public=True)
    assert not set(public.shape_names) & set(CONFIG.shape_names)
    main_hz, public_hz = CONFIG.pitches_hz(), public.pitches_hz()
    assert min(abs(p - m) for p in public_hz for m in main_hz) > 100.0
    for label in range(public.num_classes):
        clip = SyntheticAVDataset(public, 1, seed=5, labels=np.asarray([label])).render_clip(0)
        shape, pitch, _ = public.decompose(label)
        assert clip.caption.split(", ")[0].endswith(public.shape_names[shape])
        assert abs(dominant_hz(clip.audio, public.sample_rate) - public_hz[pitch]) < 20.0
    with pytest.raises(ValueError, match="public variant needs 4 shapes"):
        SyntheticConfig(num_classes=16, public=True)
