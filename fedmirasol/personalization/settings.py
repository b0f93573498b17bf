"""The run config's ``personalization.*`` keys as a validated, frozen value.

Methods: ``none`` (FedAvg's global model), ``fedper`` (personal layers stay on the client),
``fedrep`` (personal head epochs, then shared body epochs), ``ditto`` (a personal model pulled
towards the global one by lambda), ``reptile`` and ``perfedavg`` (first-order meta-learning of
a global model that adapts in a few steps). ``adapt-steps > 0`` also evaluates every client
after that many fine-tuning steps of the model it received (local adaptation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

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


@dataclass(frozen=True)
class PersonalizationSettings:
    method: str = "none"
    layers: str = "head"
    head_epochs: int = 1
    body_epochs: int = 1
    lam: float = 0.1
    personal_epochs: int = 1
    inner_lr: float = 0.01
    meta_lr: float = 1.0
    adapt_steps: int = 0
    adapt_lr: float = 0.002

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"config key 'personalization.method' must be one of {METHODS}, "
                             f"got {self.method!r}")
        for key, value in (("head-epochs", self.head_epochs), ("body-epochs", self.body_epochs),
                           ("personal-epochs", self.personal_epochs),
                           ("adapt-steps", self.adapt_steps)):
            if value < 0:
                raise ValueError(f"config key 'personalization.{key}' must be >= 0, got {value}")
        if self.method == "fedrep" and self.head_epochs + self.body_epochs == 0:
            raise ValueError("fedrep needs personalization.head-epochs + body-epochs >= 1")
        if self.method == "ditto" and self.personal_epochs < 1:
            raise ValueError("ditto needs personalization.personal-epochs >= 1")
        if self.lam < 0:
            raise ValueError(f"config key 'personalization.lambda' must be >= 0, got {self.lam}")
        for key, value in (("inner-lr", self.inner_lr), ("meta-lr", self.meta_lr),
                           ("adapt-lr", self.adapt_lr)):
            if value <= 0:
                raise ValueError(f"config key 'personalization.{key}' must be positive, "
                                 f"got {value}")
        if self.method in META_METHODS and self.adapt_steps < 1:
            raise ValueError(f"{self.method} is evaluated with local adaptation: set "
                             "personalization.adapt-steps >= 1")
        if self.method in LAYER_METHODS and not self.layers.strip():
            raise ValueError(f"{self.method} needs personalization.layers (a preset "
                             f"{tuple(LAYER_PRESETS)} or state_dict name patterns)")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "PersonalizationSettings":
        table = config["personalization"]
        settings = cls(method=table["method"], layers=table["layers"],
                       head_epochs=table["head-epochs"], body_epochs=table["body-epochs"],
                       lam=table["lambda"], personal_epochs=table["personal-epochs"],
                       inner_lr=table["inner-lr"], meta_lr=table["meta-lr"],
                       adapt_steps=table["adapt-steps"], adapt_lr=table["adapt-lr"])
        settings.check_privacy(config)
        return settings

    @property
    def has_personal_layers(self) -> bool:
        return self.method in LAYER_METHODS

    def personal_selectors(self) -> list[str]:
        """State_dict patterns of the personal layers (presets expanded); [] when none."""
        if not self.has_personal_layers:
            return []
        parts = [part.strip() for part in self.layers.split(",") if part.strip()]
        return [LAYER_PRESETS.get(part, part) for part in parts]

    def trains_outside_the_round(self) -> bool:
        """Whether data is read by training steps beyond the client's one local-training pass
        (FedRep's second phase, Ditto's personal model, meta-learning, adaptation)."""
        return self.method not in ("none", "fedper") or self.adapt_steps > 0

    def check_privacy(self, config: Mapping[str, Any]) -> None:
        """Refuse combinations whose extra training steps the DP ledger would not cover."""
        privacy = config.get("privacy", {})
        if privacy.get("enabled", False) and self.trains_outside_the_round():
            raise ValueError(
                f"personalization.method = {self.method!r} with adapt-steps = "
                f"{self.adapt_steps} trains on the client's data outside its DP-SGD round, "
                "which the privacy ledger would not cover; with privacy.enabled use "
                "personalization.method = 'none' or 'fedper' and adapt-steps = 0")
