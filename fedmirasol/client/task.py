"""A client's local work, free of Flower messages: train from the global model, evaluate.

The model starts from the same seeded initialization on every client and on the server, so
local parameters (never sent) begin identical everywhere. Training is seeded by
(run seed, round, client) so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
from flwr.app import RecordDict
from torch import nn

from fedmirasol.config.run import RunConfig
from fedmirasol.core.seeds import seed_for
from fedmirasol.task import data as client_data
from fedmirasol.task.model import init_model
from fedmirasol.client import state as client_state
from fedmirasol.core.parameters import (
    NumpyState,
    ParameterSplit,
    delta,
    load_state,
    model_state,
)
from fedmirasol.pretrained.checkpoint import frozen_names
from fedmirasol.core.proximal import proximal_term
from fedmirasol.personalization import (
    LocalWork,
    evaluate_personal,
    reply_metrics,
    train_round,
)
from fedmirasol.errors import ConfigError
from fedmirasol.personalization.adaptation import fine_tune
from fedmirasol.privacy.client_level import clip_update
from fedmirasol.training.device import place, resolve_device
from fedmirasol.training.loop import evaluate, train_epochs
from fedmirasol.training.optimizers import local_optimizer
from fedmirasol.training.text_eval import text_reply_metrics

if TYPE_CHECKING:
    from fedmirasol.privacy.client_round import PrivateRound, RoundSpend  # noqa: F401
    from fedmirasol.privacy.release_log import ReleaseLog

log = logging.getLogger("fedmirasol.client")


@dataclass(frozen=True)
class TrainResult:
    update: NumpyState | None  # delta of the shared parameters; None: DP budget exhausted
    num_examples: int
    metrics: dict[str, float]


@functools.lru_cache(maxsize=2)
def _cached_model(config: RunConfig, local: str) -> tuple[nn.Module, NumpyState, ParameterSplit]:
    model = init_model(config)
    frozen = frozen_names(config.pretrained, model)
    split = ParameterSplit.from_model(model, local, frozen)
    initial_local = model_state(model, split.local)
    return model, initial_local, split


def model_and_split(config: Mapping[str, Any]) -> tuple[nn.Module, NumpyState, ParameterSplit]:
    """A per-process model (reused across calls), its initial local state, and the split."""
    key = RunConfig.model_construct(seed=config.seed, model=config.model,
                                    pretrained=config.pretrained, pretrain=config.pretrain,
                                    data=config.data)
    return _cached_model(key, config.local_selectors())


def prepare_model(config: Mapping[str, Any], global_shared: Mapping[str, np.ndarray],
                  state: RecordDict) -> tuple[nn.Module, ParameterSplit]:
    """The model holding the global shared parameters and this client's local ones."""
    model, initial_local, split = model_and_split(config)
    missing = [name for name in split.shared if name not in global_shared]
    extra = [name for name in global_shared if name not in split.shared]
    if missing or extra:
        raise ValueError(f"the server's arrays do not match the shared parameters: missing "
                         f"{missing[:3]}, unexpected {extra[:3]}")
    load_state(model, global_shared)
    local = client_state.load_local_params(state)
    load_state(model, local if local is not None else initial_local)
    return model, split


