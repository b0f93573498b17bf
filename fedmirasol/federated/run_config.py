"""The simulation run config: defaults, TOML files, `key=value` overrides and validation.

A run config is a nested dict of plain values (JSON- and TOML-friendly). Keys use dashes, the
way Flower's run configs do; dotted paths (``strategy.name``) address nested keys, so the same
names work in `--set`, in `flwr run --run-config` and in `[tool.flwr.app.config]`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from fedmirasol.errors import ConfigError, UnknownKeyError, did_you_mean
from fedmirasol.models.config import NAMED_CONFIGS, MirasolConfig

if TYPE_CHECKING:
    from torch import nn

    from fedmirasol.federated.parameters import ParameterSplit

Config = dict[str, Any]

DEFAULTS: Config = {
    "name": "quickstart",
    "seed": 0,
    "num-rounds": 20,
    "model": {"name": "tiny"},  # plus any MirasolConfig field, e.g. model.num-frames = 8
    "data": {
        # "synthetic", "manifest", or "site" (deployment: every SuperNode brings its own
        # manifest through its node config, fedmirasol.deploy.site)
        "source": "synthetic",
        "manifest": "",  # path of a media manifest when source = "manifest"
        "num-clients": 10,
        "clips-per-client": 80,  # mean clips per client (train + validation)
        "test-clips": 240,  # the server's held-out test set
        "val-fraction": 0.2,
        "partitioner": "dirichlet",  # iid | dirichlet | pathological | quantity
        "alpha": 0.5,  # Dirichlet label skew
        "min-partition-size": 4,
        "classes-per-client": 2,  # pathological
        "quantity-alpha": 1.0,  # quantity skew: Dirichlet over client sizes
        "domains": 0,  # feature shift: number of distinct client domains (0 = none)
        "domain-strength": 1.0,
        "drop-audio-prob": 0.0,  # probability that a client has no audio
        "drop-video-prob": 0.0,  # probability that a client has no video
    },
    "client": {
        "local-epochs": 2,
        "batch-size": 8,
        "optimizer": "adam",  # adam | sgd
        "lr": 0.002,
        "momentum": 0.9,
        "weight-decay": 0.0,
        "device": "cpu",
        "threads": 1,  # torch threads per simulated client
        "eval-batch-size": 32,
    },
    "strategy": {
        # fedavg | fedprox | fedbn | fedadam | fedyogi | fedadagrad | fedavgm | trimmed-mean
        # | median | krum | multikrum | bulyan
        "name": "fedavg",
        "fraction-train": 1.0,
        "fraction-evaluate": 1.0,
        "min-train-nodes": 2,
        "min-evaluate-nodes": 2,
        "min-available-nodes": 2,
        "proximal-mu": 0.0,
        "server-lr": 0.01,  # eta of FedAdam/FedYogi/FedAdagrad, server lr of FedAvgM
        "server-momentum": 0.9,  # FedAvgM
        "beta-1": 0.9,
        "beta-2": 0.99,
        "tau": 0.001,
        "trim-beta": 0.2,  # trimmed mean: fraction cut from each end
        "num-malicious": 0,  # Krum, MultiKrum, Bulyan
        "num-to-keep": 0,  # MultiKrum (0 = Flower's default)
        "round-timeout": 600.0,  # seconds a round waits for replies
    },
    "split": {
        # Parameters that stay on the clients: "normalization" (module types) and/or
        # comma-separated state_dict name patterns (fnmatch). Empty: everything is shared.
        "local": "",
    },
    "pretrained": {
        # Start from a pre-trained checkpoint (`fedmirasol train --public`'s best.pt, or a
        # run's final_model.pt) that every process loads; fedmirasol.federated.pretrained.
        "checkpoint": "",
        "sha256": "",  # filled in from the file by the server; a client's file must match
        "reset": "",  # selectors put back to the fresh seeded init (e.g. "classifier.*")
        "freeze": "",  # selectors never trained and never sent (e.g. "video_encoder.*")
        "trainable": "",  # if set: everything these selectors do not match is frozen
    },
    "faults": {
        # Fault injection for robustness experiments: comma-separated partition ids.
        "crash-clients": "",  # raise during training
        "nan-clients": "",  # reply with a NaN update
        "slow-clients": "",  # sleep `slow-seconds` before training (to test round timeouts)
        "slow-seconds": 0.0,
    },
    "server": {
        "evaluate-every": 1,  # centralized evaluation every N rounds (0: never)
    },
    "simulation": {
        "max-parallel-clients": 0,  # virtual clients trained at once (0: one per CPU core)
    },
    "output": {
        "runs-dir": "runs",
        "checkpoint-every": 1,
        "plots": True,  # write plots/*.png at the end of a run (`fedmirasol report` can later)
        # A run directory to resume after its last checkpoint (a deployed ServerApp or
        # SuperLink that died: `flwr run . --run-config 'output.resume-from="DIR"'`).
        "resume-from": "",
    },
    "personalization": {
        # none | fedper | fedrep | ditto | reptile | perfedavg (fedmirasol.personalization)
        "method": "none",
        # fedper/fedrep: the personal layers, kept on the client and never sent; presets
        # head | text-head | combiner and/or state_dict name patterns, comma-separated
        "layers": "head",
        "head-epochs": 1,  # fedrep: personal-head epochs, then
        "body-epochs": 1,  # fedrep: shared-body epochs (client.local-epochs is not used)
        "lambda": 0.1,  # ditto: pull of the personal model towards the global one
        "personal-epochs": 1,  # ditto: epochs of the personal model per round
        "inner-lr": 0.01,  # reptile: inner SGD lr; perfedavg: alpha of the inner step
        "meta-lr": 1.0,  # reptile: the client moves w + meta-lr (w_k - w)
        "adapt-steps": 0,  # > 0: also evaluate after this many local fine-tuning steps
        "adapt-lr": 0.002,  # lr of those steps (client.optimizer)
    },
    "privacy": {
        # Sample-level DP-SGD (Opacus) on every client; checked by fedmirasol.privacy.settings.
        "enabled": False,
        "noise-multiplier": 1.0,  # sigma; ignored (calibrated) when target-epsilon > 0
        "max-grad-norm": 1.0,  # per-sample L2 clip C
        "delta": 1e-5,
        "accountant": "rdp",  # rdp | prv
        "target-epsilon": 0.0,  # > 0: calibrate sigma so the whole run ends at or under it
        "budget-epsilon": 0.0,  # > 0: a client never trains past it (default: target-epsilon)
        # Poisson sampling rate q of each local step; 0: client.batch-size / the client's
        # training clips (client.batch-size is then the expected batch size).
        "sample-rate": 0.0,
        # ew (PyTorch expanded weights, the fastest on Mirasol) | hooks | functorch: the same
        # per-sample gradients, clipping, noise and accounting (benchmarks/dp_overhead.py)
        "grad-sample-mode": "ew",
        "max-physical-batch-size": 0,  # > 0: BatchMemoryManager splits larger Poisson batches
        # Client-level DP (FedAvg/FedProx/FedBN only): each client clips its update, the server
        # averages with equal weights and adds N(0, (z * clip / sampled)^2) per coordinate.
        "client-level": False,
        "client-clip-norm": 1.0,  # L2 bound of a client's update
        "client-noise-multiplier": 1.0,  # z
    },
    "secagg": {
        # Secure aggregation (SecAgg+, fedmirasol.secagg): the server learns only the sum.
        "enabled": False,
        "reconstruction-fraction": 0.67,  # threshold t = ceil(fraction * share holders)
        "num-neighbours": 0,  # SecAgg+ ring neighbours per client (0: all other clients)
        "bits": 16,  # quantization: +-range maps to +-2^(bits-1) per unit of weight
        "range": 0.0,  # bound of |update value|; 0: privacy.client-clip-norm, else measured
        "weighting": "examples",  # examples | equal (equal under client-level DP)
    },
}

CHOICES: dict[str, tuple[str, ...]] = {
    "data.source": ("synthetic", "manifest", "site"),
    "data.partitioner": ("iid", "dirichlet", "pathological", "quantity"),
    "client.optimizer": ("adam", "sgd"),
    "strategy.name": (
        "fedavg", "fedprox", "fedbn", "fedadam", "fedyogi", "fedadagrad", "fedavgm",
        "trimmed-mean", "median", "krum", "multikrum", "bulyan",
    ),
    "privacy.accountant": ("rdp", "prv"),
    # Ghost clipping is measured, not offered: made to run on Mirasol
    # (fedmirasol/privacy/ghost_clipping.py), its two backward passes cost more than ew here.
    "privacy.grad-sample-mode": ("ew", "hooks", "functorch"),
    "secagg.weighting": ("examples", "equal"),
}
# Strategies that only need the (weighted) mean of the updates, which is what secure
# aggregation reveals; robust aggregators need every update and cannot run under it.
SECAGG_STRATEGIES = ("fedavg", "fedprox", "fedbn", "fedadam", "fedyogi", "fedadagrad", "fedavgm")
# Strategies whose aggregate is a plain mean, which client-level DP replaces by its noised one.
CLIENT_LEVEL_STRATEGIES = ("fedavg", "fedprox", "fedbn")

_MODEL_FIELDS = {f.name.replace("_", "-"): f for f in dataclasses.fields(MirasolConfig)}


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b": value}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> Config:
    """{"a.b": value} -> nested dict."""
    nested: Config = {}
    for path, value in flat.items():
        node = nested
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse one `key=value`; the value is read as a TOML value, else kept as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = (part.strip() for part in text.split("=", 1))
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def check_value(key: str, value: Any, default: Any) -> Any:
    """Coerce `value` to the type of `default`, or raise naming `key`."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
    return value


