"""Real handwriting in LEAF's FEMNIST format, offline: scikit-learn's handwritten digits
(1,797 8 x 8 scans of 0-16 ink levels) drawn as FEMNIST draws its characters.

Each digit is scaled to 20 x 20 and centred on a 28 x 28 canvas (MNIST's layout, which FEMNIST
resembles), with FEMNIST's values: 1.0 for the white background, 0.0 for full ink, flattened
row by row (LEAF's ``data_to_json.py``). The digits are dealt to `writers` users in blocks of
uneven size (the scans carry no writer ids); each user's samples are split into train and test
as LEAF's ``split_data.py`` does (``max(1, int(0.9 n))`` to train).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedmirasol.data.leaf.writer import write_leaf_dataset


def femnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """(``N x 784`` FEMNIST-style pixels in [0, 1], ``N`` labels 0-9)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    ink = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]  # N x 1 x 8 x 8
    scaled = F.interpolate(ink, size=(20, 20), mode="bilinear", align_corners=False)
    canvas = torch.zeros(len(ink), 1, 28, 28)
    canvas[:, :, 4:24, 4:24] = scaled.clamp(0.0, 1.0)
    pixels = (1.0 - canvas).reshape(len(ink), 28 * 28).numpy()
    return pixels.round(4), digits.target.astype(np.int64)


def write_digits_femnist(root: str | Path, writers: int = 20, seed: int = 0,
                         limit: int | None = None) -> tuple[Path, Path]:
    """Write the digits (the first `limit`, or all) as a LEAF FEMNIST dataset under `root`."""
    pixels, labels = femnist_digits()
    if limit is not None:
        pixels, labels = pixels[:limit], labels[:limit]
    rng = np.random.default_rng(seed)
    sizes = 2 + np.floor(rng.dirichlet(np.full(writers, 4.0)) * (len(labels) - 2 * writers))
    sizes[-1] += len(labels) - sizes.sum()  # every digit dealt, every writer at least 2
    bounds = [0, *np.cumsum(sizes).astype(int).tolist()]
    train, test = {}, {}
    for w in range(writers):
        x, y = pixels[bounds[w]:bounds[w + 1]], labels[bounds[w]:bounds[w + 1]]
        cut = max(1, int(0.9 * len(y)))
        name = f"f{w:04d}_00"
        train[name] = {"x": x[:cut].tolist(), "y": y[:cut].tolist()}
        test[name] = {"x": x[cut:].tolist(), "y": y[cut:].tolist()}
    return write_leaf_dataset(root, train, test, name="digits")