def train(config: Mapping[str, Any], partition_id: int, server_round: int,
          global_shared: Mapping[str, np.ndarray], state: RecordDict,
          proximal_mu: float = 0.0, privacy_log: ReleaseLog | None = None,
          run: str = "run") -> TrainResult:
    """Local training from the global model; returns the shared-parameter delta.

    With `privacy.enabled` every pass over the data is DP-SGD, charged to `privacy_log`
    before it runs, and the reply's only figures about the data are noised; a client whose
    round would pass a budget trains nothing and returns no update. With
    `privacy.client-level` the update is clipped to `privacy.client-clip-norm`.
    """
    client = config.client
    torch.set_num_threads(client.threads)
    data = client_data.client_data(config, partition_id, server_round)  # poisoned: attackers
    privacy = config.privacy
    private = None
    if privacy.enabled:
        privacy_log = privacy_log or _state_log(state)
        private = _private_round(config, data, privacy_log, run, server_round, "train")
        if not private.allowed:  # never trains past a budget
            return TrainResult(update=None, num_examples=len(data.train),
                               metrics=private.metrics())
        private.charge()
    model, split = prepare_model(config, global_shared, state)
    device = resolve_device(client.device)
    place(model, device)
    seed = seed_for(config.seed, server_round, partition_id)
    torch.manual_seed(seed)
    extra = proximal_term(proximal_mu, global_shared) if proximal_mu > 0 else None
    loader = client_data.loader(data.train, client.batch_size, shuffle=True, seed=seed)

    def train_on_data(target: nn.Module, optimizer: torch.optim.Optimizer, *, epochs: int = 1,
                      steps: int | None = None, extra_loss: Any = None) -> dict[str, float]:
        if private is None:
            return train_epochs(target, loader, optimizer, epochs=epochs, device=device,
                                extra_loss=extra_loss)
        # Batches and noise from a CSPRNG (not the run's public seed): see PrivateRound.
        return private.train(target, data.train, optimizer, epochs=epochs, steps=steps,
                             extra_loss=extra_loss, device=device)

    metrics = train_round(config.personalization, LocalWork(
        model=model, loader=loader, make_optimizer=lambda m, lr: local_optimizer(m, client, lr),
        train=train_on_data, epochs=client.local_epochs, personal=split.local,
        global_shared=global_shared, state=state, device=device, extra_loss=extra,
        private=private is not None,
        steps_per_epoch=int(1 / private.sample_rate) if private is not None else 0))
    if private is not None:
        released = private.release_losses(model, data.train, client.eval_batch_size, device)
        private.finish()
        reply: dict[str, Any] = {**released, **private.metrics()}
    else:
        reply = {"train-loss": metrics["loss"], "proximal-term": metrics.get("loss_extra", 0.0),
                 "steps": metrics["steps"]}
        if "loss_class" in metrics:
            reply["train-class-loss"] = metrics["loss_class"]
        if "loss_text" in metrics:
            reply["train-text-loss"] = metrics["loss_text"]
        reply.update(reply_metrics(metrics))
    place(model, "cpu")
    client_state.save_local_params(state, model_state(model, split.local))
    update = delta(model_state(model, split.shared), global_shared)
    if privacy.client_level:
        update, reply["update-norm"] = clip_update(update, privacy.client_clip_norm)
    _report_skips(data, partition_id)
    reply.update({name: float(count) for name, count in data.skipped.items()})
    return TrainResult(update=update, num_examples=len(data.train), metrics=reply)


def _state_log(state: RecordDict) -> ReleaseLog:
    """The release log kept in the client's state (when the caller names no other)."""
    from fedmirasol.privacy.release_log import ReleaseLog  # Opacus: only under DP

    return ReleaseLog.in_state(state)


def _report_skips(data: client_data.ClientData, partition_id: int) -> None:
    if data.skipped.get("skipped_files"):
        log.warning("client %d: %d media file(s) dropped (%s)", partition_id,
                    data.skipped["skipped_files"],
                    ", ".join(f"{k}={v}" for k, v in data.skipped.items()))


def _units(config: RunConfig, data: client_data.ClientData) -> tuple[int, list[int] | None]:
    """(how many units the client's training data has, a unit index per clip or None)."""
    if config.privacy.unit == "clip":
        return len(data.train), None
    if data.users is None:
        raise ConfigError("privacy.unit = 'user' needs to know whose clips they are: a "
                          "manifest column 'user' (or 'video'), or data.clips-per-user for "
                          "synthetic data")
    names = {name: index for index, name in enumerate(dict.fromkeys(data.users))}
    return len(names), [names[name] for name in data.users]


def _spend(config: RunConfig, steps_per_epoch: int) -> tuple[RoundSpend, RoundSpend]:
    """What a round's training and its evaluation release under DP (before sigma is known)."""
    from fedmirasol.personalization.registry import method
    from fedmirasol.privacy.client_round import RoundSpend

    steps = method(config.personalization).private_steps(steps_per_epoch,
                                                         config.client.local_epochs)
    training = RoundSpend(steps=steps + 1)  # + the DP loss figures
    if not _evaluation_releases(config):
        return training, RoundSpend()
    return training, RoundSpend(steps=config.personalization.adapt_steps,
                                evaluations=int(config.privacy.eval_noise_multiplier > 0))


def _evaluation_releases(config: RunConfig) -> bool:
    """Under DP: whether an evaluation releases anything (DP figures, or a public split)."""
    return config.privacy.eval_noise_multiplier > 0 or config.site_privacy.eval_split == "public"


def _private_round(config: RunConfig, data: client_data.ClientData, privacy_log: ReleaseLog,
                   run: str, server_round: int, phase: str) -> PrivateRound:
    """This round's DP plan, checked against the site and the budgets (nothing charged)."""
    from fedmirasol.privacy.client_round import PrivateRound, sampling_plan  # Opacus: only under DP

    units, groups = _units(config, data)
    plan = sampling_plan(config.privacy, units, config.client.batch_size)
    training, evaluation = _spend(config, int(1 / plan.sample_rate))
    return PrivateRound.begin(
        privacy_log, config.privacy, config.site_privacy, run=run, server_round=server_round,
        phase=phase, sample_rate=plan.sample_rate,
        spend=training if phase == "train" else evaluation, per_round=training + evaluation,
        num_rounds=config.num_rounds, groups=groups)


