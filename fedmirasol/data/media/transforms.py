"""Frame geometry and normalization.

Aspect ratio: frames are resized (with antialiasing, an area filter) so the *short* side equals
the model's `image_size`, keeping the aspect ratio; a square `image_size` crop is then taken,
from the centre at evaluation and at a random place in training. Nothing is stretched and no
black bars are added.
"""

from __future__ import annotations

import numpy as np
import torch

from fedmirasol.data.batch import VIDEO_MEAN, VIDEO_STD


def resized_shape(width: int, height: int, image_size: int) -> tuple[int, int]:
    """(width, height) with the short side at `image_size` and the aspect ratio kept."""
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    scale = image_size / min(width, height)
    return max(image_size, round(width * scale)), max(image_size, round(height * scale))


def crop_offsets(height: int, width: int, size: int, rng: np.random.Generator | None) -> tuple[int, int]:
    """Top-left corner of a `size` square: centred, or uniformly random when `rng` is given."""
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}x{size} from {width}x{height}")
    if rng is None:
        return (height - size) // 2, (width - size) // 2
    return int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))


def to_model_video(
    frames: np.ndarray, size: int, rng: np.random.Generator | None = None
) -> torch.Tensor:
    """uint8 ``N x h x w x 3`` (short side `size`) -> normalized float ``N x 3 x size x size``.

    The arithmetic of `normalize_video`, done in numpy: torch's intra-op threads cost more
    than they save on tensors this small (ten times slower on a busy 2-core machine).
    """
    top, left = crop_offsets(frames.shape[1], frames.shape[2], size, rng)
    crop = frames[:, top : top + size, left : left + size].transpose(0, 3, 1, 2)
    video = crop.astype(np.float32) / np.float32(255.0)
    video -= _MEAN
    video /= _STD
    return torch.from_numpy(np.ascontiguousarray(video))


_MEAN = np.asarray(VIDEO_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(VIDEO_STD, dtype=np.float32).reshape(3, 1, 1)
