"""Starting a federation from a pre-trained checkpoint (public pre-training, private fine-tuning).

`pretrained.checkpoint` names a checkpoint of `fedmirasol train` (``best.pt``/``final.pt``) or a
run's ``final_model.pt``, or a public pre-training recipe (``"public: --epochs 6 ..."``) that
`fedmirasol simulate` trains once and caches (fedmirasol.pretrained.public). Every
process (server and clients) loads the same file into the run's model, so the initial model is
identical everywhere without sending it; the server records the file's SHA-256 in the resolved
config (`pretrained.sha256`) and a process whose file differs refuses to start, naming it.

`pretrained.reset` selectors put parts back to the run's seeded fresh initialization (e.g. a
classification head whose classes mean something else in the private task, or a module the
pre-trained model lacks, such as the `model.input-norm` stem);
`pretrained.freeze` selectors are never trained and never sent: they stay as loaded, on every
client and on the server; `pretrained.trainable` freezes everything it does not match (e.g.
only the classification head is fine-tuned, which is what DP-SGD on little data can afford).
Selectors are those of `split.local` (fedmirasol.core.parameters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedmirasol.config.run import RunConfig
from fedmirasol.config.sections import PretrainedConfig
from fedmirasol.core.parameters import canonical_name, select_names
from fedmirasol.models.objectives import ATTRIBUTE, untrained_names
from fedmirasol.pretrained.digest import file_sha256


def frozen_names(settings: PretrainedConfig, model: nn.Module) -> set[str]:
    """The state_dict names that are never trained nor sent: those the settings freeze and
    those a pre-training objective does not train."""
    frozen = select_names(model, settings.freeze, "pretrained.freeze") | untrained_names(model)
    if settings.trainable:
        keep = select_names(model, settings.trainable, "pretrained.trainable")
        frozen |= {name for name in model.state_dict() if name not in keep}
    return frozen


OBJECTIVE_PREFIX = f"{ATTRIBUTE}."

# The README's public pre-training recipe (dp.toml and secagg.toml name it as a `public:` one).
PUBLIC_TRAIN_FLAGS = "--threads 1 --epochs 6 --val-clips 400"


def _checkpoint_path(settings: PretrainedConfig) -> Path:
    path = Path(settings.checkpoint).expanduser()
    if not path.is_file():
        out = path.parent if path.name in ("best.pt", "final.pt") else path.with_suffix("")
        use = "" if path.name in ("best.pt", "final.pt") else f", then point it at {out}/best.pt"
        raise FileNotFoundError(
            f"config key 'pretrained.checkpoint': no checkpoint file at {path}. Pre-train one "
            f"(about 6 minutes on 2 CPU cores) with `fedmirasol train --public "
            f"{PUBLIC_TRAIN_FLAGS} --out {out}`{use}; or set pretrained.checkpoint = "
            f"\"public: {PUBLIC_TRAIN_FLAGS}\" and `fedmirasol simulate` trains and caches it on "
            f"first use; or pass --no-pretrain to `fedmirasol simulate` to start from scratch "
            f"(under DP-SGD that stays near chance)")
    return path


def _recipe_checkpoint(config: RunConfig, checkpoint: str) -> Path:
    from fedmirasol.pretrained import public

    recipe = public.Recipe.parse(checkpoint, config.model.name)
    path = public.cached_checkpoint(recipe)
    if path is None:
        raise FileNotFoundError(f"config key 'pretrained.checkpoint' = {checkpoint!r}: "
                                + public.not_trained_message(recipe))
    return path


def with_digest(config: RunConfig) -> RunConfig:
    """`config` with `pretrained.sha256` filled in from the checkpoint file when it is empty,
    and the checkpoint's path made absolute (other processes may run elsewhere). A `public:`
    recipe becomes its cached file (checked against the digest recorded when it was trained);
    one not trained yet raises, saying how to train it."""
    settings = config.pretrained
    if settings.checkpoint and not settings.sha256:
        from fedmirasol.pretrained.public import is_recipe

        if is_recipe(settings.checkpoint):
            path = _recipe_checkpoint(config, settings.checkpoint)
        else:
            path = _checkpoint_path(settings).resolve()
        pretrained = settings.model_copy(update={"checkpoint": str(path),
                                                 "sha256": file_sha256(path)})
        return config.model_copy(update={"pretrained": pretrained})
    return config


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, model config) of a `fedmirasol train` checkpoint or a run's final model."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        raise ValueError(f"pretrained checkpoint {path} cannot be read: {error}") from error
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
        raise ValueError(f"pretrained checkpoint {path} holds no 'state_dict' (expected a file "
                         f"written by `fedmirasol train` or a run's final_model.pt)")
    model_config = payload.get("config", payload.get("model_config", {}))
    return payload["state_dict"], dict(model_config or {})


def load_pretrained(model: nn.Module, settings: PretrainedConfig) -> None:
    """Load `pretrained.checkpoint` into `model` (seeded fresh weights), then reset and freeze.

    Raises, naming the file, when its digest differs from `pretrained.sha256` or its parameters
    do not match the run's model.
    """
    frozen = frozen_names(settings, model)
    both = sorted(frozen & select_names(model, settings.reset, "pretrained.reset"))
    if both:
        raise ValueError(f"pretrained.reset and pretrained.freeze/trainable both select "
                         f"{both[:3]}: reset and frozen, they would stay at random init")
    if settings.checkpoint:
        _load_checkpoint(model, settings)
    _freeze(model, frozen)


def _load_checkpoint(model: nn.Module, settings: PretrainedConfig) -> None:
    path = _checkpoint_path(settings)
    if settings.sha256 and file_sha256(path) != settings.sha256:
        raise ValueError(f"pretrained checkpoint {path} is not the file the server started from "
                         f"(its SHA-256 differs from pretrained.sha256 = {settings.sha256[:12]}...)")
    state, saved_config = read_state_dict(path)
    state = {canonical_name(name): value for name, value in state.items()}
    own = model.state_dict()
    reset = select_names(model, settings.reset, "pretrained.reset")
    # A pre-training objective's own parts (decoders, projections): a fine-tuning run drops the
    # file's, and a run's own objective starts fresh where the file has none.
    objective = {name for name in own if name.startswith(OBJECTIVE_PREFIX)}
    state = {name: value for name, value in state.items()
             if not name.startswith(OBJECTIVE_PREFIX) or name in own}
    missing = sorted(set(own) - set(state) - reset - objective)  # reset parts need not be there
    unexpected = sorted(set(state) - set(own))
    mismatched = [name for name in own if name in state
                  and tuple(state[name].shape) != tuple(own[name].shape)]
    if missing or unexpected or mismatched:
        fields = _model_fields(model)
        differs = sorted(key for key, value in saved_config.items()
                         if key in fields and fields[key] != value)
        raise ValueError(
            f"pretrained checkpoint {path} does not fit the run's model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, other shapes {mismatched[:3]}"
            + (f"; model fields that differ: {differs}" if differs else ""))
    fresh = {name: own[name].clone() for name in reset | (objective - set(state))}
    model.load_state_dict({**state, **fresh})


def _model_fields(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return config.to_dict() if hasattr(config, "to_dict") else {}


def _freeze(model: nn.Module, names: set[str]) -> None:
    for name, param in model.named_parameters():
        if canonical_name(name) in names:
            param.requires_grad_(False)