def _check_model_key(key: str, value: Any) -> Any:
    field = key.split(".", 1)[1]
    if field not in _MODEL_FIELDS:
        known = ", ".join(sorted(_MODEL_FIELDS))
        hint = did_you_mean(key, (f"model.{name}" for name in _MODEL_FIELDS), "model.")
        raise UnknownKeyError(f"unknown config key {key!r}{hint}; model fields are: {known}")
    return value


def unknown_key_error(key: str, flat_defaults: Mapping[str, Any]) -> UnknownKeyError:
    """The error for a key that is not in the config, with the closest known names."""
    sections = sorted({k.split(".", 1)[0] for k in flat_defaults if "." in k})
    if "." not in key:
        if key in sections:  # `--set strategy=fedprox`: a section given a value
            example = next(k for k in flat_defaults if k.startswith(f"{key}."))
            return UnknownKeyError(f"config key {key!r} is a section, not a value; set one of "
                                   f"its keys, e.g. {example!r}")
        top = [k for k in flat_defaults if "." not in k]
        return UnknownKeyError(f"unknown config key {key!r}{did_you_mean(key, top + sections)}")
    section = key.split(".", 1)[0]
    if section not in sections:
        hint = did_you_mean(section, sections)
        return UnknownKeyError(f"unknown config section {section!r} in key {key!r}{hint}; "
                               f"sections are: {', '.join(sections)}")
    keys = [k for k in flat_defaults if k.startswith(f"{section}.")]
    return UnknownKeyError(f"unknown config key {key!r}{did_you_mean(key, keys, f'{section}.')}")


