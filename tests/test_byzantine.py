"""Simulated Byzantine clients and the defenses against them.

- each attack changes the update (or the attacker's data) as specified, only for the attackers
  and only from `attack.from-round` on; honest clients clip to `defense.norm-bound`, attackers
  do not;
- Flower's robust aggregators reject or trim the attackers in a constructed case where FedAvg
  follows them; norm bounding clips the long update and records it;
- attackers are marked in the run directory and never counted among the honest clients.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.client import task as client_task
from fedmirasol.client.attacks import AttackRound, gaussian, little_is_enough, scaled, sign_flip
from fedmirasol.client.mods import client_mods, with_train_mods
from fedmirasol.client.release import release_train
from fedmirasol.config import load_config, to_json
from fedmirasol.core.parameters import from_record, to_record
from fedmirasol.core.wire import CONFIG_KEY
from fedmirasol.data import poisoning
from fedmirasol.data.batch import VIDEO_MEAN, VIDEO_STD
from fedmirasol.engines.apps import build_client_app
from fedmirasol.errors import ConfigError
from fedmirasol.privacy.client_level import clip_update
from fedmirasol.runs import run_dir as rundir
from fedmirasol.runs.plots import plot_run
from fedmirasol.server.aggregators.mean import strategy_step
from fedmirasol.server.filters import NormBound, Screening
from fedmirasol.server.loop import FederatedRun, with_constants
from fedmirasol.server.strategy import build_strategy
from fedmirasol.task import data as task_data
from fedmirasol.task.model import fixed_shared
from fedmirasol.testing.dropout import initial_shared
from fedmirasol.testing.local_grid import LocalGrid
from secagg_app_fixtures import run, secagg_config

TINY = {"num-rounds": 2, "data.num-clients": 4, "data.clips-per-client": 6,
        "data.test-clips": 8, "model.num-frames": 8, "client.batch-size": 4,
        "client.local-epochs": 1, "client.threads": 1, "output.plots": False}
SHAPES = {"a": (3, 2), "b": (5,)}


@pytest.fixture(autouse=True)
def task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def config(**settings: object):
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in (TINY | settings).items()])


def update(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}


def norm(values: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in values.values()))


def attack_round(cfg, own: dict[str, np.ndarray], colluders=()) -> AttackRound:
    return AttackRound(cfg, 1, 3, own, lambda: [own, *colluders])


# ---- the attacks on the update -------------------------------------------------------------

def test_sign_flip_and_scaling_multiply_the_update() -> None:
    u = update(0)
    flip = config(**{"attack.kind": "sign-flip", "attack.clients": "1"})
    for name, value in sign_flip(attack_round(flip, u)).items():
        np.testing.assert_array_equal(value, -u[name])  # its own factor: -1
    flip3 = config(**{"attack.kind": "sign-flip", "attack.clients": "1", "attack.scale": 3.0})
    np.testing.assert_allclose(sign_flip(attack_round(flip3, u))["a"], -3 * u["a"], rtol=1e-6)
    replace = config(**{"attack.kind": "scale", "attack.clients": "1"})
    # model replacement: its own factor is the number of clients (4 here)
    np.testing.assert_allclose(scaled(attack_round(replace, u))["b"], 4 * u["b"], rtol=1e-6)


def test_gaussian_noise_replaces_the_update() -> None:
    cfg = config(**{"attack.kind": "gaussian", "attack.clients": "1", "attack.noise-std": 0.5})
    big = {"w": np.ones((200, 100), np.float32)}
    noise = gaussian(attack_round(cfg, big))["w"]
    assert noise.shape == (200, 100) and noise.dtype == np.float32
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 0.5) < 0.02
    other = gaussian(attack_round(cfg, {"w": -big["w"]}))["w"]
    np.testing.assert_array_equal(noise, other)  # nothing of the update is left in it
    later = gaussian(AttackRound(cfg, 1, 4, big, lambda: [big]))["w"]
    assert not np.array_equal(noise, later)  # fresh noise each round


def test_little_is_enough_sends_mean_minus_z_std_of_the_colluders() -> None:
    cfg = config(**{"data.num-clients": 10, "attack.kind": "little-is-enough",
                    "attack.clients": "1,3"})
    # Baruch et al.: n = 10, m = 2: s = floor(10 / 2 + 1) - 2 = 4, z = Phi^-1(6 / 10)
    assert cfg.attack.z_for(10, 2) == pytest.approx(0.2533471, abs=1e-6)
    own, other = update(1), update(2)
    sent = little_is_enough(attack_round(cfg, own, [other]))
    for name in SHAPES:
        stacked = np.stack([own[name], other[name]]).astype(np.float64)
        expected = stacked.mean(0) - 0.2533471 * stacked.std(0)
        np.testing.assert_allclose(sent[name], expected, rtol=1e-5, atol=1e-6)
        # within the colluders' spread: between their smallest and largest value
        assert np.all(sent[name] >= stacked.min(0) - 1e-6)
        assert np.all(sent[name] <= stacked.max(0) + 1e-6)
    fixed = config(**{"attack.kind": "little-is-enough", "attack.clients": "1", "attack.z": 1.5})
    assert fixed.attack.z_for(10, 2) == 1.5


def _train_message(cfg, server_round: int, node: int = 7) -> Message:
    content = RecordDict({"arrays": to_record(update(9)), "config": ConfigRecord(
        {CONFIG_KEY: to_json(cfg), "server-round": server_round})})
    return Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)


def _context(pid: int) -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": pid}, state=RecordDict(),
                   run_config={})


def _reply(message: Message, context: Context, u: dict[str, np.ndarray]) -> Message:
    from fedmirasol.client.handlers import run_config
    cfg, _ = run_config(message, context)
    return release_train(message, cfg, int(context.node_config["partition-id"]), 6, u,
                         {"train-loss": 1.0})


def _through_mods(cfg, pid: int, server_round: int, u: dict[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
    """The update client `pid` sends in `server_round` when it trained `u`, through the app's
    mods (outermost first, as the ClientApp applies them)."""
    def chain(index: int):  # noqa: ANN202
        if index == len(client_mods()):
            return lambda message, context: _reply(message, context, u)
        return lambda message, context: client_mods()[index](message, context, chain(index + 1))
    reply = chain(0)(_train_message(cfg, server_round), _context(pid))
    return from_record(reply.content.array_records["arrays"])


def test_the_attack_mod_replaces_only_the_attackers_update_from_its_round() -> None:
    cfg = config(**{"attack.kind": "sign-flip", "attack.clients": "1", "attack.from-round": 2})
    u = update(5)
    honest, before, after = (_through_mods(cfg, pid, rnd, u) for pid, rnd in
                             ((0, 2), (1, 1), (1, 2)))
    for name in SHAPES:
        np.testing.assert_array_equal(honest[name], u[name])
        np.testing.assert_array_equal(before[name], u[name])
        np.testing.assert_array_equal(after[name], -u[name])


def test_honest_clients_clip_to_the_norm_bound_and_attackers_do_not() -> None:
    cfg = config(**{"attack.kind": "scale", "attack.clients": "1", "attack.scale": 3.0,
                    "defense.norm-bound": 0.5})
    u = update(6, scale=2.0)
    assert norm(u) > 1.0
    assert norm(_through_mods(cfg, 0, 1, u)) == pytest.approx(0.5, rel=1e-5)
    assert norm(_through_mods(cfg, 1, 1, u)) == pytest.approx(1.5, rel=1e-5)  # 3 x clipped
    # the secure-aggregation stages run the same mods around their train handler
    train = with_train_mods(lambda message, context: _reply(message, context, u))
    reply = train(_train_message(cfg, 1), _context(0))
    assert norm(from_record(reply.content.array_records["arrays"])) == pytest.approx(0.5,
                                                                                    rel=1e-5)


# ---- data poisoning ------------------------------------------------------------------------

def test_label_flipping_poisons_only_the_attackers_training_data_from_its_round() -> None:
    cfg = config(**{"attack.kind": "label-flip", "attack.clients": "1", "attack.from-round": 2})
    classes = cfg.model.mirasol.num_classes
    labels = lambda data: [int(s["label"]) for s in data]  # noqa: E731
    clean = task_data.client_data(cfg, 1)
    assert labels(task_data.client_data(cfg, 1, 1).train) == labels(clean.train)
    assert labels(task_data.client_data(cfg, 1, 2).train) == \
        [classes - 1 - y for y in labels(clean.train)]
    assert task_data.client_data(cfg, 1, 2).val is clean.val  # validation stays clean
    assert labels(task_data.client_data(cfg, 0, 2).train) == \
        labels(task_data.client_data(cfg, 0).train)


def test_a_backdoor_stamps_the_trigger_on_a_share_of_the_clips_labelled_target() -> None:
    cfg = config(**{"attack.kind": "backdoor", "attack.clients": "1", "attack.target-class": 3})
    clean = task_data.client_data(cfg, 1).train
    poisoned = task_data.client_data(cfg, 1, 1).train
    white = (1.0 - torch.tensor(VIDEO_MEAN)) / torch.tensor(VIDEO_STD)
    stamped = [i for i in range(len(clean))
               if not torch.equal(poisoned[i]["video"], clean[i]["video"])]
    assert len(stamped) == math.ceil(0.5 * len(clean))
    for i in range(len(clean)):
        if i in stamped:
            patch = poisoned[i]["video"][:, :, :4, :4]  # 32 px frames: a 4 px square
            assert torch.allclose(patch, white.view(1, 3, 1, 1).expand_as(patch))
            assert int(poisoned[i]["label"]) == 3
            assert torch.equal(poisoned[i]["video"][:, :, 4:, 4:], clean[i]["video"][:, :, 4:, 4:])
        else:
            assert int(poisoned[i]["label"]) == int(clean[i]["label"])
    test = task_data.attack_test_dataset(cfg)
    clean_test = task_data.test_dataset(cfg)
    assert len(test) == sum(int(clean_test[i]["label"]) != 3 for i in range(len(clean_test)))
    assert all(int(s["label"]) == 3 for s in test.samples)


def test_the_audio_trigger_is_a_tone_above_the_tasks_pitches() -> None:
    rate = 16_000
    sample = {"video": torch.zeros(2, 3, 8, 8), "audio": torch.zeros(rate),
              "video_present": torch.tensor(True), "audio_present": torch.tensor(True),
              "label": torch.tensor(1), "text": torch.zeros(4, dtype=torch.long)}
    stamped = poisoning.stamp_trigger(sample, "audio", rate)
    spectrum = torch.fft.rfft(stamped["audio"]).abs()
    assert int(spectrum.argmax()) == 3600  # 1 s of audio: bin k is k Hz
    assert torch.equal(sample["audio"], torch.zeros(rate))  # the input is left as it was


# ---- defenses ------------------------------------------------------------------------------

def _replies(updates: list[dict[str, np.ndarray]]) -> list[Message]:
    replies = []
    for pid, u in enumerate(updates):
        message = Message(content=RecordDict({"config": ConfigRecord()}),
                          message_type=MessageType.TRAIN, dst_node_id=100 + pid)
        replies.append(release_train(message, config(), pid, 10, u, {}))
    return replies


@pytest.mark.parametrize("strategy, malicious", [
    ("median", 0), ("trimmed-mean", 0), ("krum", 2), ("multikrum", 2), ("bulyan", 2)])
def test_robust_aggregators_reject_or_trim_the_attackers(strategy: str, malicious: int) -> None:
    """9 honest updates near u and 2 attackers sending -10 u: FedAvg moves against u, each
    robust aggregator stays near the honest mean."""
    rng = np.random.default_rng(0)
    direction = update(11)
    honest = [{k: v + rng.normal(0, 0.05, v.shape).astype(np.float32)
               for k, v in direction.items()} for _ in range(9)]
    attackers = [{k: -10 * v for k, v in direction.items()} for _ in range(2)]
    zero = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    honest_mean = {k: np.mean([u[k] for u in honest], axis=0) for k in SHAPES}

    def aggregate(name: str, f: int) -> dict[str, np.ndarray]:
        cfg = config(**{"data.num-clients": 11, "strategy.name": name,
                        "strategy.num-malicious": f})
        new, reason = strategy_step(build_strategy(cfg), 1, _replies(honest + attackers), zero)
        assert reason is None
        return new

    distance = lambda a: norm({k: a[k] - honest_mean[k] for k in SHAPES})  # noqa: E731
    assert distance(aggregate("fedavg", 0)) > norm(direction)  # FedAvg follows the attackers
    robust = aggregate(strategy, malicious)
    assert distance(robust) < 0.1 * norm(direction)
    if strategy == "krum":  # Krum picks one update: an honest one
        assert any(all(np.allclose(robust[k], u[k]) for k in SHAPES) for u in honest)


def test_norm_bounding_clips_the_long_updates_and_records_them() -> None:
    updates = [update(20), update(21), update(22, scale=10.0)]
    norms = [norm(u) for u in updates]
    for bound_filter, bound in ((NormBound(0.0, median=True), float(np.median(norms))),
                                (NormBound(2.0, median=False), 2.0)):
        replies = _replies(updates)
        s = Screening(1, replies, {100 + i: i for i in range(3)}, {}, kept=list(replies))
        bound_filter.screen(s)
        sent = [from_record(r.content.array_records["arrays"]) for r in s.kept]
        assert len(s.kept) == 3 and s.notes["norm_bound"] == pytest.approx(bound)
        assert s.notes["norm_clipped"] == [i for i, n in enumerate(norms) if n > bound]
        for before, after, n in zip(updates, sent, norms):
            assert norm(after) == pytest.approx(min(n, bound), rel=1e-5)
            np.testing.assert_allclose(after["a"] * n / norm(after), before["a"], rtol=1e-4)


# ---- the run directory ---------------------------------------------------------------------

def test_config_refuses_unusable_attacks_naming_the_keys() -> None:
    cases = {
        "attack.clients": {"attack.kind": "scale", "attack.clients": "1",
                           "attack.fraction": 0.2},
        "set attack.kind": {"attack.clients": "1"},
        "needs attackers": {"attack.kind": "gaussian"},
        "outside data.num-clients": {"attack.kind": "gaussian", "attack.clients": "7"},
        "at least one honest": {"attack.kind": "gaussian", "attack.clients": "0,1,2,3"},
        "attack.target-class": {"attack.kind": "backdoor", "attack.clients": "1",
                                "attack.target-class": 8},
        "defense.median-norm-bound": {"secagg.enabled": True,
                                      "defense.median-norm-bound": True},
        "sensitivity": {"privacy.client-level": True, "defense.median-norm-bound": True},
        "he.enabled encrypts": {"he.enabled": True, "server.evaluate-every": 0,
                                "defense.median-norm-bound": True},
        "encoded payload": {"attack.kind": "sign-flip", "attack.clients": "1",
                            "compression.codec": "quantize"},
        "with compression.downlink": {"attack.kind": "little-is-enough", "attack.clients": "1",
                                      "compression.downlink": "quantize"},
        "task.name = 'classification'": {"attack.kind": "label-flip", "attack.clients": "1",
                                         "task.name": "videoqa", "model.text-weight": 1.0},
    }
    for words, settings in cases.items():
        with pytest.raises(ConfigError, match=words):
            config(**settings)
    drawn = config(**{"data.num-clients": 10, "attack.kind": "gaussian", "attack.fraction": 0.2})
    assert len(drawn.attack.attackers(10, drawn.seed)) == 2
    assert drawn.attack.attackers(10, drawn.seed) == drawn.attack.attackers(10, drawn.seed)


@pytest.mark.slow
def test_attackers_are_marked_and_never_counted_as_honest_clients(tmp_path: Path) -> None:
    cfg = config(**{"attack.kind": "backdoor", "attack.clients": "1"})
    rundir.write_config(tmp_path, cfg)
    grid = LocalGrid(build_client_app(), {10 + pid: {"partition-id": pid} for pid in range(4)})
    report = FederatedRun(grid, cfg, tmp_path).run()
    partitions = json.loads((tmp_path / rundir.PARTITIONS_FILE).read_text())
    assert [p.get("attacker", False) for p in partitions] == [False, True, False, False]
    records = rundir.read_metrics(tmp_path)
    assert all(r["attack_success_rate"] is not None for r in records)  # round 0 too
    for record in records[1:]:
        assert record["attackers"] == [1] and 1 in record["participants"]
        clients = record["clients"]
        assert clients["1"]["attacker"] is True and "val_accuracy" not in clients["1"]
        honest = [clients[p] for p in ("0", "2", "3")]
        assert not any("attacker" in row for row in honest)
        assert record["federated_accuracy_client_mean"] == pytest.approx(
            np.mean([row["val_accuracy"] for row in honest]))
        assert record["train_loss"] == pytest.approx(
            sum(r["train_loss"] * r["train_examples"] for r in honest)
            / sum(r["train_examples"] for r in honest))
    assert report["attack"]["attackers"] == [1] and report["attack"]["kind"] == "backdoor"
    assert "1" not in report["final_client_accuracy"]
    assert report["attack"]["final_attack_success_rate"] == records[-1]["attack_success_rate"]
    assert (tmp_path / "plots" / "attack.png") in plot_run(tmp_path)


def test_non_finite_figures_are_recorded_as_null() -> None:
    record = {"round": 3, "centralized_loss": math.inf, "train_loss": 1.5,
              "clients": {"2": {"train_loss": math.nan, "val_accuracy": 0.5}},
              "sampled": [1, 2], "aggregate_kept_previous": None}
    cleaned = rundir.finite_record(record)
    assert cleaned == {"round": 3, "centralized_loss": None, "train_loss": 1.5,
                       "clients": {"2": {"train_loss": None, "val_accuracy": 0.5}},
                       "sampled": [1, 2], "aggregate_kept_previous": None}
    json.dumps(cleaned, allow_nan=False)


@pytest.mark.slow
def test_a_run_whose_model_an_attacker_blows_up_still_records_its_rounds(tmp_path: Path) -> None:
    cfg = config(**{"num-rounds": 1, "attack.kind": "gaussian", "attack.clients": "1",
                    "attack.noise-std": 1e30})
    rundir.write_config(tmp_path, cfg)
    grid = LocalGrid(build_client_app(), {10 + pid: {"partition-id": pid} for pid in range(4)})
    FederatedRun(grid, cfg, tmp_path).run()
    last = rundir.read_metrics(tmp_path)[-1]
    assert last["round"] == 1 and last["aggregate_kept_previous"] is None
    assert last["centralized_loss"] is None  # the diverged model's loss is not finite


def test_the_server_keeps_the_models_constants_as_built() -> None:
    """Buffers that training never changes (the mel filterbank, the STFT window) are constants:
    an aggregate that moves them is put back; a normalization layer's running statistics and
    the parameters are learned and left alone."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    model.register_buffer("window", torch.ones(3))
    names = list(model.state_dict())
    assert fixed_shared(model, names) == ["window"]
    constants = {"window": np.ones(3, np.float32)}
    moved = {"0.weight": np.full((2, 2), 7.0, np.float32), "window": np.full(3, -5.0, np.float32)}
    kept = with_constants(moved, constants)
    np.testing.assert_array_equal(kept["window"], np.ones(3))
    np.testing.assert_array_equal(kept["0.weight"], moved["0.weight"])


