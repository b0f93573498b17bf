"""The run config's ``[personalization]`` section (the methods are in fedmirasol.personalization)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedmirasol.config.base import Section
from fedmirasol.errors import ConfigError

# none (FedAvg's global model) | fedper (personal layers stay on the client) | fedrep (personal
# head epochs, then shared body epochs) | ditto (a personal model pulled towards the global one)
# | reptile, perfedavg (first-order meta-learning of a model that adapts in a few steps).
METHODS = ("none", "fedper", "fedrep", "ditto", "reptile", "perfedavg")
# Methods whose personal part is a set of layers kept in the client's state (never sent).
LAYER_METHODS = ("fedper", "fedrep")
# Methods whose personalized model is the global model after local adaptation.
META_METHODS = ("reptile", "perfedavg")
# Named personal-layer presets (state_dict name patterns of the Mirasol model).
LAYER_PRESETS: dict[str, str] = {
    "head": "classifier.*",  # the classification head
    "text-head": "text_decoder.head.*",  # the text decoder's output layer
    "combiner": "combiner.*",  # the per-chunk audio-visual combiner
}


class PersonalizationConfig(Section):
    method: Literal[METHODS] = "none"  # type: ignore[valid-type]
    # fedper/fedrep: the personal layers, kept on the client and never sent; presets head |
    # text-head | combiner and/or state_dict name patterns, comma-separated
    layers: str = "head"
    head_epochs: int = Field(1, ge=0)  # fedrep: personal-head epochs, then
    body_epochs: int = Field(1, ge=0)  # fedrep: shared-body epochs (client.local-epochs unused)
    lam: float = Field(0.1, ge=0.0, alias="lambda")  # ditto: pull towards the global model
    personal_epochs: int = Field(1, ge=0)  # ditto: epochs of the personal model per round
    inner_lr: float = Field(0.01, gt=0.0)  # reptile: inner SGD lr; perfedavg: inner-step alpha
    meta_lr: float = Field(1.0, gt=0.0)  # reptile: the client moves w + meta-lr (w_k - w)
    adapt_steps: int = Field(0, ge=0)  # > 0: also evaluate after this many fine-tuning steps
    adapt_lr: float = Field(0.002, gt=0.0)  # lr of those steps (client.optimizer)

    @model_validator(mode="after")
    def _check(self) -> "PersonalizationConfig":
        if self.method == "fedrep" and self.head_epochs + self.body_epochs == 0:
            raise ConfigError("fedrep needs personalization.head-epochs + body-epochs >= 1")
        if self.method == "ditto" and self.personal_epochs < 1:
            raise ConfigError("ditto needs personalization.personal-epochs >= 1")
        if self.method in META_METHODS and self.adapt_steps < 1:
            raise ConfigError(f"{self.method} is evaluated with local adaptation: set "
                              "personalization.adapt-steps >= 1")
        if self.method in LAYER_METHODS and not self.layers.strip():
            raise ConfigError(f"{self.method} needs personalization.layers (a preset "
                              f"{tuple(LAYER_PRESETS)} or state_dict name patterns)")
        return self

    @property
    def has_personal_layers(self) -> bool:
        return self.method in LAYER_METHODS

    def personal_selectors(self) -> list[str]:
        """State_dict patterns of the personal layers (presets expanded); [] when none."""
        if not self.has_personal_layers:
            return []
        parts = [part.strip() for part in self.layers.split(",") if part.strip()]
        return [LAYER_PRESETS.get(part, part) for part in parts]
