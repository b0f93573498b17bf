"""The run config's ``[privacy]`` section (what a run asks for: sample-level or user-level
DP-SGD, client-level DP) and ``[site-privacy]`` (what a site demands of any run on its data)."""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field, model_validator

from fedmirasol.config.base import Section
from fedmirasol.errors import ConfigError

ACCOUNTANTS = ("rdp", "prv")
# bk (book-keeping: expanded weights whose Linear weights keep inputs and output gradients,
# ghost norms where cheaper; as fast as ew, less memory) | ew (PyTorch expanded weights) |
# hooks | functorch: the same per-sample norms, clipped sums, noise and accounting
# (benchmarks/dp_overhead.py). Opacus' ghost clipping runs on Mirasol
# (benchmarks/ghost_clipping.py) but needs two backward passes, so it is benchmarked, not
# offered for training.
GRAD_SAMPLE_MODES = ("bk", "ew", "hooks", "functorch")
# The unit of privacy: one clip (one manifest row), or one user (all clips that share the
# manifest's `user` column, else its `video` column; synthetic data: data.clips-per-user).
UNITS = ("clip", "user")
# A site's validation split: private (released only as DP figures, or not at all) or public
# (a non-private evaluation split the site declares: its figures leave in the clear).
EVAL_SPLITS = ("private", "public")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class PrivacyConfig(Section):
    """Sample-level DP-SGD (Opacus) on every client, optionally calibrated to a target epsilon
    and capped by a per-client budget; or client-level DP (each update clipped, Gaussian noise
    on the equal-weight mean of the sampled clients)."""

    enabled: bool = False
    noise_multiplier: float = Field(1.0, ge=0.0)  # sigma; calibrated when target-epsilon > 0
    max_grad_norm: float = Field(1.0, gt=0.0)  # per-sample L2 clip C
    delta: float = Field(1e-5, gt=0.0, lt=1.0)
    accountant: Literal[ACCOUNTANTS] = "rdp"  # type: ignore[valid-type]
    target_epsilon: float = Field(0.0, ge=0.0)  # > 0: calibrate sigma to end the run under it
    budget_epsilon: float = Field(0.0, ge=0.0)  # > 0: a client never trains past it
    # Poisson sampling rate q of each local step; 0: client.batch-size / the client's training
    # clips (client.batch-size is then the expected batch size).
    sample_rate: float = Field(0.0, ge=0.0, le=1.0)
    grad_sample_mode: Literal[GRAD_SAMPLE_MODES] = "bk"  # type: ignore[valid-type]
    max_physical_batch_size: int = Field(0, ge=0)  # > 0: BatchMemoryManager splits batches
    client_level: bool = False  # FedAvg/FedProx/FedBN only
    client_clip_norm: float = Field(1.0, gt=0.0)  # L2 bound of a client's update
    client_noise_multiplier: float = Field(1.0, ge=0.0)  # z
    unit: Literal[UNITS] = "clip"  # type: ignore[valid-type]
    clips_per_user: int = Field(4, ge=1)  # unit = "user": at most k clips of a user per step
    # Per-sample loss bound of the DP loss figures a client releases (noised sum of clipped
    # losses and noised count over one more Poisson batch, charged to its accountant)
    metric_loss_bound: float = Field(10.0, gt=0.0)
    # > 0: federated evaluation on the private validation split is released as noised counts
    # (charged to the accountant at this noise multiplier); 0: nothing is released from it
    eval_noise_multiplier: float = Field(0.0, ge=0.0)
    # client-level DP: keep per-client rows and the sampled list in the run directory (reveals
    # who was drawn each round, which the reported client-level epsilon counts on hiding)
    keep_client_rows: bool = False

    @model_validator(mode="after")
    def _check(self) -> "PrivacyConfig":
        for name, value in self.model_dump().items():
            if isinstance(value, float) and math.isnan(value):
                raise ConfigError(f"config key 'privacy.{name.replace('_', '-')}' is out of "
                                  f"range: {value!r}")
        if self.enabled and self.target_epsilon == 0 and self.noise_multiplier == 0:
            raise ConfigError("config key 'privacy.noise-multiplier' is 0 with DP enabled: "
                              "that is no privacy; set it > 0 or set privacy.target-epsilon")
        if self.unit == "user" and self.max_physical_batch_size > 0:
            raise ConfigError("config key 'privacy.max-physical-batch-size' cannot split the "
                              "batches of privacy.unit = 'user' (a user's clips are clipped "
                              "together); set it to 0")
        if 0 < self.budget_epsilon < self.target_epsilon:
            raise ConfigError(f"config key 'privacy.budget-epsilon' ({self.budget_epsilon}) is "
                              f"below privacy.target-epsilon ({self.target_epsilon})")
        return self

    @property
    def budget(self) -> float:
        """The epsilon no client may exceed (inf when neither budget nor target is set)."""
        if self.budget_epsilon > 0:
            return self.budget_epsilon
        return self.target_epsilon if self.target_epsilon > 0 else math.inf

    @property
    def calibrated(self) -> bool:
        """True when each client derives sigma from target-epsilon."""
        return self.target_epsilon > 0


class SitePrivacyConfig(Section):
    """What a site demands of every run that trains on its data. A deployed site sets these as
    ``privacy.<key>`` in its node config; `fedmirasol simulate` gives the run config's
    ``[site-privacy]`` to every virtual client. A client never takes them from the server."""

    required: bool = False  # refuse runs without DP-SGD on this site's data
    min_noise_multiplier: float = Field(0.0, ge=0.0)  # refuse less noise (training, evaluation)
    max_epsilon: float = Field(0.0, ge=0.0)  # > 0: per run; refuse a larger target, never pass it
    max_delta: float = Field(1e-5, gt=0.0, lt=1.0)  # refuse a larger delta; the site's budgets' delta
    accountant: Literal[("",) + ACCOUNTANTS] = ""  # type: ignore[valid-type]  # "" = any
    unit: Literal[("",) + UNITS] = ""  # type: ignore[valid-type]  # "" = any
    # > 0: epsilon (at max-delta) this site's dataset may spend over all runs, ever
    lifetime_epsilon: float = Field(0.0, ge=0.0)
    dataset_id: str = "default"  # the dataset the lifetime accountant belongs to
    eval_split: Literal[EVAL_SPLITS] = "private"  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _check(self) -> "SitePrivacyConfig":
        if not SAFE_NAME.fullmatch(self.dataset_id):
            raise ConfigError(f"privacy.dataset-id {self.dataset_id!r} must be letters, digits, "
                              "'.', '_' or '-' (it names a file in the site's state-dir)")
        return self

    @property
    def demands_dp(self) -> bool:
        """Whether this site takes part only in runs with DP-SGD on its data."""
        return self.required or self.max_epsilon > 0 or self.lifetime_epsilon > 0 \
            or self.min_noise_multiplier > 0
