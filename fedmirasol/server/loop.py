"""The ServerApp's round loop around a Flower strategy, with checkpoints and resume.

Each round: the strategy samples nodes and builds the train messages (Flower's code); the
run's aggregator (`fedmirasol.server.aggregators`, chosen once per run: the strategy's mean,
client-level DP's noised mean, secure aggregation) sends them, passes the replies through the
reply filters (`fedmirasol.server.filters`: bad ones rejected with their reason, missing ones
recorded) and moves the global model; clients evaluate the new model on their validation
splits (through the aggregator too: in the clear, or as secure sums); the server evaluates it
on its test set; the round's record goes to metrics.jsonl, a checkpoint is written, and the
record goes on to the run's experiment trackers (`output.trackers`) and the progress callback.

The loop is the strategy's own `start()` cut open at the round boundary, which is what makes
resuming after round N possible.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid

from fedmirasol.errors import ConfigError
from fedmirasol.task import data as client_data
from fedmirasol.runs import run_dir as rundir
from fedmirasol.core.wire import CONFIG_KEY, RUN_NAME_KEY, STATE_DIR_KEY
from fedmirasol.core.seeds import seed_for
from fedmirasol.task.model import init_model, model_config
from fedmirasol.core.metrics import Traffic, client_metrics, weighted_mean
from fedmirasol.server.nodes import (
    ListedOnce,
    PartitionOrderedGrid,
    ask_partitions,
    claimed_partition_problems,
    discover_partitions,
    registered_partitions,
)
from fedmirasol.core.parameters import NumpyState, model_state, to_record
from fedmirasol.core.reply_checks import ArrayChecks
from fedmirasol.runs.report import write_report
from fedmirasol.runs.trackers import RunTrackers, open_trackers
from fedmirasol.config import RunConfig, to_json
from fedmirasol.task.model import fixed_shared, parameter_split, trainable_shared
from fedmirasol.server.aggregators import Auditor, choose_aggregator
from fedmirasol.server.evaluation import central_objective, full_state, make_evaluate_fn
from fedmirasol.server.federated_evaluation import PERSONAL_EVAL_KEYS
from fedmirasol.server.filters import reply_filters
from fedmirasol.server.text_metrics import central_text, client_text
from fedmirasol.server.strategy import (
    build_strategy,
    restore_strategy_state,
    strategy_state,
)
from fedmirasol.privacy.server_side import EXHAUSTED_FIELD, ServerPrivacy

log = logging.getLogger("fedmirasol.server")
DISCOVERY_TIMEOUT_S = 300.0
# A progress callback gets the record of round 0 (the initial model) and of each round, as
# metrics.jsonl holds them. One whose `per_reply` attribute is true also gets events while a
# round runs, told apart by their "event" key: "sent" when the train or evaluate messages have
# gone out, then "reply" as each reply arrives, with "round", "phase" ("train"/"evaluate"),
# "done" (replies so far), "sampled" (messages sent), "elapsed_s" (since they were sent) and,
# for a reply, "node", "partition" (None for an error the SuperLink sent) and "error".
Progress = Callable[[Mapping[str, Any]], None]


def with_constants(state: NumpyState, constants: Mapping[str, np.ndarray]) -> NumpyState:
    """`state` with the model's constants as built (a warning names those an aggregate moved:
    only a faulty or malicious client's update changes them)."""
    present = {name: value for name, value in constants.items() if name in state}
    moved = sorted(name for name, value in present.items()
                   if not np.array_equal(state[name], value))
    if moved:
        log.warning("the aggregate changed the model's constants %s; kept as built", moved)
    return {**state, **{name: value.copy() for name, value in present.items()}}


@contextmanager
def _seeded_random(seed: int) -> Iterator[None]:
    """Flower's strategies draw the round's clients with the `random` module: seed it for the
    draw, and give the process its own random state back afterwards."""
    saved = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(saved)


def _sampled_partitions(messages: list[Message], partitions: Mapping[int, int]) -> list[int]:
    return sorted(partitions[m.metadata.dst_node_id] for m in messages)


