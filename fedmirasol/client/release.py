"""The one release point: every reply a client sends is assembled here.

`release_train`, `release_evaluate` and `release_partition` turn the task's results into the
reply's records; no other code builds reply content (the secure-aggregation stages mask what
`release_train` produced). A `ReleasePolicy`, chosen once from the run config, decides which
metrics leave the client:

- ``plain``: everything the task reports (losses, counts, validation figures).
- ``dp-sgd`` and ``client-level-dp``: the update, public bookkeeping (`PUBLIC_BOOKKEEPING`:
  the partition id and the number of training (or validation) clips, dataset sizes that
  DP-SGD's analysis treats as public and the sampling rate reveals anyway) and
  the ``dp-*`` figures: the accountant's bookkeeping (epsilon, delta, steps, sampling rate,
  noise multiplier, clip norm, history) and figures that are DP themselves (``*-noised``:
  noised sums charged to the same accountant). Validation figures leave only as such noised
  sums, or in the clear from a split the *site* declared non-private (its node config's
  ``privacy.eval-split = "public"``), marked ``eval-split-public``.

Under ``defense.norm-bound`` the update leaves clipped to that L2 norm (under secure
aggregation: before it is masked; under DP: after the noise, which post-processing keeps DP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from fedmirasol.config.run import RunConfig
from fedmirasol.core.parameters import NumpyState, to_record
from fedmirasol.privacy.client_level import clip_update


PUBLIC_BOOKKEEPING = ("num-examples", "partition-id")
# Figures of an evaluation on a split the site declared non-private.
PUBLIC_EVAL_PREFIXES = ("val-", "personal-", "adapted-", "num-examples", "eval-split-public")


def _dp_figure(key: str) -> bool:
    return key.startswith("dp-")


@dataclass(frozen=True)
class ReleasePolicy:
    """Which of the task's metrics a reply may carry (`allowed` None: all of them)."""

    name: str
    allowed: Callable[[str], bool] | None = None

    def metrics(self, values: Mapping[str, Any]) -> dict[str, Any]:
        if self.allowed is None:
            return dict(values)
        return {key: value for key, value in values.items()
                if key in PUBLIC_BOOKKEEPING or self.allowed(key)}

    def evaluation(self, values: Mapping[str, Any], public_split: bool) -> dict[str, Any]:
        """An evaluation's figures: under DP the noised ones, and the clear ones only from a
        split the site declared public."""
        if self.allowed is None:
            return dict(values)
        return {key: value for key, value in values.items() if key in PUBLIC_BOOKKEEPING
                or self.allowed(key) or public_split and key.startswith(PUBLIC_EVAL_PREFIXES)}


RELEASE_POLICIES: dict[str, ReleasePolicy] = {
    "plain": ReleasePolicy("plain"),
    "dp-sgd": ReleasePolicy("dp-sgd", _dp_figure),
    "client-level-dp": ReleasePolicy("client-level-dp", _dp_figure),
}


# How an update leaves in another form than float32 deltas: encrypted (homomorphic encryption,
# `fedmirasol.client.he`) or compressed (`fedmirasol.client.compression`): (update, example
# count) -> the reply's arrays.
Seal = Callable[[NumpyState, int], ArrayRecord]


def release_policy(config: RunConfig) -> ReleasePolicy:
    if config.privacy.enabled:
        return RELEASE_POLICIES["dp-sgd"]
    if config.privacy.client_level:
        return RELEASE_POLICIES["client-level-dp"]
    return RELEASE_POLICIES["plain"]


def release_train(message: Message, config: RunConfig, partition_id: int, num_examples: int,
                  update: NumpyState | None, metrics: Mapping[str, Any],
                  seal: Seal | None = None) -> Message:
    """The train reply: ``metrics`` (``num-examples``, ``partition-id`` and the task's figures
    the policy allows) and ``arrays`` (the update, clipped to ``defense.norm-bound`` when set,
    or with `seal` what it encrypts or encodes it to; absent when there is none, e.g. a client
    whose DP budget is exhausted)."""
    released = {"num-examples": num_examples, "partition-id": partition_id,
                **release_policy(config).metrics(metrics)}
    content = RecordDict({"metrics": MetricRecord(released)})
    if update is not None:
        bound = config.defense.norm_bound
        if bound:
            update = clip_update(update, bound)[0]
        content["arrays"] = to_record(update) if seal is None else seal(update, num_examples)
    return Message(content=content, reply_to=message)


def release_exhausted(message: Message, partition_id: int, bookkeeping: Mapping[str, Any]
                      ) -> Message:
    """The reply of a client with nothing to contribute (its DP budget is spent): the
    partition id and the accountant's public bookkeeping, no update and no example count."""
    released = {"partition-id": partition_id,
                **{key: value for key, value in bookkeeping.items() if key.startswith("dp-")}}
    return Message(content=RecordDict({"metrics": MetricRecord(released)}), reply_to=message)


def release_evaluate(message: Message, config: RunConfig, partition_id: int,
                     metrics: Mapping[str, Any]) -> Message:
    public = config.site_privacy.eval_split == "public"
    released = {"partition-id": partition_id,
                **release_policy(config).evaluation(metrics, public)}
    return Message(content=RecordDict({"metrics": MetricRecord(released)}), reply_to=message)


def release_partition(message: Message, partition_id: int) -> Message:
    """The answer to the server's question which partition this node holds."""
    return Message(content=RecordDict({"metrics": MetricRecord({"partition-id": partition_id})}),
                   reply_to=message)