def exhausted_bookkeeping(config: RunConfig, partition_id: int, state: RecordDict,
                          privacy_log: ReleaseLog | None = None, run: str = "run",
                          server_round: int = 1) -> dict[str, Any] | None:
    """Under DP-SGD, the public bookkeeping of a client whose next round would pass its
    budget (so it trains nothing); None when it may train."""
    if not config.privacy.enabled:
        return None
    privacy_log = privacy_log or _state_log(state)
    data = client_data.client_data(config, partition_id)
    private = _private_round(config, data, privacy_log, run, server_round, "train")
    return None if private.allowed else private.metrics()


def evaluate_local(config: Mapping[str, Any], partition_id: int,
                   global_shared: Mapping[str, np.ndarray], state: RecordDict,
                   privacy_log: ReleaseLog | None = None, run: str = "run",
                   server_round: int = 0) -> dict[str, float]:
    """The global model (with this client's local parameters) on the client's validation split,
    and, with personalization, its personalized (and locally adapted) model.

    Under DP the validation split is private: the figures leave only as one noised release
    charged to the accountant (`privacy.eval-noise-multiplier` > 0), or in the clear when the
    site declared its split public; otherwise nothing is evaluated. Local adaptation is then
    DP-SGD on the training data, charged too.
    """
    client = config.client
    torch.set_num_threads(client.threads)
    data = client_data.client_data(config, partition_id)
    private = None
    if config.privacy.enabled:
        if not _evaluation_releases(config):
            return {"num-examples": len(data.val)}  # public bookkeeping: no figure leaves
        privacy_log = privacy_log or _state_log(state)
        private = _private_round(config, data, privacy_log, run, server_round, "evaluate")
        if not private.allowed:
            return private.metrics()
        private.charge()
    model, _ = prepare_model(config, global_shared, state)
    device = resolve_device(client.device)
    place(model, device)
    val = client_data.loader(data.val, client.eval_batch_size, shuffle=False)
    bound = config.privacy.metric_loss_bound if private is not None else None
    result = evaluate(model, val, device=device, generation=config.task.generation(),
                      loss_bound=bound)
    metrics: dict[str, float] = {"val-loss": result["loss"], "num-examples": int(result["num_examples"]),
                                 **text_reply_metrics(result, "val-")}
    if "accuracy" in result:  # (a pre-training objective's DP evaluation may have none)
        metrics["val-accuracy"] = result["accuracy"]
    train = client_data.loader(data.train, client.batch_size, shuffle=True,
                               seed=seed_for(config.seed, partition_id, 3))

    def tune(target: nn.Module, optimizer: torch.optim.Optimizer, steps: int
             ) -> dict[str, float]:
        if private is None:
            return fine_tune(target, train, optimizer, steps, device)
        return private.train(target, data.train, optimizer, steps=steps, device=device)

    metrics.update(evaluate_personal(config.personalization, model, tune, val,
                                     lambda m, lr: local_optimizer(m, client, lr), state, result,
                                     device))
    place(model, "cpu")
    if private is None:
        return metrics
    if config.site_privacy.eval_split == "public":
        metrics["eval-split-public"] = 1
    else:
        metrics = {"num-examples": metrics["num-examples"],
                   **private.release_evaluation(*evaluation_sums(metrics, bound))}
    private.finish()
    return {**metrics, **private.metrics()}


def evaluation_sums(metrics: Mapping[str, float], loss_bound: float
                    ) -> tuple[dict[str, float], dict[str, float]]:
    """(bounded per-sample sums of an evaluation, their bounds) for one DP release: the
    count, the global model's correct answers (where it has an accuracy) and clipped loss, and
    the correct answers of the personalized and adapted models."""
    count = metrics["num-examples"]
    sums = {"dp-eval-count": float(count), "dp-eval-loss-sum": metrics["val-loss"] * count}
    bounds = {"dp-eval-count": 1.0, "dp-eval-loss-sum": loss_bound}
    if "val-accuracy" in metrics:
        sums["dp-eval-correct"] = round(metrics["val-accuracy"] * count)
        bounds["dp-eval-correct"] = 1.0
    for kind in ("personal", "adapted"):
        if f"{kind}-accuracy" in metrics:
            sums[f"dp-eval-{kind}-correct"] = round(metrics[f"{kind}-accuracy"]
                                                    * metrics[f"{kind}-examples"])
            bounds[f"dp-eval-{kind}-correct"] = 1.0
    return sums, bounds