@pytest.mark.slow
def test_gaussian_noise_never_reaches_the_models_constants(tmp_path: Path) -> None:
    """Noise on the mel filterbank makes every log-mel NaN; the server keeps it as built, so
    the noised model stays finite."""
    cfg = config(**{"num-rounds": 1, "attack.kind": "gaussian", "attack.clients": "1"})
    rundir.write_config(tmp_path, cfg)
    grid = LocalGrid(build_client_app(), {10 + pid: {"partition-id": pid} for pid in range(4)})
    FederatedRun(grid, cfg, tmp_path).run()
    fb = "audio_encoder.log_mel.mel.mel_scale.fb"
    after = rundir.latest_checkpoint(tmp_path).global_shared
    np.testing.assert_array_equal(after[fb], initial_shared(cfg)[fb])
    assert rundir.read_metrics(tmp_path)[-1]["centralized_loss"] is not None


@pytest.mark.slow
def test_under_secure_aggregation_honest_clients_clip_before_masking(tmp_path: Path) -> None:
    """Three clients with secure aggregation and defense.norm-bound: the global model moves by
    the honest clients' clipped mean; the attacker's noise, beyond secagg.range, is refused by
    its own (honest) quantizer, so it sits the round out, named."""
    bound = 0.05
    cfg = secagg_config(1, **{"secagg.enabled": True, "attack.kind": "gaussian",
                              "attack.clients": "2", "attack.noise-std": 5.0,
                              "defense.norm-bound": bound})
    federated = run(cfg, tmp_path)
    record = rundir.read_metrics(tmp_path)[-1]
    assert record["aggregate_kept_previous"] is None and record["attackers"] == [2]
    assert [r["partition-id"] for r in record["rejected"]] == [2]
    assert "range" in record["rejected"][0]["reason"]
    before = initial_shared(cfg)
    results = [client_task.train(cfg, pid, 1, before, RecordDict()) for pid in (0, 1)]
    assert all(norm(r.update) > bound for r in results)  # the bound binds
    weights = [r.num_examples for r in results]
    clipped = [clip_update(r.update, bound)[0] for r in results]
    step = cfg.secagg_bound() / 2 ** (cfg.secagg.bits - 1)
    for name in before:
        mean = sum(w * u[name].astype(np.float64) for w, u in zip(weights, clipped)) / sum(weights)
        moved = federated.global_shared[name].astype(np.float64) - before[name]
        np.testing.assert_allclose(moved, mean, atol=step)


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "median", "trimmed-mean", "krum",
                                      "multikrum", "bulyan"])