class FederatedRun:
    """Drives one run (fresh or resumed) of a config over a Grid, writing `run_dir`.

    `simulation_slots` > 0: the Grid is Flower's simulation engine's (in this process), which
    registers node i for partition i and runs that many virtual clients at once. The
    partitions then come from the registration order instead of one query per node, and
    every reply's own partition id checks them. `auditor`: an audit run's
    (`fedmirasol.server.aggregators.audited`).
    """

    def __init__(self, grid: Grid, config: RunConfig, run_dir: Path,
                 progress: Progress | None = None, simulation_slots: int = 0,
                 auditor: Auditor | None = None) -> None:
        self.config = config
        self.simulation_slots = simulation_slots
        self.partitions_registered = False
        self.run_dir = run_dir
        self.progress = progress or (lambda record: None)
        self.per_reply = bool(getattr(progress, "per_reply", False))
        self.strategy = build_strategy(config)
        self.grid = grid
        self.timeout = float(config.strategy.round_timeout)
        model = init_model(config)
        self.split = parameter_split(model, config)
        self.global_shared = model_state(model, self.split.shared)
        self.expected = {k: tuple(v.shape) for k, v in self.global_shared.items()}
        # the model's constants as built: no update may move them (a Byzantine client's noise
        # on the mel filterbank makes every later log-mel NaN)
        self.constants = {name: self.global_shared[name].copy()
                          for name in fixed_shared(model, self.global_shared)}
        self.evaluate_global = make_evaluate_fn(config)
        self.aggregator = choose_aggregator(config, self.global_shared, auditor)
        self.privacy = ServerPrivacy(config, run_dir, trainable_shared(model, self.global_shared))
        self.ahead = ArrayChecks(self.expected)  # train updates checked as they arrive
        self.filters = reply_filters(config, self.privacy, self.expected, self.ahead)
        # simulated Byzantine clients: marked in the records, never asked to evaluate
        self.attackers = config.attack.attackers(config.data.num_clients, config.seed)
        self.start_round = 1
        self.discovery_problems: list[str] = []
        self.stopped_early: str | None = None
        self.trackers = RunTrackers(run_dir)  # opened by run()
        self.traffic = Traffic()  # the current round's bytes on the wire

    def _config_record(self) -> ConfigRecord:
        return ConfigRecord({CONFIG_KEY: to_json(self.config),
                             STATE_DIR_KEY: str(self.run_dir / "client-state"),
                             RUN_NAME_KEY: self.run_dir.name})

    def resume(self, checkpoint: rundir.Checkpoint) -> None:
        """Continue after `checkpoint`'s round."""
        self.global_shared = checkpoint.global_shared
        restore_strategy_state(self.strategy, checkpoint.strategy_state)
        self.start_round = checkpoint.server_round + 1
        rundir.truncate_metrics(self.run_dir, checkpoint.server_round)
        self.privacy.resume(rundir.read_metrics(self.run_dir), checkpoint.server_round)

    def run(self) -> dict[str, Any]:
        """Run the rounds to the end with the config's trackers open; return the report."""
        with open_trackers(self.config, self.run_dir, self.start_round) as self.trackers:
            return self._run()

    def _round_done(self, record: Mapping[str, Any]) -> None:
        """A round's record is in metrics.jsonl (and checkpointed): tell the trackers, then
        the progress callback (which may stop the run)."""
        self.trackers.log_round(record)
        self.progress(record)

    def _run(self) -> dict[str, Any]:
        cfg = self.config
        # First contact starts the clients (imports, actors): give it more than a round.
        timeout = max(self.timeout, DISCOVERY_TIMEOUT_S)
        partitions = registered_partitions(self.grid, cfg.data.num_clients, timeout) \
            if self.simulation_slots else None
        if partitions is None:
            partitions, self.discovery_problems = discover_partitions(
                self.grid, cfg.data.num_clients, self._config_record(), timeout)
        else:  # one query per virtual-client process starts them all, and checks the order
            self.partitions, self.partitions_registered = partitions, True
            first = sorted(partitions, key=partitions.__getitem__)[:self.simulation_slots]
            answers, self.discovery_problems = ask_partitions(
                self.grid, first, self._config_record(), timeout)
            wrong = [f"node {node} holds partition {pid}, not {partitions[node]}"
                     for node, pid in answers.items() if pid != partitions[node]]
            if wrong:
                raise RuntimeError("the simulation engine's node registration order does not "
                                   "give the partitions: " + "; ".join(wrong))
        for problem in self.discovery_problems:
            log.warning("left out at discovery: %s", problem)
        self.partitions = partitions
        self.ordered = PartitionOrderedGrid(self.grid, partitions)
        if self.start_round == 1:
            rundir.write_partitions(self.run_dir, client_data.partition_summary(cfg))
        if self.start_round == 1 and cfg.server.evaluate_every:
            initial = {"round": 0, **self.evaluate_global(self.global_shared)}
            rundir.append_metrics(self.run_dir, _rename_central(initial))
            self._round_done(_rename_central(initial))
        for server_round in range(self.start_round, cfg.num_rounds + 1):
            if self._too_few_within_budget(server_round):
                break
            record = rundir.finite_record(self.run_round(server_round))
            rundir.append_metrics(self.run_dir, record)
            if server_round % cfg.output.checkpoint_every == 0 \
                    or server_round == cfg.num_rounds:
                rundir.save_checkpoint(self.run_dir, rundir.Checkpoint(
                    server_round, self.global_shared, strategy_state(self.strategy), partitions))
            self._round_done(record)
        if self.stopped_early and self.start_round == 1 \
                and not any(r["round"] >= 1 for r in rundir.read_metrics(self.run_dir)):
            raise ConfigError(self.stopped_early)  # nothing ran: no report to write
        return self.finish()

    def run_round(self, server_round: int) -> dict[str, Any]:
        started = time.perf_counter()
        seed = self.config.seed
        record: dict[str, Any] = {"round": server_round}
        self.traffic = Traffic()

        # Training: Flower's strategy samples (seeded per round) and builds the messages. Under
        # client-level DP the draw comes from a secret seed instead: its accounting counts on
        # sampling, which amplifies privacy only if nobody can tell who was drawn, and the
        # run's seed travels to every client.
        arrays, train_config = to_record(self.global_shared), self._config_record()
        # One listing for the count and the draw, taken just before the draw (so that the
        # population behind client-level DP's sampling rate is the one drawn from).
        train_grid = ListedOnce(self._train_grid())
        population = len(train_grid.get_node_ids())  # clients the draw is made from
        with _seeded_random(secrets.randbits(64) if self.privacy.client_level is not None
                            else seed_for(seed, server_round, 1)):
            messages = list(self.strategy.configure_train(
                server_round, arrays, train_config, train_grid))
        population = max(population, len(messages))  # never below the draw
        outcome = self.aggregator.train(self, server_round, messages, population)
        self.global_shared = with_constants(outcome.global_shared, self.constants)
        accepted, exhausted, rejected = outcome.accepted, outcome.exhausted, outcome.rejected
        kept_reason = outcome.kept_reason
        train_rows = {}
        for reply in accepted:
            row = client_metrics(reply)
            train_rows[int(row["partition-id"])] = row
        honest_rows = [row for pid, row in train_rows.items() if pid not in self.attackers]
        sampled = _sampled_partitions(messages, self.partitions)
        record.update(
            sampled=sampled,
            participants=sorted(train_rows),
            rejected=[r.to_json() for r in rejected],
            **{EXHAUSTED_FIELD: sorted(int(client_metrics(r)["partition-id"])
                                       for r in exhausted)},
            aggregate_kept_previous=kept_reason,
            train_loss=(outcome.train_loss if outcome.train_loss is not None
                        else weighted_mean(honest_rows, "train-loss")),
            skipped_files=int(sum(row.get("skipped_files", 0) for row in train_rows.values())),
            **outcome.figures,
        )
        if self.config.attack.enabled:
            record["attackers"] = [pid for pid in sampled if self.config.attack.attacks(
                pid, server_round, self.config.data.num_clients, self.config.seed)]

        # Federated evaluation on the clients' validation splits.
        with _seeded_random(seed_for(seed, server_round, 2)):
            eval_messages = list(self.strategy.configure_evaluate(
                server_round, to_record(self.global_shared), self._config_record(),
                ListedOnce(self.ordered)))
        eval_messages = [m for m in eval_messages  # figures of honest clients only
                         if self.partitions[m.metadata.dst_node_id] not in self.attackers]
        evaluation = self.aggregator.evaluate(self, server_round, eval_messages)
        eval_rows = evaluation.rows
        down, up = self._by_partition(self.traffic.down), self._by_partition(self.traffic.up)
        record.update(
            **evaluation.fields,
            # bytes as serialized on the wire, train and evaluate messages, every node
            bytes_down=sum(self.traffic.down.values()),
            bytes_up=sum(self.traffic.up.values()),
            clients={str(pid): {**_client_row(train_rows.get(pid), eval_rows.get(pid),
                                            pid in self.attackers),
                                "bytes_down": down.get(pid, 0), "bytes_up": up.get(pid, 0)}
                     for pid in sorted(set(train_rows) | set(eval_rows) | set(down) | set(up))},
        )

        record.update(self.privacy.round_figures(train_rows, eval_rows))

        # Centralized evaluation on the server's test set.
        every = self.config.server.evaluate_every
        if every and (server_round % every == 0 or server_round == self.config.num_rounds):
            central = self.evaluate_global(self.global_shared)
            record.update(_rename_central({**central, "round": server_round}))
        else:
            record.update(centralized_accuracy=None, centralized_loss=None)
        record["duration_s"] = time.perf_counter() - started
        return self.privacy.recorded(record)

    def _by_partition(self, counts: Mapping[int, int]) -> dict[int, int]:
        """Per-node byte counts by partition (nodes of known partitions)."""
        return {self.partitions[node]: count for node, count in counts.items()
                if node in self.partitions}

    def watch(self, server_round: int, phase: str, messages: list[Message]
               ) -> Callable[[Message], None] | None:
        """Tell a per-reply progress callback that `messages` went out; the function that
        tells it of each reply (None when the callback only wants round records)."""
        if not self.per_reply:
            return None
        sent, done = time.perf_counter(), 0
        event = {"round": server_round, "phase": phase, "sampled": len(messages)}
        self.progress({"event": "sent", **event, "done": 0, "elapsed_s": 0.0})

        def on_reply(reply: Message) -> None:
            nonlocal done
            done += 1
            node = reply.metadata.src_node_id
            self.progress({"event": "reply", **event, "done": done,
                           "elapsed_s": time.perf_counter() - sent, "node": node,
                           "partition": self.partitions.get(node), "error": reply.has_error()})

        return on_reply

    def check_registered(self, replies: list[Message]) -> None:
        """Partitions taken from the simulation engine's registration order must be the ones
        the nodes reply with; otherwise the engine changed and the run stops here."""
        if not self.partitions_registered:
            return
        problems = claimed_partition_problems(replies, self.partitions)
        if problems:
            raise RuntimeError("the simulation engine's node registration order does not give "
                               "the partitions: " + "; ".join(problems))

    def _train_grid(self) -> PartitionOrderedGrid:
        """The nodes that may be sampled for training: all but those out of DP budget."""
        if not self.privacy.exhausted:
            return self.ordered
        return PartitionOrderedGrid(self.grid, self.privacy.eligible(self.partitions))

    def _too_few_within_budget(self, server_round: int) -> bool:
        """True (and logged) when fewer nodes can train than a round needs (Flower's sampler
        would wait for them forever): the run ends here. Under DP those are the nodes within
        their privacy budget; without DP, the federation itself is too small."""
        s = self.config.strategy
        needed = max(s.min_train_nodes, s.min_available_nodes)
        eligible = len(self.privacy.eligible(self.partitions))
        if eligible >= needed:
            return False
        keys = "strategy.min-train-nodes/min-available-nodes"
        if self.privacy.exhausted:
            self.stopped_early = (f"stopped before round {server_round}: {eligible} client(s) "
                                  f"within their privacy budget, the strategy needs {needed} "
                                  f"({keys})")
        else:  # some nodes left out at discovery (a config check refuses a smaller federation)
            total = self.config.data.num_clients
            self.stopped_early = (
                f"stopped before round {server_round}: {eligible} of data.num-clients = "
                f"{total} client(s) take part, the strategy needs {needed} ({keys})"
                + (f"; left out: {'; '.join(self.discovery_problems)}"
                   if self.discovery_problems else ""))
        log.warning("%s", self.stopped_early)
        return True

    def finish(self) -> dict[str, Any]:
        """Write the final model (where the server can read it) and report.json; return the
        report."""
        final = self.aggregator.final_model(self)
        if final is not None:
            rundir.save_final_model(self.run_dir, full_state(self.config, final),
                                    model_config(self.config).to_dict())
        # counted from the shapes: under homomorphic encryption the server holds ciphertexts
        shared = {name: np.broadcast_to(np.float32(0), shape)
                  for name, shape in self.expected.items()}
        report = write_report(self.run_dir, shared=shared,
                              discovery_problems=self.discovery_problems,
                              local_parameters=list(self.split.local),
                              stopped_early=self.stopped_early)
        self.trackers.log_finished()
        return report