@contextlib.contextmanager
def _as_config_error() -> Iterator[None]:
    """A ValueError from a settings check (privacy, personalization, secagg, pretrained, the
    model's own checks) is about the config the user wrote: re-raise it as a ConfigError.
    Anything else (a KeyError, a TypeError, ...) is a bug there and propagates unchanged."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from error


def validate(config: Mapping[str, Any]) -> Config:
    """Return a validated copy of a nested config, with defaults filled in.

    Unknown keys, wrong types and values outside their choices raise, naming the key.
    """
    flat_defaults = flatten(DEFAULTS)
    resolved = dict(flat_defaults)
    for key, value in flatten(config).items():
        if key.startswith("model.") and key != "model.name":
            resolved[key] = _check_model_key(key, value)
        elif key not in flat_defaults:
            raise unknown_key_error(key, flat_defaults)
        else:
            resolved[key] = check_value(key, value, flat_defaults[key])
    choices_of = dict(CHOICES, **{"model.name": tuple(NAMED_CONFIGS)})
    for key, choices in choices_of.items():
        if resolved[key] not in choices:
            hint = did_you_mean(str(resolved[key]), choices)
            raise ConfigError(f"config key {key!r} must be one of {choices}, got "
                              f"{resolved[key]!r}{hint}")
    _check_ranges(resolved)
    check_federation_size(resolved)
    if resolved["pretrained.reset"] and not resolved["pretrained.checkpoint"]:
        raise ConfigError("config key 'pretrained.reset' needs pretrained.checkpoint (there is "
                          "nothing to reset without one)")
    nested = unflatten(resolved)
    with _as_config_error():
        from fedmirasol.federated.pretrained import with_digest

        nested = with_digest(nested)  # raises, naming the key, if the checkpoint file is missing
        model_config(nested)  # raises, naming the field, if the model overrides are invalid
        from fedmirasol.privacy.settings import PrivacySettings

        PrivacySettings.from_config(nested)  # raises, naming the key, if a DP setting is invalid
        from fedmirasol.personalization.settings import PersonalizationSettings

        PersonalizationSettings.from_config(nested)  # method-specific checks, DP combinations
        from fedmirasol.secagg.settings import SecAggSettings

        SecAggSettings.from_config(nested)  # raises, naming the key, if a secagg setting is bad
    return nested


def check_federation_size(flat: Mapping[str, Any]) -> None:
    """A federation of `data.num-clients` clients must be able to fill every round the
    strategy asks for: Flower's sampler otherwise waits for nodes that never come (in a
    simulation every client is a node, so this is known before anything starts)."""
    n = flat["data.num-clients"]
    wanted = {"strategy.min-available-nodes": flat["strategy.min-available-nodes"]}
    if flat["strategy.fraction-train"] > 0:
        wanted["strategy.min-train-nodes"] = flat["strategy.min-train-nodes"]
    if flat["strategy.fraction-evaluate"] > 0:
        wanted["strategy.min-evaluate-nodes"] = flat["strategy.min-evaluate-nodes"]
    too_many = {key: value for key, value in wanted.items() if value > n}
    if too_many:
        asked = ", ".join(f"{key} = {value}" for key, value in too_many.items())
        raise ConfigError(f"data.num-clients = {n} is too small for the strategy: {asked} "
                          f"(each round would wait for more clients than there are); raise "
                          f"data.num-clients to at least {max(too_many.values())} or lower "
                          f"{' / '.join(too_many)}")
    name, f = flat["strategy.name"], flat["strategy.num-malicious"]
    if f < 0:
        raise ConfigError(f"config key 'strategy.num-malicious' must be >= 0, got {f!r}")
    # Updates a round aggregates: Flower samples max(int(n * fraction), min-train-nodes).
    sampled = max(int(n * flat["strategy.fraction-train"]), flat["strategy.min-train-nodes"])
    if name == "bulyan":
        need, why = 4 * f + 3, "Flower's Bulyan needs 4 x strategy.num-malicious + 3 updates"
    elif name in ("krum", "multikrum") and f > 0:
        need, why = 2 * f + 3, (f"{name} tolerates strategy.num-malicious faulty updates only "
                                f"among at least 2 x num-malicious + 3")
    else:
        return
    if sampled < need:
        raise ConfigError(f"strategy.name = {name!r} with strategy.num-malicious = {f}: {why} "
                          f"= {need} per round, but data.num-clients = {n} with "
                          f"strategy.fraction-train = {flat['strategy.fraction-train']} and "
                          f"strategy.min-train-nodes = {flat['strategy.min-train-nodes']} "
                          f"samples {sampled}")


def _check_ranges(flat: Mapping[str, Any]) -> None:
    positive = ("num-rounds", "data.num-clients", "data.clips-per-client", "data.test-clips",
                "client.local-epochs", "client.batch-size", "client.threads",
                "client.eval-batch-size", "output.checkpoint-every")
    for key in positive:
        if flat[key] < 1:
            raise ConfigError(f"config key {key!r} must be at least 1, got {flat[key]!r}")
    if flat["simulation.max-parallel-clients"] < 0:
        raise ConfigError("config key 'simulation.max-parallel-clients' must be >= 0")
    fractions = ("strategy.fraction-train", "strategy.fraction-evaluate", "data.val-fraction",
                 "data.drop-audio-prob", "data.drop-video-prob", "strategy.trim-beta")
    for key in fractions:
        if not 0.0 <= flat[key] <= 1.0:
            raise ConfigError(f"config key {key!r} must be within [0, 1], got {flat[key]!r}")
    if flat["data.drop-audio-prob"] + flat["data.drop-video-prob"] > 1.0:
        raise ConfigError("data.drop-audio-prob + data.drop-video-prob must not exceed 1 "
                          "(a client keeps at least one modality)")
    for key in ("data.alpha", "data.quantity-alpha", "client.lr"):
        if flat[key] <= 0:
            raise ConfigError(f"config key {key!r} must be positive, got {flat[key]!r}")
    if not 0.0 <= flat["strategy.trim-beta"] < 0.5:  # Flower's FedTrimmedAvg refuses 0.5 and up
        raise ConfigError(f"config key 'strategy.trim-beta' must be within [0, 0.5), got "
                          f"{flat['strategy.trim-beta']!r}")
    if flat["strategy.proximal-mu"] < 0:
        raise ConfigError("config key 'strategy.proximal-mu' must be >= 0")
    if flat["data.source"] == "manifest" and not flat["data.manifest"]:
        raise ConfigError("config key 'data.manifest' must name a manifest when "
                          "data.source = 'manifest'")
    if flat["secagg.enabled"] and flat["strategy.name"] not in SECAGG_STRATEGIES:
        raise ConfigError(f"config key 'secagg.enabled' needs strategy.name in "
                          f"{SECAGG_STRATEGIES} (the server sees only the mean), got "
                          f"{flat['strategy.name']!r}")
    if flat["privacy.client-level"] and flat["strategy.name"] not in CLIENT_LEVEL_STRATEGIES:
        raise ConfigError(f"config key 'privacy.client-level' needs strategy.name in "
                          f"{CLIENT_LEVEL_STRATEGIES}, got {flat['strategy.name']!r}")
    if flat["secagg.enabled"] and flat["privacy.client-level"] \
            and 0 < flat["secagg.range"] < flat["privacy.client-clip-norm"]:
        # A clipped update may hold a value up to the clip norm; quantization never clamps.
        raise ConfigError(f"config key 'secagg.range' ({flat['secagg.range']!r}) must be 0 (the "
                          f"clip norm) or at least privacy.client-clip-norm "
                          f"({flat['privacy.client-clip-norm']!r}) under client-level DP")


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults <- TOML file (if any) <- `key=value` overrides, validated."""
    merged = flatten(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"simulation config {path} does not exist")
        with path.open("rb") as handle:
            try:
                merged.update(flatten(tomllib.load(handle)))
            except tomllib.TOMLDecodeError as error:
                raise ConfigError(f"{path}: {error}") from error
    for text in overrides:
        key, value = parse_assignment(text)
        merged[key] = value
    return validate(unflatten(merged))


