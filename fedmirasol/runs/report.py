"""A run's summary (report.json) and the table `fedmirasol report` prints, from metrics.jsonl.

report.json is assembled here only: `write_report` when a run finishes, `add_to_report` for
what its caller measured (wall-clock time, the centralized baseline)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fedmirasol.config import RunConfig
from fedmirasol.runs import run_dir as rundir
from fedmirasol.core.metrics import mean
from fedmirasol.privacy import ledger
from fedmirasol.privacy.report import run_summary, worst_client_line
from fedmirasol.training.text_eval import count_key
from fedmirasol.training.pretrain_eval import OBJECTIVE_METRICS


def build_report(run_dir: str | Path, shared: Mapping[str, np.ndarray] | None = None
                 ) -> dict[str, Any]:
    """Summary of a run directory's metrics (final and best accuracies, totals).

    `shared`: the global shared state (name -> array) whose size is reported; by default the
    latest checkpoint's."""
    config = rundir.read_config(run_dir)
    rounds = [r for r in rundir.read_metrics(run_dir) if r["round"] > 0]
    if not rounds:
        raise ValueError(f"{run_dir} has no completed rounds in {rundir.METRICS_FILE}")
    final = rounds[-1]
    clients = final.get("clients", {})
    return {
        "name": config.name,
        "strategy": config.strategy.name,
        "split_local": config.split.local,
        "rounds_completed": final["round"],
        "num_rounds": config.num_rounds,
        "final_centralized_accuracy": final["centralized_accuracy"],
        "final_centralized_loss": final["centralized_loss"],
        "best_centralized_accuracy": max((r["centralized_accuracy"] for r in rounds
                                          if r["centralized_accuracy"] is not None),
                                         default=None),
        "final_federated_accuracy": final.get("federated_accuracy"),
        "final_federated_loss": final.get("federated_loss"),
        "final_mean_client_accuracy": final.get("federated_accuracy_client_mean"),
        # Per-round client accuracies are noisy on small validation splits: also the mean over
        # the last quarter of the rounds.
        "last_quarter_mean_client_accuracy": mean(
            r.get("federated_accuracy_client_mean") for r in _last_quarter(rounds)),
        "last_quarter_centralized_accuracy": mean(
            r.get("centralized_accuracy") for r in _last_quarter(rounds)),
        "final_client_accuracy": {pid: row["val_accuracy"] for pid, row in clients.items()
                                  if "val_accuracy" in row},
        **_personalization_summary(config, rounds),
        **_text_summary(rounds),
        **_attack_summary(config, rounds),
        **_objective_summary(config, rounds),
        **_privacy_summary(run_dir),
        **shared_counts(shared if shared is not None else _checkpointed_shared(run_dir)),
        "total_bytes_down": sum(r["bytes_down"] for r in rounds),
        "total_bytes_up": sum(r["bytes_up"] for r in rounds),
        "compression": _compression_summary(config),
        "bytes_to_accuracy": bytes_to_accuracy(rounds),
        "total_rejected_updates": sum(len(r["rejected"]) for r in rounds),
        "total_round_seconds": sum(r["duration_s"] for r in rounds),
        "mean_round_seconds": mean(r["duration_s"] for r in rounds),
        "rejections": [{"round": r["round"], **x} for r in rounds for x in r["rejected"]],
    }


def write_report(run_dir: str | Path, *, shared: Mapping[str, np.ndarray] | None = None,
                 discovery_problems: Sequence[str] = (), local_parameters: Sequence[str] = (),
                 stopped_early: str | None = None) -> dict[str, Any]:
    """Write report.json at the end of a run (the server loop's finish): `build_report` and
    what the server knows of the run (nodes left out at discovery, the parameters kept on the
    clients, why it stopped early); return the report."""
    report = build_report(run_dir, shared=shared)
    report.update(discovery_problems=list(discovery_problems),
                  local_parameters=list(local_parameters), stopped_early=stopped_early)
    rundir.write_report(run_dir, report)
    return report


