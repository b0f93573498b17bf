"""The run config's ``[audit]`` section: an empirical privacy audit (`fedmirasol
privacy-audit`), canaries whose treatment by training gives a lower bound on epsilon."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedmirasol.config.base import Section
from fedmirasol.errors import ConfigError

# sample: m canary clips, each in some client's training data with probability 1/2 (DP-SGD's
# unit); client: m canary clients, each taking part with probability 1/2 (client-level DP's).
LEVELS = ("sample", "client")
# noise: Gaussian-noise video, white-noise audio, a random label (out of distribution, the
# strongest); mislabeled: a synthetic clip of the task with a wrong label (in distribution).
CANARY_KINDS = ("noise", "mislabeled")
# updates: each client's update each round, as the server sees it (sample level); final-model:
# the final global model only, as anyone who gets the model sees it.
OBSERVATIONS = ("updates", "final-model")


class AuditConfig(Section):
    """What `fedmirasol privacy-audit` inserts and how it scores. An audit run's model holds
    canaries and is not for use."""

    level: Literal[LEVELS] = "sample"  # type: ignore[valid-type]
    canaries: int = Field(200, ge=4)  # m
    canary_kind: Literal[CANARY_KINDS] = "noise"  # type: ignore[valid-type]
    observe: Literal[OBSERVATIONS] = "updates"  # type: ignore[valid-type]
    # sample level, observe = "updates": the parameters whose updates score a canary (the
    # layer that reads the raw video, where noise canaries' gradients stand apart)
    score_parameters: str = "video_encoder.tokenizer.projections.*"
    # k: guess the k highest-scoring canaries included and the k lowest excluded; 0: the best
    # of a fixed grid of k, the significance split among them (Bonferroni)
    guesses: int = Field(0, ge=0)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    # Where this site's canary clips are (set only by the auditor, as node config
    # audit.canary-dir; a client ignores a value from the server's run config)
    canary_dir: str = ""

    @model_validator(mode="after")
    def _check(self) -> "AuditConfig":
        if 2 * self.guesses > self.canaries:
            raise ConfigError(f"config key 'audit.guesses' ({self.guesses}) guesses k each way: "
                              f"2 x k must not exceed audit.canaries ({self.canaries})")
        return self
