"""`fedmirasol privacy-audit`: train with canaries, then measure what the training leaked.

Sample level (Steinke, Nasr, Jagielski 2023): the auditor draws m canary clips with random
labels, each held by some client and included with probability 1/2 (`fedmirasol.privacy.
audit.canaries`); every client gets its included canaries in a private folder its node config
names; training runs as any run does; each canary is then scored (from the per-client updates
the server saw, or the final model) and the one-run bound turns the guesses into a lower bound
on epsilon. Client level (Andrew et al. 2024): m canary clients of the auditor, half of them
taking part, add random directions at the clip norm to the noised sum; each is scored by its
cosine with the final model's change.

The bound is written to audit.json beside the accountant's epsilon for the same unit, with
a plot of the scores; report.json says the model is not for use.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from fedmirasol.config import RunConfig
from fedmirasol.core.parameters import canonical_name, load_state, model_state, select_names
from fedmirasol.engines.simulation import simulate
from fedmirasol.errors import ConfigError
from fedmirasol.privacy import ledger
from fedmirasol.privacy.accountant_state import epsilon
from fedmirasol.privacy.audit import report as audit_report
from fedmirasol.privacy.audit.canaries import CanaryPlan
from fedmirasol.privacy.audit.canary_clients import CanaryClients
from fedmirasol.privacy.audit.scores import UpdateScores, final_model_scores
from fedmirasol.privacy.release_log import accountant_of
from fedmirasol.privacy.report import client_summaries
from fedmirasol.runs import run_dir as rundir
from fedmirasol.runs.audit_plots import plot_audit
from fedmirasol.runs.report import print_progress
from fedmirasol.server.loop import Progress
from fedmirasol.task.model import init_model, parameter_split, trainable_shared

log = logging.getLogger("fedmirasol.audit")
# (config, progress=, auditor=, node_config=) -> run directory: Flower's simulation engine
# (`simulate`), or an in-process one in tests and benchmarks
Engine = Callable[..., Path]


def check_auditable(config: RunConfig) -> None:
    """What an audit of `config` needs, as ConfigErrors naming the keys."""
    audit, data = config.audit, config.data
    for setting, enabled in (("secagg.enabled = false", config.secagg.enabled),
                             ("he.enabled = false", config.he.enabled),
                             ("compression.codec and compression.downlink = 'none'",
                              config.compression.enabled)):
        if enabled:
            raise ConfigError(f"an audit scores the updates the server aggregates, in the "
                              f"clear and uncompressed: set {setting} for the audit run")
    if config.attack.kind != "none":
        raise ConfigError(f"config key 'attack.kind' = {config.attack.kind!r}: an audit measures "
                          "the DP mechanism; run it without an attack")
    if audit.level == "client" and not config.privacy.client_level:
        raise ConfigError("config key 'audit.level' = 'client' audits client-level DP: set "
                          "privacy.client-level = true (a tiny privacy.client-noise-multiplier, "
                          "e.g. 0.01, shows what the audit can detect)")
    if audit.level == "sample":
        if config.task.name != "classification":
            raise ConfigError("config key 'audit.level' = 'sample' inserts labelled canary "
                              "clips: it needs task.name = 'classification'")
        if data.source == "site":
            raise ConfigError("a sample-level audit runs on simulated clients (data.source = "
                              "'synthetic' or 'manifest')")
        if audit.observe == "updates":
            score_names(config)  # raises, naming the key, when nothing trainable matches


def score_names(config: RunConfig) -> list[str]:
    """The shared trainable parameters `audit.score-parameters` selects."""
    model = init_model(config)
    split = parameter_split(model, config)
    try:
        chosen = select_names(model, config.audit.score_parameters, "audit.score-parameters")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    trainable = {canonical_name(n) for n, p in model.named_parameters() if p.requires_grad}
    names = [n for n in split.shared if n in chosen and n in trainable]
    if not names:
        raise ConfigError(f"config key 'audit.score-parameters' = "
                          f"{config.audit.score_parameters!r} selects no parameter that is "
                          "trained and shared (frozen by pretrained.*, or kept local?)")
    return names


def trainable_shapes(config: RunConfig) -> tuple[dict[str, tuple[int, ...]],
                                                 dict[str, np.ndarray]]:
    """Shapes and initial values of the shared parameters the run trains."""
    model = init_model(config)
    initial = model_state(model, trainable_shared(model, parameter_split(model, config).shared))
    return {n: tuple(v.shape) for n, v in initial.items()}, initial


def _final_shared(run_dir: Path) -> dict[str, np.ndarray]:
    checkpoint = rundir.latest_checkpoint(run_dir)
    if checkpoint is None:
        raise RuntimeError(f"{run_dir} holds no checkpoint: the audit run trained nothing")
    return checkpoint.global_shared


def _sample_level(config: RunConfig, engine: Engine, progress: Progress | None
                  ) -> tuple[Path, np.ndarray, np.ndarray, dict[str, Any]]:
    audit = config.audit
    model_config = config.model.mirasol
    plan = CanaryPlan.draw(audit.canaries, config.data.num_clients, model_config.num_classes,
                           audit.canary_kind)
    samples = plan.samples(model_config)
    scorer = (UpdateScores(init_model(config), samples, plan.owners, score_names(config))
              if audit.observe == "updates" else None)
    with tempfile.TemporaryDirectory(prefix="fedmirasol-canaries-") as private:  # mode 0700
        held = plan.write_client_files(private, model_config)
        log.info("audit: %d of %d canaries placed with %d clients", sum(held.values()),
                 plan.count, len(held))
        run_dir = engine(config, progress=progress, auditor=scorer,
                         node_config={"audit.canary-dir": private})
    if scorer is not None:
        scores = scorer.scores
    else:
        initial, final = init_model(config), init_model(config)
        load_state(final, _final_shared(run_dir))
        scores = final_model_scores(initial, final, samples)
    details = {"unit": config.privacy.unit if config.privacy.enabled else "clip",
               "score": audit.observe, "observe": audit.observe,
               "canary-kind": plan.kind,
               "accountant-epsilon": _clients_epsilon(config, run_dir, plan.owners),
               "accountant": config.privacy.accountant if config.privacy.enabled else None,
               "canaries": [{"id": i, "included": bool(plan.included[i]),
                             "owner": int(plan.owners[i]), "label": int(plan.labels[i]),
                             "score": float(scores[i])} for i in range(plan.count)],
               "canary-seed": plan.seed}
    return run_dir, scores, plan.included, details


def _clients_epsilon(config: RunConfig, run_dir: Path, owners: np.ndarray) -> float | None:
    """The largest epsilon the ledger holds for a client that held canaries (None: no
    DP-SGD)."""
    if not config.privacy.enabled:
        return None
    rows = client_summaries(ledger.read(run_dir))
    spent = [row["epsilon"] for row in rows if row["partition-id"] in set(owners.tolist())]
    return max(spent) if spent else None


def _client_level(config: RunConfig, engine: Engine, progress: Progress | None
                  ) -> tuple[Path, np.ndarray, np.ndarray, dict[str, Any]]:
    privacy = config.privacy
    canaries = CanaryClients.draw(config.audit.canaries, privacy.client_clip_norm)
    shapes, initial = trainable_shapes(config)
    canaries.bind(shapes)
    run_dir = engine(config, progress=progress, auditor=canaries, node_config={})
    final = _final_shared(run_dir)
    scores = canaries.cosines({n: final[n].astype(np.float64) - initial[n] for n in initial})
    summary = ledger.read(run_dir)
    level = [r for r in summary if r["kind"] == "client-level"]
    own = (None if privacy.client_noise_multiplier == 0 else
           epsilon(accountant_of(canaries.history(privacy.client_noise_multiplier), "rdp"),
                   privacy.delta))
    details = {"unit": "client", "score": "cosine", "observe": "final-model",
               "canary-kind": "client-update",
               "accountant-epsilon": (None if privacy.client_noise_multiplier == 0 or not level
                                      else float(level[-1]["epsilon"])),
               "accountant": "rdp (client-level ledger)",
               "canary-accountant-epsilon": own,
               "participation": canaries.participation,
               "canaries": [{"id": i, "included": bool(canaries.included[i]),
                             "score": float(scores[i])} for i in range(canaries.count)],
               "canary-seed": canaries.seed, "dimension": canaries.dimension}
    return run_dir, scores, canaries.included, details


def privacy_audit(config: RunConfig, *, engine: Engine = simulate,
                  progress: Progress | None = print_progress) -> tuple[Path, dict[str, Any]]:
    """Run `config` as an audit; return its run directory and audit.json's content."""
    check_auditable(config)
    started, load = time.perf_counter(), os.getloadavg()
    level = _sample_level if config.audit.level == "sample" else _client_level
    run_dir, scores, included, details = level(config, engine, progress)
    audit = config.audit
    table = {"level": audit.level, "model-not-for-use": True,
             **audit_report.outcome(scores, included, delta=config.privacy.delta,
                                    confidence=audit.confidence, guesses=audit.guesses,
                                    accountant_epsilon=details["accountant-epsilon"]),
             **details, "wall-clock-seconds": time.perf_counter() - started,
             "load-average": [load[0], os.getloadavg()[0]]}
    audit_report.write(run_dir, table)
    table = audit_report.read(run_dir) or table
    plot_audit(table, run_dir)
    _mark_report(run_dir, table)
    return run_dir, table


def _mark_report(run_dir: Path, table: Mapping[str, Any]) -> None:
    """report.json: the model is not for use, and the audit's headline."""
    report = rundir.read_report(run_dir)
    report["audit"] = {"model_not_for_use": True, "why": audit_report.NOT_FOR_USE,
                       "epsilon_lower_bound": table["epsilon-lower-bound"],
                       "accountant_epsilon": table["accountant-epsilon"],
                       "file": audit_report.AUDIT_FILE}
    rundir.write_report(run_dir, report)