def from_flower_run_config(run_config: Mapping[str, Any]) -> Config:
    """Resolve a config from Flower's flat run config (`[tool.flwr.app.config]` + overrides).

    `config-file` names a TOML file to start from; every other key that differs from the
    built-in default overrides that file.
    """
    flat = dict(run_config)
    path = flat.pop("config-file", "") or None
    defaults = flatten(DEFAULTS)
    overrides = [f"{k}={json.dumps(v)}" for k, v in flat.items() if defaults.get(k, None) != v]
    return load_config(path, overrides)


def model_config(config: Mapping[str, Any]) -> MirasolConfig:
    """The MirasolConfig a run config describes (named config + field overrides)."""
    from fedmirasol.models.config import get_config

    model = dict(config["model"])
    name = model.pop("name")
    overrides = {key.replace("-", "_"): value for key, value in model.items()}
    if name not in NAMED_CONFIGS:
        raise ConfigError(f"config key 'model.name' must be one of {tuple(NAMED_CONFIGS)}, got "
                          f"{name!r}{did_you_mean(str(name), NAMED_CONFIGS)}")
    base = get_config(name)
    merged = base.to_dict() | overrides
    try:
        return MirasolConfig.from_dict(merged)
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"invalid model config in run config: {error}") from error


def local_spec(config: Mapping[str, Any]) -> str:
    """The `split.local` selector, with `fedbn` implying normalization layers and FedPer/FedRep
    adding their personal layers."""
    from fedmirasol.personalization.settings import PersonalizationSettings

    local = config["split"]["local"]
    if config["strategy"]["name"] == "fedbn" and not local:
        local = "normalization"
    personal = PersonalizationSettings.from_config(config).personal_selectors()
    return ",".join(filter(None, [local, *personal]))


def parameter_split(model: nn.Module, config: Mapping[str, Any]) -> ParameterSplit:
    """The run's ParameterSplit of `model`: `local_spec` stays local, `pretrained.freeze` is
    neither shared nor local."""
    from fedmirasol.federated.parameters import ParameterSplit
    from fedmirasol.federated.pretrained import PretrainedSettings

    frozen = PretrainedSettings.from_config(config).frozen_names(model)
    return ParameterSplit.from_model(model, local_spec(config), frozen)


def parse_ids(text: str) -> set[int]:
    """'1, 4,7' -> {1, 4, 7}; raises naming the bad item."""
    ids: set[int] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        if not item.lstrip("-").isdigit():
            raise ConfigError(f"{item!r} is not a client (partition) id")
        ids.add(int(item))
    return ids


def to_json(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


def from_json(text: str) -> Config:
    return validate(json.loads(text))
