"""LEAF's tasks: how one sample's ``x`` and ``y`` become a model input and a label.

Each task reads ``x`` the way LEAF's reference models do (``models/<dataset>/*.py`` in
TalwalkarLab/leaf, their ``process_x``/``process_y``) and checks it, naming the file and the
user of a sample that does not fit the task:

- femnist: 784 pixel values in [0, 1] (1.0 is the paper's white background), a 28 x 28 image
  flattened row by row as LEAF's ``data_to_json.py`` writes it; 62 classes (digits, upper,
  lower case).
- celeba: an image file name under ``raw/img_align_celeba`` (LEAF's layout), resized to
  84 x 84 RGB; the label is LEAF's 'Smiling' attribute (0 or 1).
- shakespeare: 80 characters; the label is the next character. Characters are LEAF's 80-letter
  alphabet (``ALL_LETTERS``); a character outside it gets one extra 'unknown' id in ``x``.
- sent140: ``[id, date, query, user, text]``; the text's first 25 words (LEAF's
  ``split_line``), lower-cased and hashed into `SENT140_BUCKETS` ids (LEAF looks words up in
  GloVe's vocabulary, which cannot be downloaded here); label 0 (negative) or 1 (positive).
- synthetic: a vector of features (60 in LEAF and FedProx); as many classes as the data holds.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fedmirasol.data.leaf.index import LeafFormatError

TASKS = ("femnist", "shakespeare", "sent140", "celeba", "synthetic")
IMAGE_TASKS = ("femnist", "celeba")

FEMNIST_SIZE = 28
CELEBA_SIZE = 84
CELEBA_IMAGES = Path("raw") / "img_align_celeba"
# LEAF's Shakespeare alphabet (models/utils/language_utils.py): 80 characters, 80 classes.
ALL_LETTERS = ("\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvw"
               "xyz}")
SEQ_LEN = 80
UNKNOWN_LETTER = len(ALL_LETTERS)  # the extra embedding row of a character outside the alphabet
SENT140_WORDS = 25
SENT140_BUCKETS = 10_000  # word ids 1..BUCKETS; 0 pads a short tweet
SENT140_FIELDS = 5
_WORDS = re.compile(r"[\w']+|[.,!?;]")  # LEAF's split_line


@dataclass(frozen=True)
class LeafTask:
    """One LEAF task: its input kind (the batch key its samples carry), its class count, and how
    a sample's ``x`` and ``y`` become a model input and a class index (or a LeafFormatError
    naming the file and user)."""

    name: str
    kind: str  # "image" | "tokens" | "features": the sample key of the model input
    num_classes: int | None  # None: read from the data (synthetic)
    input_of: Callable[[Any, "SampleSite"], torch.Tensor]
    label_of: Callable[[Any, "SampleSite", int], int]

    def label(self, y: Any, site: "SampleSite", num_classes: int) -> int:
        return self.label_of(y, site, num_classes)


@dataclass(frozen=True)
class SampleSite:
    """Where a sample comes from, for error messages (and CelebA's image folder)."""

    path: str
    user: str
    index: int
    root: Path

    def error(self, problem: str) -> LeafFormatError:
        return LeafFormatError(self.path, f"sample {self.index}: {problem}", self.user)


class LeafImageError(LeafFormatError):
    """A CelebA image that cannot be read: the sample is skipped and counted, by `reason`
    ("missing" or "corrupt"), as bad media files are."""

    def __init__(self, site: SampleSite, image: Path, reason: str, detail: str) -> None:
        super().__init__(site.path, f"sample {site.index}: image {image}: {reason}: {detail}",
                         site.user)
        self.reason = reason


def _class_index(y: Any, site: SampleSite, num_classes: int) -> int:
    """An integral number (LEAF's CelebA writes 0.0 / 1.0) in [0, num_classes)."""
    if isinstance(y, bool) or not isinstance(y, (int, float)) or not float(y).is_integer():
        raise site.error(f"label {y!r} is not a class index")
    if not 0 <= int(y) < num_classes:
        raise site.error(f"label {int(y)} is outside the task's {num_classes} classes")
    return int(y)


def _next_letter(y: Any, site: SampleSite, num_classes: int) -> int:
    """Shakespeare's label: the next character, one of LEAF's 80."""
    index = ALL_LETTERS.find(y) if isinstance(y, str) and len(y) == 1 else -1
    if index < 0:
        raise site.error(f"label {y!r} is not one of LEAF's {len(ALL_LETTERS)} Shakespeare "
                         "characters")
    return index


def _femnist(x: Any, site: SampleSite) -> torch.Tensor:
    pixels = _numbers(x, FEMNIST_SIZE * FEMNIST_SIZE, site, "FEMNIST's 28 x 28 pixels")
    # Row-major: x[r * 28 + c] is row r (top to bottom), column c (left to right).
    return torch.from_numpy(pixels.reshape(1, FEMNIST_SIZE, FEMNIST_SIZE))


def _celeba(x: Any, site: SampleSite) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    if not isinstance(x, str):
        raise site.error(f"x must be an image file name for celeba, got {type(x).__name__}")
    image_path = site.root / CELEBA_IMAGES / x
    try:
        with Image.open(image_path) as image:
            rgb = image.convert("RGB").resize((CELEBA_SIZE, CELEBA_SIZE), Image.BICUBIC)
    except FileNotFoundError:
        raise LeafImageError(site, image_path, "missing", "no such file") from None
    except (UnidentifiedImageError, OSError) as error:
        raise LeafImageError(site, image_path, "corrupt", str(error)) from None
    array = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def _shakespeare(x: Any, site: SampleSite) -> torch.Tensor:
    if not isinstance(x, str) or len(x) != SEQ_LEN:
        size = len(x) if isinstance(x, (str, list)) else type(x).__name__
        raise site.error(f"x must be {SEQ_LEN} characters for shakespeare, got {size}")
    ids = [ALL_LETTERS.find(c) for c in x]
    return torch.tensor([UNKNOWN_LETTER if i < 0 else i for i in ids], dtype=torch.long)


def sent140_ids(text: str) -> list[int]:
    """The first 25 words of a tweet as ids in 1..SENT140_BUCKETS, padded with 0."""
    words = _WORDS.findall(text)[:SENT140_WORDS]
    ids = [1 + zlib.crc32(word.lower().encode("utf-8")) % SENT140_BUCKETS for word in words]
    return ids + [0] * (SENT140_WORDS - len(ids))


def _sent140(x: Any, site: SampleSite) -> torch.Tensor:
    if not isinstance(x, list) or len(x) != SENT140_FIELDS or not isinstance(x[4], str):
        raise site.error("x must be [id, date, query, user, text] for sent140")
    return torch.tensor(sent140_ids(x[4]), dtype=torch.long)


def _synthetic(x: Any, site: SampleSite) -> torch.Tensor:
    return torch.from_numpy(_numbers(x, None, site, "a feature vector"))


def _numbers(x: Any, size: int | None, site: SampleSite, what: str) -> np.ndarray:
    if not isinstance(x, list) or (size is not None and len(x) != size):
        got = f"{len(x)} values" if isinstance(x, list) else type(x).__name__
        raise site.error(f"x must be {size or 'a list of'} numbers ({what}), got {got}")
    try:
        values = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise site.error(f"x must hold numbers only ({what})") from None
    if values.ndim != 1 or not np.isfinite(values).all():
        raise site.error(f"x must be a flat list of finite numbers ({what})")
    return values


TASK_SPECS: dict[str, LeafTask] = {
    "femnist": LeafTask("femnist", "image", 62, _femnist, _class_index),
    "celeba": LeafTask("celeba", "image", 2, _celeba, _class_index),
    "shakespeare": LeafTask("shakespeare", "tokens", len(ALL_LETTERS), _shakespeare,
                            _next_letter),
    "sent140": LeafTask("sent140", "tokens", 2, _sent140, _class_index),
    "synthetic": LeafTask("synthetic", "features", None, _synthetic, _class_index),
}


def infer_task(x: Any, path: str, user: str) -> str:
    """The LEAF task one sample's ``x`` belongs to (what `data.leaf-task` may leave out)."""
    if isinstance(x, str):
        if x.lower().endswith((".jpg", ".jpeg", ".png")):
            return "celeba"
        if len(x) == SEQ_LEN:
            return "shakespeare"
    elif isinstance(x, list) and x:
        if len(x) == SENT140_FIELDS and isinstance(x[-1], str):
            return "sent140"
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x):
            return "femnist" if len(x) == FEMNIST_SIZE * FEMNIST_SIZE else "synthetic"
    raise LeafFormatError(path, "cannot tell the LEAF task from its first sample; set "
                          f"data.leaf-task to one of {TASKS}", user)


def feature_dim(x: Any) -> int:
    """The input width of a synthetic sample (its length)."""
    return len(x) if isinstance(x, list) else 0


def image_size(task: str) -> int:
    return FEMNIST_SIZE if task == "femnist" else CELEBA_SIZE
