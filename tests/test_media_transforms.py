"""Frame geometry: short side to the model's size with the aspect kept, crops, normalization."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmirasol.data.batch import normalize_video
from fedmirasol.data.media.transforms import crop_offsets, resized_shape, to_model_video


@pytest.mark.parametrize(
    ("width", "height", "want"),
    [
        (640, 480, (43, 32)),
        (480, 640, (32, 43)),
        (1920, 1080, (57, 32)),
        (32, 32, (32, 32)),
        (16, 12, (43, 32)),
    ],
)
def test_resized_shape_puts_the_short_side_at_the_model_size(width, height, want):
    assert resized_shape(width, height, 32) == want


def test_model_video_is_normalize_video_of_the_crop():
    frames = np.random.default_rng(0).integers(0, 256, (4, 24, 32, 3), dtype=np.uint8)
    video = to_model_video(frames, 24)
    crop = torch.from_numpy(frames[:, :, 4:28]).permute(0, 3, 1, 2).float() / 255.0
    assert video.shape == (4, 3, 24, 24) and video.is_contiguous()
    torch.testing.assert_close(video, normalize_video(crop), rtol=0, atol=1e-6)
    offsets = {crop_offsets(24, 32, 24, np.random.default_rng(s)) for s in range(40)}
    assert {top for top, _ in offsets} == {0} and {left for _, left in offsets} == set(range(9))
