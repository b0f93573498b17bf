r"""Synthetic(alpha, beta): the federated logistic-regression data of Li et al. (FedProx, MLSys
2020, section 5.1), which LEAF's synthetic dataset builds on, written in LEAF's format.

For user k with dimension d (60) and C classes (10):

    u_k ~ N(0, alpha)        W_k ~ N(u_k, 1)^(d x C)     b_k ~ N(u_k, 1)^C
    B_k ~ N(0, beta)         v_k ~ N(B_k, 1)^d            x ~ N(v_k, Sigma),  Sigma_jj = j^-1.2
    y = argmax softmax(x W_k + b_k)

alpha sets how much the users' models differ, beta how much their inputs differ; ``iid`` gives
every user one W, b ~ N(0, 1) and v = 0. Sample counts per user follow a power law, as in the
paper's generator: floor(lognormal(4, 2)) + 50. Each user's samples are shuffled and split
90 / 10 into train and test (the paper's split; LEAF's ``-t sample`` split). alpha and beta
are standard deviations, as in the paper's generator. numpy, seeded, nothing downloaded.

LEAF's repository script (``data/synthetic/main.py``) generates a related dataset with
clustered per-user models instead of alpha and beta; Synthetic(alpha, beta) is the
parameterization whose FedAvg and FedProx results are published.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmirasol.data.leaf.writer import write_leaf_dataset


@dataclass(frozen=True)
class SyntheticSpec:
    alpha: float
    beta: float
    users: int = 30
    dim: int = 60
    classes: int = 10
    iid: bool = False
    train_fraction: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got {self.alpha}, {self.beta}")
        if self.users < 1 or self.dim < 1 or self.classes < 2:
            raise ValueError("users and dim must be >= 1 and classes >= 2")
        if not 0 < self.train_fraction < 1:
            raise ValueError(f"train fraction must be in (0, 1), got {self.train_fraction}")


def sample_counts(rng: np.random.Generator, users: int) -> np.ndarray:
    """Samples per user: floor(lognormal(mean 4, sigma 2)) + 50."""
    return rng.lognormal(4.0, 2.0, users).astype(np.int64) + 50


def generate(spec: SyntheticSpec) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per user, (``n x dim`` features, ``n`` labels)."""
    rng = np.random.default_rng(spec.seed)
    counts = sample_counts(rng, spec.users)
    scale = np.arange(1, spec.dim + 1, dtype=np.float64) ** -0.6  # sqrt of Sigma's diagonal
    model_means = rng.normal(0.0, spec.alpha, spec.users)  # u_k (b_k shares it)
    input_means = rng.normal(0.0, spec.beta, spec.users)  # B_k
    shared_w = rng.normal(0.0, 1.0, (spec.dim, spec.classes))
    shared_b = rng.normal(0.0, 1.0, spec.classes)
    users = []
    for k in range(spec.users):
        if spec.iid:
            w, b, v = shared_w, shared_b, np.zeros(spec.dim)
        else:
            w = rng.normal(model_means[k], 1.0, (spec.dim, spec.classes))
            b = rng.normal(model_means[k], 1.0, spec.classes)
            v = rng.normal(input_means[k], 1.0, spec.dim)
        x = v + scale * rng.standard_normal((int(counts[k]), spec.dim))
        y = np.argmax(x @ w + b, axis=1)  # softmax keeps the argmax
        users.append((x, y))
    return users


def write_synthetic(spec: SyntheticSpec, out: str | Path) -> tuple[Path, Path]:
    """Generate Synthetic(alpha, beta) and write it as LEAF's ``train/`` and ``test/`` JSON."""
    rng = np.random.default_rng([spec.seed, 0x5B1])
    train, test = {}, {}
    for k, (x, y) in enumerate(generate(spec)):
        order = rng.permutation(len(y))
        cut = int(spec.train_fraction * len(y))
        name = f"f_{k:05d}"
        train[name] = {"x": x[order[:cut]].tolist(), "y": y[order[:cut]].tolist()}
        test[name] = {"x": x[order[cut:]].tolist(), "y": y[order[cut:]].tolist()}
    tag = f"synthetic_{spec.alpha:g}_{spec.beta:g}" + ("_iid" if spec.iid else "")
    return write_leaf_dataset(out, train, test, name=tag)