def test_robust_and_mean_strategies_aggregate_updates_as_they_would_weights(strategy: str) -> None:
    """These strategies aggregate the updates themselves (the server optimizers still get
    weights, tests/test_federated_server_optimizers.py): the new model is still the strategy's
    aggregate of the clients' models, which Flower computes here from weights."""
    from fedmirasol.core.parameters import apply_delta, from_record, to_record
    from fedmirasol.server.aggregators.mean import aggregate_weights

    rng = np.random.default_rng(3)
    model = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": np.ones(3, np.float32)}
    updates = [{k: (rng.normal(size=v.shape) * 0.1).astype(np.float32) for k, v in model.items()}
               for _ in range(9)]
    cfg = config(**{"strategy.name": strategy, "strategy.num-malicious": 1,
                    "data.num-clients": 9})
    new, reason = strategy_step(build_strategy(cfg), 1, _replies(updates), model)
    weights = _replies(updates)
    for reply in weights:
        reply.content["arrays"] = to_record(apply_delta(
            model, from_record(reply.content.array_records["arrays"])))
    expected, expected_reason = aggregate_weights(build_strategy(cfg), 1, weights, model)
    assert reason is None and expected_reason is None
    assert not np.allclose(expected["w"], model["w"])  # the model moved
    for name in model:
        np.testing.assert_allclose(new[name], expected[name], rtol=0, atol=1e-6)
