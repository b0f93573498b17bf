"""The run config's sections that are plain settings (data, client, strategy, ...).

Sections with logic of their own live beside this file: model.py, privacy.py, secagg.py,
personalization.py. Each field's comment says what the key does; `fedmirasol.config.run`
composes the sections and checks the rules that span several.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_serializer, field_validator, model_validator

from fedmirasol.config.base import Section, partition_ids
from fedmirasol.errors import ConfigError, did_you_mean

SOURCES = ("synthetic", "manifest", "site", "leaf")
LEAF_TASKS = ("", "femnist", "shakespeare", "sent140", "celeba", "synthetic")
PARTITIONERS = ("iid", "dirichlet", "pathological", "quantity")
OPTIMIZERS = ("adam", "sgd")
TRACKERS = ("tensorboard", "mlflow")  # fedmirasol.runs.trackers
STRATEGIES = ("fedavg", "fedprox", "fedbn", "fedadam", "fedyogi", "fedadagrad", "fedavgm",
              "trimmed-mean", "median", "krum", "multikrum", "bulyan", "fltrust")
# Strategies that only need the (weighted) mean of the updates, which is what secure
# aggregation reveals; robust aggregators need every update and cannot run under it.
SECAGG_STRATEGIES = ("fedavg", "fedprox", "fedbn", "fedadam", "fedyogi", "fedadagrad", "fedavgm")
# Strategies whose aggregate is a plain mean, which client-level DP replaces by its noised one.
CLIENT_LEVEL_STRATEGIES = ("fedavg", "fedprox", "fedbn")


class DataConfig(Section):
    """Where each client's clips come from and how they are split across clients."""

    # synthetic | manifest | site (deployment: every SuperNode brings its own manifest through
    # its node config, fedmirasol.client.site) | leaf (a LEAF dataset: each user one client)
    source: Literal[SOURCES] = "synthetic"  # type: ignore[valid-type]
    manifest: str = ""  # path of a media manifest when source = "manifest"
    # source = "leaf": the LEAF dataset folder (its train/ and test/ JSON, or the folder above
    # them) and its task ("" = told from the data); clips-per-client, test-clips, val-fraction
    # and the partitioning keys do not apply (LEAF's users and their own split are kept)
    leaf_path: str = ""
    leaf_task: Literal[LEAF_TASKS] = ""  # type: ignore[valid-type]
    # clients; with source = "leaf", that many LEAF users sampled by the run's seed
    num_clients: int = Field(10, ge=1)
    clips_per_client: int = Field(80, ge=1)  # mean clips per client (train + validation)
    test_clips: int = Field(240, ge=1)  # the server's held-out test set
    val_fraction: float = Field(0.2, ge=0.0, le=1.0)
    partitioner: Literal[PARTITIONERS] = "dirichlet"  # type: ignore[valid-type]
    alpha: float = Field(0.5, gt=0.0)  # Dirichlet label skew
    min_partition_size: int = 4
    classes_per_client: int = 2  # pathological
    quantity_alpha: float = Field(1.0, gt=0.0)  # quantity skew: Dirichlet over client sizes
    domains: int = 0  # feature shift: number of distinct client domains (0 = none)
    domain_strength: float = 1.0
    drop_audio_prob: float = Field(0.0, ge=0.0, le=1.0)  # probability a client has no audio
    drop_video_prob: float = Field(0.0, ge=0.0, le=1.0)  # probability a client has no video
    # synthetic: how many of a client's training clips come from one simulated person
    # (privacy.unit = "user" groups them); 0: no persons. Manifests: the user/video column.
    clips_per_user: int = Field(0, ge=0)
    # Share of each client's training clips that keep their label and caption (at least one);
    # the others are unlabelled (label -1, no caption). Validation and test clips keep theirs.
    label_fraction: float = Field(1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.drop_audio_prob + self.drop_video_prob > 1.0:
            raise ConfigError("data.drop-audio-prob + data.drop-video-prob must not exceed 1 "
                              "(a client keeps at least one modality)")
        if self.source == "manifest" and not self.manifest:
            raise ConfigError("config key 'data.manifest' must name a manifest when "
                              "data.source = 'manifest'")
        if self.source == "leaf" and not self.leaf_path:
            raise ConfigError("config key 'data.leaf-path' must name a LEAF dataset folder "
                              "(with train/ and test/) when data.source = 'leaf'")
        return self


class ClientConfig(Section):
    """Local training on each client."""

    local_epochs: int = Field(2, ge=1)
    batch_size: int = Field(8, ge=1)
    optimizer: Literal[OPTIMIZERS] = "adam"  # type: ignore[valid-type]
    lr: float = Field(0.002, gt=0.0)
    momentum: float = 0.9
    weight_decay: float = 0.0
    device: str = "cpu"
    threads: int = Field(1, ge=1)  # torch threads per simulated client
    eval_batch_size: int = Field(32, ge=1)


class StrategyConfig(Section):
    """The server's aggregation (Flower's strategies; "fltrust": FLTrust's trust-scored mean,
    `fedmirasol.server.aggregators.fltrust`, its root data in `defense`)."""

    name: Literal[STRATEGIES] = "fedavg"  # type: ignore[valid-type]
    fraction_train: float = Field(1.0, ge=0.0, le=1.0)
    fraction_evaluate: float = Field(1.0, ge=0.0, le=1.0)
    min_train_nodes: int = 2
    min_evaluate_nodes: int = 2
    min_available_nodes: int = 2
    proximal_mu: float = Field(0.0, ge=0.0)
    server_lr: float = 0.01  # eta of FedAdam/FedYogi/FedAdagrad, server lr of FedAvgM
    server_momentum: float = 0.9  # FedAvgM
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 0.001
    trim_beta: float = Field(0.2, ge=0.0, le=1.0)  # trimmed mean: fraction cut from each end
    num_malicious: int = 0  # Krum, MultiKrum, Bulyan
    num_to_keep: int = 0  # MultiKrum (0 = Flower's default)
    round_timeout: float = 600.0  # seconds a round waits for replies
    # the largest weight (example count) one client's reply may carry: a reply over it is
    # rejected by name; under secure aggregation each client clips its weight to it
    max_num_examples: int = Field(100_000, ge=1)


class SplitConfig(Section):
    """Parameters that stay on the clients: "normalization" (module types) and/or
    comma-separated state_dict name patterns (fnmatch). Empty: everything is shared."""

    local: str = ""


class PretrainedConfig(Section):
    """Start from a pre-trained checkpoint that every process loads (nothing is sent)."""

    # A checkpoint file (`fedmirasol train`'s best.pt, a run's final model) or a public
    # pre-training recipe ("public: --epochs 6 ...") that `fedmirasol simulate` trains and caches
    checkpoint: str = ""
    sha256: str = ""  # filled in from the file by the server; a client's file must match
    reset: str = ""  # selectors put back to the fresh seeded init (e.g. "classifier.*")
    freeze: str = ""  # selectors never trained and never sent (e.g. "video_encoder.*")
    trainable: str = ""  # if set: everything these selectors do not match is frozen

    @model_validator(mode="after")
    def _check(self) -> "PretrainedConfig":
        if self.reset and not self.checkpoint:
            raise ConfigError("config key 'pretrained.reset' needs pretrained.checkpoint "
                              "(there is nothing to reset without one)")
        return self


class FaultsConfig(Section):
    """Fault injection for robustness experiments (a client mod): comma-separated partition
    ids."""

    crash_clients: str = ""  # raise during training
    nan_clients: str = ""  # reply with a NaN update
    slow_clients: str = ""  # sleep `slow-seconds` before training (to test round timeouts)
    slow_seconds: float = 0.0

    @model_validator(mode="after")
    def _check(self) -> "FaultsConfig":
        for kind in ("crash", "nan", "slow"):
            self.clients(kind)  # raises, naming the key, on an item that is not an id
        return self

    def clients(self, kind: Literal["crash", "nan", "slow"]) -> set[int]:
        """The partition ids listed in `faults.<kind>-clients` ('1, 4,7' -> {1, 4, 7})."""
        return partition_ids(getattr(self, f"{kind}_clients"), f"faults.{kind}-clients")


class ServerConfig(Section):
    evaluate_every: int = 1  # centralized evaluation every N rounds (0: never)
    # Deployed runs: seconds between the ServerApp's pulls for a round's replies from the
    # SuperLink (Flower's own SuperLink Grid waits 3 s between pulls)
    pull_interval: float = Field(0.2, gt=0.0, le=10.0)


class SimulationConfig(Section):
    # virtual clients trained at once (0: one per CPU core; on a Ray cluster, one per
    # client.threads of its CPUs)
    max_parallel_clients: int = Field(0, ge=0)
    # An existing Ray cluster to run the virtual clients on, as `ray.init(address=...)` takes
    # it: "auto" (the cluster `ray start --head` started on this machine) or "HOST:PORT" (its
    # head node); "" starts a private Ray for the run and stops it at the end.
    ray_address: str = ""


class OutputConfig(Section):
    runs_dir: str = "runs"
    checkpoint_every: int = Field(1, ge=1)
    plots: bool = True  # write plots/*.png at the end of a run (`fedmirasol report` can later)
    # Experiment trackers fed every round (fedmirasol.runs.trackers; the `tracking` extra):
    # "tensorboard" (event files in the run directory), "mlflow". A TOML list or a
    # comma-separated string; Flower's flat run config holds the string form.
    trackers: tuple[str, ...] = ()
    # MLflow tracking URI; "" = a SQLite store <runs-dir>/mlflow.db, artifacts in
    # <runs-dir>/mlartifacts
    mlflow_uri: str = ""
    # A run directory to resume after its last checkpoint (a deployed ServerApp or SuperLink
    # that died: `flwr run . --run-config 'output.resume-from="DIR"'`).
    resume_from: str = ""

    @field_validator("trackers", mode="before")
    @classmethod
    def _tracker_names(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config key 'output.trackers' must be a list of tracker names "
                              f"(e.g. [\"tensorboard\", \"mlflow\"]), got {value!r}")
        names = tuple(dict.fromkeys(filter(None, (v.strip() for v in value))))
        for name in names:
            if name not in TRACKERS:
                raise ConfigError(f"config key 'output.trackers': unknown tracker {name!r}"
                                  f"{did_you_mean(name, TRACKERS)}; known: {', '.join(TRACKERS)}")
        return names

    @field_serializer("trackers")
    def _trackers_text(self, names: tuple[str, ...]) -> str:
        """One string ("tensorboard,mlflow"): Flower's run config holds no lists."""
        return ",".join(names)