def add_to_report(run_dir: str | Path, *, wall_clock_seconds: float | None = None,
                  baseline: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Add what the caller of a finished run measured to its report.json: the run's wall-clock
    time, the centralized baseline's figures (`engines.centralized_baseline`); return it."""
    report = rundir.read_report(run_dir)
    if wall_clock_seconds is not None:
        report["wall_clock_seconds"] = wall_clock_seconds
    report.update(baseline or {})
    rundir.write_report(run_dir, report)
    return report


def shared_counts(shared: Mapping[str, np.ndarray] | None) -> dict[str, int]:
    """How much of the model is shared with the server: `shared_parameters`, the number of
    scalar values (weights and the float buffers such as BatchNorm statistics that travel with
    them), and `shared_tensors`, the number of state_dict entries they are in. Empty if
    unknown."""
    if shared is None:
        return {}
    return {"shared_parameters": int(sum(np.asarray(value).size for value in shared.values())),
            "shared_tensors": len(shared)}


def _checkpointed_shared(run_dir: str | Path) -> Mapping[str, np.ndarray] | None:
    checkpoint = rundir.latest_checkpoint(run_dir)
    return None if checkpoint is None else checkpoint.global_shared


def _compression_summary(config: RunConfig) -> dict[str, Any]:
    """The run's codec and downlink, with the settings that apply to them."""
    c = config.compression
    settings = {"quantize": {"bits": c.bits, "bucket_size": c.bucket_size},
                "top-k": {"fraction": c.fraction}, "random-k": {"fraction": c.fraction},
                "low-rank": {"rank": c.rank}}.get(c.codec, {})
    return {"codec": c.codec, **settings,
            **({"error_feedback": c.error_feedback} if c.codec != "none" else {}),
            "downlink": c.downlink,
            **({"downlink_bits": c.downlink_bits} if c.downlink != "none" else {})}


def bytes_to_accuracy(rounds: list[dict]) -> dict[str, dict[str, int]]:
    """For each accuracy level the run reached (10 %, 20 %, ...): the first round that reached
    it and the bytes sent by the end of that round (up, down, both). The accuracy is the
    centralized one (the server's test set), or the federated one in runs whose server does
    not evaluate."""
    key = "centralized_accuracy" if any(r.get("centralized_accuracy") is not None
                                        for r in rounds) else "federated_accuracy"
    reached: dict[str, dict[str, int]] = {}
    up = down = 0
    for record in rounds:
        up, down = up + record["bytes_up"], down + record["bytes_down"]
        accuracy = record.get(key)
        if accuracy is None:
            continue
        for level in range(10, int(accuracy * 100 + 1e-9) + 1, 10):
            reached.setdefault(f"{level}%", {"round": record["round"], "bytes_up": up,
                                             "bytes_down": down, "bytes_total": up + down})
    return reached


def _last_quarter(rounds: list[dict]) -> list[dict]:
    """The last quarter of the rounds (at least the last one)."""
    return rounds[-max(1, len(rounds) // 4):]


def _personalization_summary(config: RunConfig, rounds: list[dict]) -> dict[str, Any]:
    """Personalized (and locally adapted) accuracy beside the global model's, per client and as
    means; empty for runs without personalization."""
    method = config.personalization.method
    summary: dict[str, Any] = {}
    quarter = _last_quarter(rounds)
    for kind in ("personal", "adapted"):
        key = f"{kind}_accuracy_client_mean"
        if not any(r.get(key) is not None for r in rounds):
            continue
        clients = rounds[-1].get("clients", {})
        summary.update({
            f"final_mean_client_{kind}_accuracy": rounds[-1].get(key),
            f"last_quarter_mean_client_{kind}_accuracy": mean(r.get(key) for r in quarter),
            f"final_client_{kind}_accuracy": {pid: row[f"{kind}_accuracy"]
                                              for pid, row in clients.items()
                                              if f"{kind}_accuracy" in row},
        })
    if summary or method != "none":
        summary["personalization_method"] = method
    return summary


def _text_summary(rounds: list[dict]) -> dict[str, Any]:
    """The videoqa task's final scores (exact match overall and per question type, CIDEr,
    BLEU-4) on the server's test set, over the clients and per client; empty otherwise."""
    final, summary = rounds[-1], {}
    for where in ("centralized", "federated"):
        scores = {key[len(where) + 1:]: value for key, value in final.items()
                  if key.startswith(f"{where}_") and value is not None
                  and count_key(key[len(where) + 1:])}
        if scores:
            summary[f"final_{where}_text"] = scores
    clients = {pid: {key[len("val_"):]: value for key, value in row.items()
                     if key.startswith("val_") and count_key(key[len("val_"):])}
               for pid, row in final.get("clients", {}).items()}
    if any(clients.values()):
        summary["final_client_text"] = clients
    return summary


def _attack_summary(config: RunConfig, rounds: list[dict]) -> dict[str, Any]:
    """The attack and its attackers (never among the clients whose accuracies the report
    shows: they are not asked to evaluate), with the attack success rate of a targeted
    attack; empty for runs without one."""
    attack = config.attack
    if not attack.enabled:
        return {}
    rates = [r["attack_success_rate"] for r in rounds if r.get("attack_success_rate") is not None]
    return {"attack": {
        "kind": attack.kind, "from_round": attack.from_round,
        "attackers": sorted(attack.attackers(config.data.num_clients, config.seed)),
        "final_attack_success_rate": rounds[-1].get("attack_success_rate"),
        "max_attack_success_rate": max(rates, default=None),
        "last_quarter_attack_success_rate": mean(
            r.get("attack_success_rate") for r in _last_quarter(rounds)),
    }}


def _objective_summary(config: RunConfig, rounds: list[dict]) -> dict[str, Any]:
    """A pre-training run's objective and its last test-set figures (zero-shot accuracy,
    retrieval, kNN probe, reconstruction errors); empty for classification runs."""
    if not config.pretrain.enabled:
        return {}
    evaluated = [r for r in rounds if r.get("centralized_loss") is not None]
    final = evaluated[-1] if evaluated else {}
    return {"objective": config.pretrain.objective,
            "final_centralized_objective": {key: final[f"centralized_{key}"]
                                            for key in OBJECTIVE_METRICS
                                            if f"centralized_{key}" in final}}


def _privacy_summary(run_dir: str | Path) -> dict[str, Any]:
    """The privacy ledger's summary (worst client's epsilon at delta, client-level epsilon);
    empty for runs without DP."""
    if not ledger.ledger_path(run_dir).is_file():
        return {}
    summary = run_summary(run_dir)
    return {"privacy": {"worst_client": summary["worst-client"],
                        "client_level": summary["client-level"],
                        "budget_exhausted": [c["partition-id"] for c in summary["clients"]
                                             if c["budget-exhausted"]]}}


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _count(clients: list | int) -> int:
    """How many clients a record field names (a count where the record keeps aggregates)."""
    return clients if isinstance(clients, int) else len(clients)


def summary_table(run_dir: str | Path) -> str:
    """One line per round: accuracy, losses, participants, bytes, time."""
    header = (f"{'round':>5} {'train_loss':>10} {'central_acc':>11} {'central_loss':>12} "
              f"{'fed_acc':>8} {'fed_loss':>8} {'clients':>7} {'rejected':>8} "
              f"{'MB_down':>8} {'MB_up':>7} {'sec':>6}")
    lines = [header, "-" * len(header)]
    for r in rundir.read_metrics(run_dir):
        lines.append(
            f"{r['round']:>5} {_fmt(r.get('train_loss'), '10.4f')} "
            f"{_fmt(r.get('centralized_accuracy'), '11.3f')} "
            f"{_fmt(r.get('centralized_loss'), '12.4f')} "
            f"{_fmt(r.get('federated_accuracy'), '8.3f')} {_fmt(r.get('federated_loss'), '8.4f')} "
            f"{_count(r.get('participants', [])):>7} {len(r.get('rejected', [])):>8} "
            f"{r.get('bytes_down', 0) / 1e6:>8.2f} {r.get('bytes_up', 0) / 1e6:>7.2f} "
            f"{_fmt(r.get('duration_s'), '6.1f')}"
        )
    privacy = worst_client_line(run_dir)  # DP runs: the worst client's epsilon at delta
    if privacy is not None:
        lines.append(privacy)
    return "\n".join(lines)


class ConsoleProgress:
    """A run's progress on stdout: one summary line per round and, while the round's clients
    train and evaluate, how many of the sampled clients have replied and the seconds since
    the messages went out (a server-loop `Progress` callback that takes per-reply events).

    On a terminal that is a rich progress bar, gone when the round's line is printed; on
    other output (a file, a pipe, `flwr run`'s log stream) a plain line at most every
    `plain_every_s` seconds, so a slow round still shows it is alive.
    """

    per_reply = True  # the server loop sends "sent"/"reply" events besides round records

    def __init__(self, plain_every_s: float = 30.0) -> None:
        self.plain_every_s = plain_every_s
        self._bar: Any = None  # rich.progress.Progress while a phase runs on a terminal
        self._task: Any = None
        self._last_line = 0.0

    def __call__(self, record: Mapping[str, Any]) -> None:
        event = record.get("event")
        if event is None:
            self._close()
            _print_round(record)
        elif sys.stdout.isatty():
            self._show_bar(event, record)
        elif event == "sent":
            self._last_line = time.monotonic()
        elif time.monotonic() - self._last_line >= self.plain_every_s:
            self._last_line = time.monotonic()
            print(f"round {record['round']:>3}  {record['phase']}: {record['done']}/"
                  f"{record['sampled']} clients replied, {record['elapsed_s']:.0f}s", flush=True)

    def _show_bar(self, event: str, record: Mapping[str, Any]) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
            TimeElapsedColumn

        if event == "sent":
            self._close()
            self._bar = Progress(TextColumn("round {task.fields[round]:>3}  {task.description}"),
                                 BarColumn(), MofNCompleteColumn(), TextColumn("clients"),
                                 TimeElapsedColumn(), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(record["phase"], total=record["sampled"],
                                            round=record["round"])
        elif self._bar is not None:
            self._bar.update(self._task, completed=record["done"])

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = self._task = None


def _print_round(record: Mapping[str, Any]) -> None:
    """One line per round on stdout."""
    def fmt(key: str, spec: str = ".3f") -> str:
        return _fmt(record.get(key), spec)

    if record["round"] == 0:
        print(f"round   0  initial model: centralized acc {fmt('centralized_accuracy')}",
              flush=True)
        return
    print(f"round {record['round']:>3}  train loss {fmt('train_loss', '.4f')}  "
          + (f"centralized EM {fmt('centralized_exact_match')}  CIDEr {fmt('centralized_cider')}  "
             if "centralized_exact_match" in record else "")
          + _objective_columns(record)
          + f"centralized acc {fmt('centralized_accuracy')}  federated acc "
          f"{fmt('federated_accuracy')}  clients {_count(record['participants'])}/"
          f"{_count(record['sampled'])}  rejected {len(record['rejected'])}  "
          f"{record['duration_s']:.1f}s"
          + (f"  out of DP budget {record['budget_exhausted']}"
             if record.get("budget_exhausted") else "")
          + (f"  attack success {fmt('attack_success_rate')}"
             if record.get("attack_success_rate") is not None else ""), flush=True)


def _objective_columns(record: Mapping[str, Any]) -> str:
    """A pre-training objective's test-set figures for a round's line (none otherwise): the
    objective's loss and the retrieval Recall@1."""
    if not any(f"centralized_{key}" in record for key in OBJECTIVE_METRICS):
        return ""
    shown = {"centralized_loss": "test loss", "centralized_v2t_r1": "R@1 v2t",
             "centralized_t2v_r1": "t2v"}
    return "".join(f"{label} {_fmt(record.get(key), '.3f')}  " for key, label in shown.items()
                   if key in record)


# The default progress of `fedmirasol simulate` and `flwr run`.
print_progress = ConsoleProgress()