def _rename_central(metrics: Mapping[str, Any]) -> dict[str, Any]:
    renamed = {"round": metrics["round"], "centralized_accuracy": metrics["test-accuracy"],
               "centralized_loss": metrics["test-loss"], **central_text(metrics),
               **central_objective(metrics)}
    if "attack-success-rate" in metrics:  # under a targeted attack
        renamed["attack_success_rate"] = metrics["attack-success-rate"]
    return renamed


def _client_row(train: Mapping[str, float] | None, val: Mapping[str, float] | None,
                attacker: bool = False) -> dict[str, float]:
    row: dict[str, float] = {"attacker": True} if attacker else {}
    if train:  # a securely aggregated client shows neither (they are in the secure sums)
        row.update({name: train[key] for name, key in (("train_loss", "train-loss"),
                                                       ("train_examples", "num-examples"))
                    if key in train})
        if "skipped_files" in train:
            row["skipped_files"] = int(train["skipped_files"])
    if val and "val-accuracy" in val:  # under DP only from a site's public split
        row.update({"val_accuracy": val["val-accuracy"], "val_loss": val["val-loss"],
                    "val_examples": val["num-examples"]})
        row.update({key.replace("-", "_"): val[key] for key in PERSONAL_EVAL_KEYS if key in val})
        row.update(client_text(val))
    return row
