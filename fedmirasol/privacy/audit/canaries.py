"""Sample-level canaries: the clips an auditor slips into the clients' training data.

The auditor (the run's operator) draws m canaries, each with a random label, a client that
would hold it, and a secret inclusion bit (probability 1/2, from the operating system's
CSPRNG). Each client gets a file with the canaries included at that client and nothing else:
no excluded canary, no bit, no other client's canaries. The bits stay with the auditor until
the audit is written (audit.json); neither the server nor the run directory sees them before.

Kinds: ``noise`` clips (video of i.i.d. Gaussian pixels in the model's normalized range,
white-noise audio) are out of distribution, so their gradients stand apart from the task's and
from each other's; ``mislabeled`` clips are synthetic clips of the task with a wrong label.
Neither has a caption, so only the class (and latent) terms of the objective see them.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fedmirasol.data.batch import Sample
from fedmirasol.data.synthetic import SyntheticAVDataset, SyntheticConfig
from fedmirasol.models.config import MirasolConfig
from fedmirasol.models.tokenizer import ByteTokenizer

KINDS = ("noise", "mislabeled")
SAMPLE_KEYS = ("video", "audio", "label", "text")
ID_KEY = "canary_id"


def client_file(directory: str | Path, partition_id: int) -> Path:
    """Where client `partition_id`'s canaries are (absent: it holds none)."""
    return Path(directory) / f"client-{int(partition_id):05d}.safetensors"


@dataclass(frozen=True)
class CanaryPlan:
    """The auditor's secret: what each canary is, which client would hold it, and whether it
    was included."""

    kind: str
    seed: int  # the canaries' content (not their bits)
    labels: np.ndarray  # m labels
    owners: np.ndarray  # m partition ids
    included: np.ndarray  # m bits

    @classmethod
    def draw(cls, count: int, num_clients: int, num_classes: int, kind: str) -> "CanaryPlan":
        """m canaries spread evenly over the clients (in random order), each included with
        probability 1/2; every draw from the operating system's CSPRNG."""
        if kind not in KINDS:
            raise ValueError(f"canary kind must be one of {KINDS}, got {kind!r}")
        if count < 2 or num_clients < 1:
            raise ValueError(f"need at least 2 canaries and 1 client, got {count}, {num_clients}")
        rng = np.random.default_rng(secrets.randbits(128))
        owners = rng.permutation(count) % num_clients
        included = np.frombuffer(secrets.token_bytes(count), dtype=np.uint8) % 2 == 1
        return cls(kind, secrets.randbits(63), rng.integers(num_classes, size=count),
                   owners.astype(np.int64), included)

    @property
    def count(self) -> int:
        return len(self.labels)

    def samples(self, model: MirasolConfig, indices: list[int] | None = None) -> list[Sample]:
        """The canaries (all, or those at `indices`) as training samples."""
        indices = list(range(self.count)) if indices is None else indices
        return [canary_sample(self.kind, self.seed, i, int(self.labels[i]), model)
                for i in indices]

    def write_client_files(self, directory: str | Path, model: MirasolConfig) -> dict[int, int]:
        """One file per client holding its included canaries; {partition: count}."""
        directory = Path(directory)
        counts: dict[int, int] = {}
        for owner in np.unique(self.owners):
            mine = [int(i) for i in np.flatnonzero((self.owners == owner) & self.included)]
            if not mine:
                continue
            samples = self.samples(model, mine)
            tensors = {key: torch.stack([s[key] for s in samples]).contiguous()
                       for key in SAMPLE_KEYS}
            tensors[ID_KEY] = torch.tensor(mine, dtype=torch.long)
            save_file(tensors, str(client_file(directory, int(owner))),
                      metadata={"kind": self.kind, "format": "fedmirasol-canaries-1"})
            counts[int(owner)] = len(mine)
        return counts

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "seed": self.seed, "labels": self.labels.tolist(),
                "owners": self.owners.tolist(), "included": self.included.tolist()}

    @classmethod
    def from_json(cls, table: Mapping[str, Any]) -> "CanaryPlan":
        return cls(str(table["kind"]), int(table["seed"]), np.asarray(table["labels"]),
                   np.asarray(table["owners"]), np.asarray(table["included"], dtype=bool))


def canary_sample(kind: str, seed: int, index: int, label: int, model: MirasolConfig) -> Sample:
    """Canary `index` of the canary set `seed`: a clip of the model's geometry with `label`."""
    config = SyntheticConfig.for_model(model)
    rng = np.random.default_rng([seed, index])
    if kind == "noise":
        video = torch.from_numpy(rng.standard_normal(
            (config.num_frames, 3, config.image_size, config.image_size)).astype(np.float32))
        audio = torch.from_numpy(rng.uniform(-1.0, 1.0, config.num_samples).astype(np.float32))
    elif kind == "mislabeled":
        true = int(rng.integers(config.num_classes))
        clip = SyntheticAVDataset(config, 1, seed=int(rng.integers(2**62)),
                                  labels=np.array([true]))[0]
        video, audio = clip["video"], clip["audio"]
        if label == true:  # a wrong label, whatever the plan drew
            label = (true + 1) % config.num_classes
    else:
        raise ValueError(f"canary kind must be one of {KINDS}, got {kind!r}")
    return {"video": video, "audio": audio, "video_present": torch.tensor(True),
            "audio_present": torch.tensor(True), "label": torch.tensor(label, dtype=torch.long),
            "text": ByteTokenizer().empty(config.max_text_len)}


def read_client_canaries(directory: str | Path, partition_id: int) -> tuple[list[Sample],
                                                                            list[int]]:
    """Client `partition_id`'s canaries and their ids (none when it has no file)."""
    path = client_file(directory, partition_id)
    if not path.is_file():
        if not Path(directory).is_dir():
            raise FileNotFoundError(f"audit.canary-dir {directory} does not exist")
        return [], []
    tensors = load_file(str(path))
    missing = [key for key in (*SAMPLE_KEYS, ID_KEY) if key not in tensors]
    if missing:
        raise ValueError(f"{path} is not a canary file (no {missing})")
    ids = [int(i) for i in tensors[ID_KEY]]
    samples = [{"video": tensors["video"][n], "audio": tensors["audio"][n],
                "video_present": torch.tensor(True), "audio_present": torch.tensor(True),
                "label": tensors["label"][n], "text": tensors["text"][n]}
               for n in range(len(ids))]
    return samples, ids


def plan_summary(plan: CanaryPlan) -> str:
    """One line for logs that gives away no bit: how many canaries and clients."""
    return json.dumps({"canaries": plan.count, "clients": int(len(np.unique(plan.owners))),
                       "kind": plan.kind})
