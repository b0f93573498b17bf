"""Clip plans over the decoded grid: windows, chunk-aligned audio, dense averaging."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmirasol.data.media.sampling import (
    ClipPlan,
    average_clip_predictions,
    cut_audio,
    plan_clips,
)

PER_SLOT = 2000.0  # 16 kHz at 8 fps


def plan(num_slots: int, strategy: str, **kwargs) -> list[ClipPlan]:
    return plan_clips(num_slots, 16, 4, PER_SLOT, strategy, **kwargs)


def assert_aligned(clip: ClipPlan) -> None:
    """Consecutive windows: chunk t's audio starts at its first slot's time."""
    np.testing.assert_array_equal(clip.audio_starts, clip.slots[::4] * PER_SLOT)


def test_center_is_the_middle_window():
    (clip,) = plan(40, "center")
    np.testing.assert_array_equal(clip.slots, np.arange(12, 28))
    assert_aligned(clip)


def test_random_windows_stay_inside_and_vary():
    rng = np.random.default_rng(0)
    starts = {int(plan(40, "random", rng=rng)[0].slots[0]) for _ in range(50)}
    assert len(starts) > 10 and min(starts) >= 0 and max(starts) <= 24
    with pytest.raises(ValueError, match="rng"):
        plan(40, "random")


def test_dense_spreads_windows_from_start_to_end():
    clips = plan(40, "dense", num_clips=3)
    assert [int(c.slots[0]) for c in clips] == [0, 12, 24]
    for clip in clips:
        assert_aligned(clip)


def test_uniform_spreads_frames_and_centres_audio_on_each_chunk():
    (clip,) = plan(64, "uniform")
    np.testing.assert_array_equal(clip.slots, np.arange(16) * 4 + 2)
    # chunk 0 spans slots 2..14 (15 slots end), centre 8.5 slots, 4 slots of audio around it
    assert clip.audio_starts[0] == round(8.5 * PER_SLOT - 4 * PER_SLOT / 2)
    assert np.all(np.diff(clip.audio_starts) == 16 * PER_SLOT)


def test_short_grid_holds_the_last_frame_and_pads_audio_with_zeros():
    (clip,) = plan(5, "center")
    np.testing.assert_array_equal(clip.slots, [0, 1, 2, 3, 4] + [4] * 11)
    audio = np.ones(5 * 2000, np.float32)
    cut = cut_audio(audio, clip, 8000)
    assert cut.shape == (32_000,) and cut[:10_000].min() == 1 and cut[10_000:].max() == 0


def test_cut_audio_takes_each_chunk_from_its_start():
    audio = np.arange(64_000, dtype=np.float32)
    (clip,) = plan(32, "center")
    cut = cut_audio(audio, clip, 8000)
    np.testing.assert_array_equal(cut, audio[16_000:48_000])


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown sampling strategy"):
        plan(20, "sparse")


def test_dense_predictions_average_per_video():
    logits = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [0.0, 2.0]])
    ids, mean = average_clip_predictions(logits, torch.tensor([0, 0, 1, 1]))
    assert ids.tolist() == [0, 1]
    torch.testing.assert_close(mean, torch.tensor([[2.0, 1.0], [0.0, 3.0]]))
