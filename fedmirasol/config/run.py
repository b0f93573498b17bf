"""`RunConfig`: the whole run's settings, composed of the sections, with the rules across them."""

from __future__ import annotations

from pydantic import Field, model_validator

from fedmirasol.config.audit import AuditConfig
from fedmirasol.config.base import Section
from fedmirasol.config.he import HEConfig
from fedmirasol.config.compression import CompressionConfig
from fedmirasol.config.model import ModelConfig
from fedmirasol.config.personalization import PersonalizationConfig
from fedmirasol.config.pretrain import PretrainConfig
from fedmirasol.config.privacy import PrivacyConfig, SitePrivacyConfig
from fedmirasol.config.robustness import DATA_ATTACKS, AttackConfig, DefenseConfig
from fedmirasol.config.secagg import SecAggConfig
from fedmirasol.config.task import TaskConfig
from fedmirasol.config.sections import (
    CLIENT_LEVEL_STRATEGIES, SECAGG_STRATEGIES, ClientConfig, DataConfig, FaultsConfig,
    OutputConfig, PretrainedConfig, ServerConfig, SimulationConfig, SplitConfig, StrategyConfig,
)
from fedmirasol.errors import ConfigError


class RunConfig(Section):
    """Everything a run needs, parsed once at the edges (CLI, ServerApp, ClientApp); the library
    takes this object (or one of its sections), never a dict."""

    name: str = "quickstart"
    seed: int = 0
    num_rounds: int = Field(20, ge=1)
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    pretrain: PretrainConfig = PretrainConfig()
    data: DataConfig = DataConfig()
    client: ClientConfig = ClientConfig()
    strategy: StrategyConfig = StrategyConfig()
    split: SplitConfig = SplitConfig()
    pretrained: PretrainedConfig = PretrainedConfig()
    faults: FaultsConfig = FaultsConfig()
    server: ServerConfig = ServerConfig()
    simulation: SimulationConfig = SimulationConfig()
    output: OutputConfig = OutputConfig()
    personalization: PersonalizationConfig = PersonalizationConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    # what every virtual client of `fedmirasol simulate` demands (a deployed site: node config)
    site_privacy: SitePrivacyConfig = SitePrivacyConfig()
    secagg: SecAggConfig = SecAggConfig()
    he: HEConfig = HEConfig()
    compression: CompressionConfig = CompressionConfig()
    attack: AttackConfig = AttackConfig()
    defense: DefenseConfig = DefenseConfig()
    audit: AuditConfig = AuditConfig()  # used by `fedmirasol privacy-audit` only

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        strategy = self.strategy.name
        if strategy == "fltrust":
            self._check_fltrust()
        if self.secagg.enabled and strategy not in SECAGG_STRATEGIES:
            raise ConfigError(f"config key 'secagg.enabled' needs strategy.name in "
                              f"{SECAGG_STRATEGIES} (the server sees only the mean), got "
                              f"{strategy!r}")
        if self.privacy.client_level and strategy not in CLIENT_LEVEL_STRATEGIES:
            raise ConfigError(f"config key 'privacy.client-level' needs strategy.name in "
                              f"{CLIENT_LEVEL_STRATEGIES}, got {strategy!r}")
        if self.secagg.enabled and not self.privacy.client_level and self.secagg.range <= 0:
            raise ConfigError("config key 'secagg.range' must be > 0: the bound of every update "
                              "value that all clients quantize to (a declared bound, not one "
                              "measured from the updates; under privacy.client-level the clip "
                              "norm is the bound)")
        if self.secagg.enabled:  # raises, naming the keys, when no sum field holds the round
            self.secagg.field_bits(self.secagg_max_weight(), self.data.num_clients)
        if self.he.enabled:
            self._check_he()
        self._check_compression()
        if self.task.name == "videoqa":
            self._check_videoqa()
        if self.privacy.enabled and self.privacy.unit == "user" \
                and self.data.source == "synthetic" and self.data.clips_per_user == 0:
            raise ConfigError("config key 'privacy.unit' = 'user' on synthetic data needs "
                              "data.clips-per-user > 0 (how many clips each simulated person "
                              "contributes)")
        self._check_pretrain()
        self._check_federation_size()
        self._check_attack()
        return self

    def _check_compression(self) -> None:
        """Under secure aggregation the server sums masked vectors: what a client masks is
        its update quantized to `secagg.bits` (stochastic rounding, unbiased), so fewer bits
        is the compression there; a sparse or low-rank update cannot be masked and summed
        (clients would keep different positions), and the downlink replica is not kept."""
        compression = self.compression
        if self.secagg.enabled and compression.codec != "none":
            raise ConfigError(
                f"compression.codec = {compression.codec!r} cannot be combined with "
                "secagg.enabled: the masked sum needs every client's dense vector on the same "
                "positions (sparsification would reveal which positions each client sends, "
                "and masks do not survive it); under secure aggregation lower secagg.bits "
                "instead (the update is quantized to it before masking)")
        if self.he.enabled and (compression.codec != "none" or compression.downlink != "none"):
            raise ConfigError("compression.codec / compression.downlink cannot be combined with "
                              "he.enabled: the server adds ciphertexts of every client's dense "
                              "update and sends the encrypted sum (CKKS packs the values already)")
        if self.secagg.enabled and compression.downlink != "none":
            raise ConfigError("compression.downlink cannot be combined with secagg.enabled "
                              "(the secure-aggregation stages send the model whole)")

    def _check_fltrust(self) -> None:
        """FLTrust scores every client's own update against the server's reference update:
        the server must read each update, and hold root data of the task."""
        hidden = "secagg.enabled" if self.secagg.enabled else (
            "he.enabled" if self.he.enabled else
            "privacy.client-level" if self.privacy.client_level else None)
        if hidden:
            raise ConfigError(f"strategy.name = 'fltrust' cannot be combined with {hidden}: it "
                              "scores each client's own update against the server's reference "
                              "update, so the server must see every update in the clear "
                              "(secure aggregation and encryption reveal only the sum; "
                              "client-level DP's noise is calibrated to a plain mean); use "
                              "defense.norm-bound there (each client clips before it sends)")
        if self.data.source != "synthetic" or self.task.name != "classification":
            raise ConfigError(f"strategy.name = 'fltrust' trains the server's reference update "
                              f"on its own root data (defense.root-clips), which this build "
                              f"renders for synthetic classification clips only: data.source = "
                              f"{self.data.source!r}, task.name = {self.task.name!r}")
        if self.pretrain.enabled or self.personalization.method != "none":
            raise ConfigError("strategy.name = 'fltrust' compares each update with a reference "
                              "trained on the task's labels the way a plain client trains: not "
                              "with pretrain.objective or personalization.method")

    def _check_videoqa(self) -> None:
        """The answers are generated text: the model must train its text decoder."""
        if self.model.mirasol.text_weight <= 0:
            raise ConfigError("task.name = 'videoqa' trains the text decoder: set "
                              "model.text-weight > 0 (e.g. 1.0)")

    def _check_he(self) -> None:
        """Homomorphic encryption: the server sees no model, so it can neither step on one
        nor evaluate one."""
        if self.secagg.enabled:
            raise ConfigError("config keys 'he.enabled' and 'secagg.enabled' are both true: "
                              "choose one way of hiding the updates from the server")
        if self.strategy.name not in SECAGG_STRATEGIES:
            raise ConfigError(f"config key 'he.enabled' needs strategy.name in "
                              f"{SECAGG_STRATEGIES} (the clients step on the decrypted mean), "
                              f"got {self.strategy.name!r}")
        if self.server.evaluate_every:
            raise ConfigError("config key 'he.enabled' needs server.evaluate-every = 0: the "
                              "server holds only the encrypted model, so it cannot evaluate it "
                              "(the clients still evaluate every round)")

    def _check_attack(self) -> None:
        """The attackers exist and leave honest clients; what the attack and the defense need."""
        attack, n = self.attack, self.data.num_clients
        attackers = attack.attackers(n, self.seed)
        outside = sorted(pid for pid in attackers if not 0 <= pid < n)
        if outside:
            raise ConfigError(f"config key 'attack.clients': {outside} outside data.num-clients "
                              f"= {n}")
        if attackers and len(attackers) >= n:
            raise ConfigError(f"attack.clients / attack.fraction make all {n} clients attackers; "
                              "leave at least one honest client")
        if attack.kind in DATA_ATTACKS and (self.data.source == "leaf"
                                            or self.task.name != "classification"):
            raise ConfigError(f"attack.kind = {attack.kind!r} poisons audio-visual clips' class "
                              f"labels: it needs task.name = 'classification' on clips, not "
                              f"task.name = {self.task.name!r} with data.source = "
                              f"{self.data.source!r} (the update attacks work on any task)")
        classes = self.model.mirasol.num_classes
        if attack.kind == "backdoor" and attack.target_class >= classes:
            raise ConfigError(f"config key 'attack.target-class' = {attack.target_class} is not "
                              f"a class of the model ({classes} classes)")
        if attack.kind == "little-is-enough" and self.data.source == "site":
            raise ConfigError("attack.kind = 'little-is-enough' rebuilds the colluding "
                              "attackers' benign updates from the run config, which a "
                              "data.source = 'site' federation cannot (each site's data is its "
                              "own)")
        if self.defense.median_norm_bound and self.secagg.enabled:
            raise ConfigError("config key 'defense.median-norm-bound' needs the server to see "
                              "every update, which secure aggregation hides; use "
                              "defense.norm-bound (each client clips before masking)")
        if self.defense.median_norm_bound and self.he.enabled:
            raise ConfigError("config key 'defense.median-norm-bound' needs the server to see "
                              "every update, which he.enabled encrypts; use defense.norm-bound "
                              "(each client clips before encrypting)")
        sealed = "he.enabled" if self.he.enabled else (
            "compression.codec" if self.compression.codec != "none" else
            "compression.downlink" if self.compression.downlink != "none" else None)
        if attack.enabled and sealed:
            raise ConfigError(f"attack.kind = {attack.kind!r} rewrites the plain update a client "
                              f"sends from the global model, but with {sealed} the messages "
                              "carry an encrypted or encoded payload: run the attacks without "
                              "it")
        if self.defense.median_norm_bound and self.privacy.client_level:
            raise ConfigError("config key 'defense.median-norm-bound' clips every update to a "
                              "bound that depends on all clients' updates, which breaks "
                              "privacy.client-level's sensitivity (one client would change how "
                              "the others are clipped); use defense.norm-bound")

    def _check_pretrain(self) -> None:
        """A pre-training objective must fit the model and the privacy mode."""
        pretrain = self.pretrain
        if pretrain.enabled and self.task.name != "classification":
            raise ConfigError(f"pretrain.objective = {pretrain.objective!r} trains on its own "
                              f"objective instead of the task: it needs task.name = "
                              f"'classification', got {self.task.name!r}")
        if (pretrain.objective == "contrastive" and pretrain.negatives == "in-batch"
                and self.privacy.enabled):
            raise ConfigError(
                "pretrain.objective = 'contrastive' with in-batch negatives couples the samples "
                "of a batch (each clip's loss reads every other clip's caption), so DP-SGD's "
                "per-sample clipping would not bound one clip's influence: set "
                "pretrain.negatives = 'public' (each clip against fixed public negatives) or "
                "use client-level DP alone (privacy.enabled = false, privacy.client-level = "
                "true)")
        if pretrain.audio_mask_ratio > 0 and self.model.mirasol.architecture != "mirasol":
            raise ConfigError(
                "config key 'pretrain.audio-mask-ratio' needs Mirasol's audio encoder "
                "(non-overlapping log-mel patches); the late-fusion model's AST patches overlap")

    def _check_federation_size(self) -> None:
        """A federation of `data.num-clients` clients must be able to fill every round the
        strategy asks for: Flower's sampler otherwise waits for nodes that never come (in a
        simulation every client is a node, so this is known before anything starts)."""
        n, strategy = self.data.num_clients, self.strategy
        wanted = {"strategy.min-available-nodes": strategy.min_available_nodes}
        if strategy.fraction_train > 0:
            wanted["strategy.min-train-nodes"] = strategy.min_train_nodes
        if strategy.fraction_evaluate > 0:
            wanted["strategy.min-evaluate-nodes"] = strategy.min_evaluate_nodes
        too_many = {key: value for key, value in wanted.items() if value > n}
        if too_many:
            asked = ", ".join(f"{key} = {value}" for key, value in too_many.items())
            raise ConfigError(f"data.num-clients = {n} is too small for the strategy: {asked} "
                              f"(each round would wait for more clients than there are); raise "
                              f"data.num-clients to at least {max(too_many.values())} or lower "
                              f"{' / '.join(too_many)}")
        f = strategy.num_malicious
        if f < 0:
            raise ConfigError(f"config key 'strategy.num-malicious' must be >= 0, got {f!r}")
        # Updates a round aggregates: Flower samples max(int(n * fraction), min-train-nodes).
        sampled = max(int(n * strategy.fraction_train), strategy.min_train_nodes)
        if strategy.name == "bulyan":
            need, why = 4 * f + 3, "Flower's Bulyan needs 4 x strategy.num-malicious + 3 updates"
        elif strategy.name in ("krum", "multikrum") and f > 0:
            need, why = 2 * f + 3, (f"{strategy.name} tolerates strategy.num-malicious faulty "
                                    f"updates only among at least 2 x num-malicious + 3")
        else:
            return
        if sampled < need:
            raise ConfigError(f"strategy.name = {strategy.name!r} with strategy.num-malicious = "
                              f"{f}: {why} = {need} per round, but data.num-clients = {n} with "
                              f"strategy.fraction-train = {strategy.fraction_train} and "
                              f"strategy.min-train-nodes = {strategy.min_train_nodes} samples "
                              f"{sampled}")

    # ---- values derived from several sections

    def local_selectors(self) -> str:
        """The parameters that stay on the clients: `split.local`, normalization layers under
        FedBN, and the personal layers of FedPer/FedRep."""
        local = self.split.local
        if self.strategy.name == "fedbn" and not local:
            local = "normalization"
        personal = self.personalization.personal_selectors()
        return ",".join(filter(None, [local, *personal]))

    def secagg_bound(self) -> float:
        """The declared bound of every update value: under client-level DP the clip norm (an
        L2 bound bounds every coordinate), else `secagg.range`."""
        return self.privacy.client_clip_norm if self.privacy.client_level else self.secagg.range

    def secagg_weighting(self) -> str:
        """Equal weights under client-level DP (its noise is calibrated to an equal-weight
        mean), else `secagg.weighting`."""
        return "equal" if self.privacy.client_level else self.secagg.weighting

    def secagg_max_weight(self) -> int:
        """The largest weight a client masks: `strategy.max-num-examples`, or 1 with equal
        weights."""
        return 1 if self.secagg_weighting() == "equal" else self.strategy.max_num_examples

    def secagg_max_norm(self) -> float | None:
        """The L2 bound a quantized update must keep (the clip norm the client-level DP
        accountant uses), or None without client-level DP."""
        return self.privacy.client_clip_norm if self.privacy.client_level else None
