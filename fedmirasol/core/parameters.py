"""Which parameters a client shares and which stay local, and how they travel.

One mechanism for every algorithm that keeps part of the model on the client (FedBN keeps the
normalization layers; FedPer/FedRep/Ditto keep heads or whole copies): a `ParameterSplit`
built from selectors. A selector is either a module-type keyword (``normalization``) or an
fnmatch pattern over state_dict names (``text_decoder.*``); selectors are comma-separated.

Updates travel as deltas (``w_local - w_global``, float32) of the shared parameters only, so
later stages can clip, noise or mask them.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Collection, Iterable, Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import nn

NORMALIZATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

MODULE_TYPE_SELECTORS: dict[str, tuple[type[nn.Module], ...]] = {
    "normalization": NORMALIZATION_TYPES,
}

# Prefixes that wrappers add to state_dict names (Opacus' GradSampleModule, torch.compile).
_WRAPPER_PREFIXES = ("_module.", "_orig_mod.")

NumpyState = dict[str, np.ndarray]


def canonical_name(name: str) -> str:
    """A state_dict name without wrapper prefixes, so wrapped and bare models agree."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "_module") and isinstance(model._module, nn.Module):
        model = model._module
    return model


@dataclass(frozen=True)
class ParameterSplit:
    """The state_dict names that are shared with the server and those kept local."""

    shared: tuple[str, ...]
    local: tuple[str, ...]

    @classmethod
    def from_model(cls, model: nn.Module, selectors: str | Iterable[str] = "",
                   frozen: Collection[str] = ()) -> "ParameterSplit":
        """Split `model`'s state by `selectors`; non-float buffers always stay local.

        The entries named in `frozen` (never trained, identical everywhere) are in neither part.
        """
        model = _unwrap(model)
        state = model.state_dict()
        excluded = set(frozen)
        local = select_names(model, selectors) - excluded
        local |= {name for name, value in state.items() if not value.is_floating_point()}
        shared = tuple(name for name in state if name not in local and name not in excluded)
        return cls(shared=shared, local=tuple(name for name in state if name in local))


def select_names(model: nn.Module, selectors: str | Iterable[str],
                 key: str = "split.local") -> set[str]:
    """The state_dict names that comma-separated `selectors` match; a selector that matches
    nothing raises, naming it and the config `key` it came from."""
    if isinstance(selectors, str):
        selectors = [part.strip() for part in selectors.split(",")]
    model = _unwrap(model)
    state = model.state_dict()
    names: set[str] = set()
    for selector in filter(None, selectors):
        matched = _select(model, state, selector)
        if not matched:
            raise ValueError(f"config key {key!r}: selector {selector!r} matches no parameter "
                             f"of the model")
        names |= matched
    return names


def _select(model: nn.Module, state: Mapping[str, torch.Tensor], selector: str) -> set[str]:
    if selector in MODULE_TYPE_SELECTORS:
        types = MODULE_TYPE_SELECTORS[selector]
        prefixes = [f"{name}." if name else "" for name, module in model.named_modules()
                    if isinstance(module, types)]
        return {name for name in state for prefix in prefixes
                if name.startswith(prefix) and "." not in name[len(prefix):]}
    return {name for name in state if fnmatch.fnmatchcase(name, selector)}


def model_state(model: nn.Module, names: Iterable[str]) -> NumpyState:
    """Copies of the named entries of `model`'s state as float32/native numpy arrays."""
    names = list(names)
    if not names:  # (a split without local parameters: no walk over the model's state)
        return {}
    state = {canonical_name(k): v for k, v in model.state_dict().items()}
    missing = [name for name in names if name not in state]
    if missing:
        raise KeyError(f"model has no parameters named {missing[:5]}")
    return {name: state[name].detach().cpu().numpy().copy() for name in names}


def load_state(model: nn.Module, values: Mapping[str, np.ndarray]) -> None:
    """Load the given entries into `model` (other entries stay as they are)."""
    if not values:
        return
    target = _unwrap(model)
    current = target.state_dict()
    unknown = [name for name in values if name not in current]
    if unknown:
        raise KeyError(f"model has no parameters named {unknown[:5]}")
    update = {}
    for name, value in values.items():
        reference = current[name]
        if tuple(reference.shape) != tuple(value.shape):
            raise ValueError(f"parameter {name!r}: shape {tuple(value.shape)} does not match "
                             f"the model's {tuple(reference.shape)}")
        update[name] = torch.as_tensor(np.asarray(value)).to(reference.dtype)
    target.load_state_dict(update, strict=False)


def to_record(values: Mapping[str, np.ndarray]) -> ArrayRecord:
    """numpy state -> Flower ArrayRecord (keys kept in order)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in values.items()})


def from_record(record: ArrayRecord) -> NumpyState:
    """Flower ArrayRecord -> numpy state."""
    return {name: array.numpy() for name, array in record.items()}


def delta(new: Mapping[str, np.ndarray], old: Mapping[str, np.ndarray]) -> NumpyState:
    """``new - old`` per key, as float32: the update a client sends."""
    return {name: (np.asarray(new[name], np.float32) - np.asarray(old[name], np.float32))
            for name in old}


def apply_delta(base: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]) -> NumpyState:
    """``base + update`` per key, in the dtype of `base`."""
    return {name: (np.asarray(base[name], np.float32) + update[name]).astype(base[name].dtype)
            for name in base}


def num_bytes(values: Mapping[str, np.ndarray]) -> int:
    return int(sum(np.asarray(v).nbytes for v in values.values()))
