"""What a DP run's round record (metrics.jsonl) holds about the clients' data.

Under DP-SGD the clients release only noised sums, so the round's figures are ratios of
noised sums over the clients that replied: the train loss (noised sum of clipped losses over
the noised count), the federated accuracy and loss (noised correct answers and clipped losses
over the noised count) and the personalized/adapted accuracies. Clients whose site declared its
validation split public add their clear figures to the same sums; means over clients exist
only when every evaluating client's split is public. ``privacy_figures`` says
which fields are noised and which clients' figures came in the clear.

Under client-level DP (without ``privacy.keep-client-rows``) the record keeps aggregates only:
how many clients were drawn and took part, not who; no per-client rows; rejections by reason.
"""

from __future__ import annotations

from typing import Any, Mapping

from fedmirasol.privacy.dp_metrics import ratio

Rows = Mapping[int, Mapping[str, float]]


def _pooled(rows: Rows, correct: str, public_accuracy: str) -> tuple[float, float]:
    """(sum of correct answers, sum of counts) over noised and public-split rows."""
    hits = count = 0.0
    for row in rows.values():
        if "dp-eval-count-noised" in row and correct in row:
            hits += row[correct]
            count += row["dp-eval-count-noised"]
        elif public_accuracy in row and "num-examples" in row:
            hits += row[public_accuracy] * row["num-examples"]
            count += row["num-examples"]
    return hits, count


def dp_round_figures(train_rows: Rows, eval_rows: Rows) -> dict[str, Any]:
    """The round's figures from the noised sums (None where nothing was released). Without
    per-client evaluation rows (a secure evaluation's sums) its fields are left as they are."""
    figures: dict[str, Any] = {
        "train_loss": ratio(list(train_rows.values()), "dp-loss-sum-noised", "dp-count-noised")}
    if not eval_rows:
        return {**figures, "privacy_figures": {
            "noised": ["train_loss"] if figures["train_loss"] is not None else [],
            "clear-from-public-split": []}}
    for field, correct, clear in (
            ("federated_accuracy", "dp-eval-correct-noised", "val-accuracy"),
            ("personal_accuracy", "dp-eval-personal-correct-noised", "personal-accuracy"),
            ("adapted_accuracy", "dp-eval-adapted-correct-noised", "adapted-accuracy")):
        hits, count = _pooled(eval_rows, correct, clear)
        if count > 0 or field == "federated_accuracy":
            figures[field] = min(1.0, max(0.0, hits / count)) if count > 0 else None
    losses, count = 0.0, 0.0
    for row in eval_rows.values():
        if "dp-eval-loss-sum-noised" in row:
            losses += row["dp-eval-loss-sum-noised"]
            count += row["dp-eval-count-noised"]
        elif "val-loss" in row and "num-examples" in row:
            losses += row["val-loss"] * row["num-examples"]
            count += row["num-examples"]
    figures["federated_loss"] = losses / count if count > 0 else None
    noised = [field for field in figures if figures[field] is not None]
    public = sorted(pid for pid, row in eval_rows.items() if "eval-split-public" in row)
    figures.update(_client_means(eval_rows, all_public=len(public) == len(eval_rows)))
    figures.update(privacy_figures={
        "noised": noised if any(_has_noised(r) for r in (*train_rows.values(),
                                                          *eval_rows.values())) else [],
        "clear-from-public-split": public})
    return figures


def _client_means(eval_rows: Rows, *, all_public: bool) -> dict[str, float | None]:
    """Means over clients of the clear accuracies, only when every evaluating client's site
    declared its split public (a noised client has no figure of its own to average; a mean
    over the public ones only would describe other clients than the pooled figures do)."""
    means: dict[str, float | None] = {}
    for field, clear in (("federated_accuracy_client_mean", "val-accuracy"),
                         ("personal_accuracy_client_mean", "personal-accuracy"),
                         ("adapted_accuracy_client_mean", "adapted-accuracy")):
        values = [row[clear] for row in eval_rows.values() if clear in row]
        if field == "federated_accuracy_client_mean" or values:
            means[field] = (sum(values) / len(values)
                            if all_public and values and len(values) == len(eval_rows) else None)
    return means


def _has_noised(row: Mapping[str, float]) -> bool:
    return any(key.endswith("-noised") for key in row)


def aggregates_only(record: Mapping[str, Any]) -> dict[str, Any]:
    """`record` without who was drawn or took part: counts instead of lists, no per-client
    rows, rejections by reason only."""
    kept = {key: value for key, value in record.items() if key != "clients"}
    for key in ("sampled", "participants"):
        if isinstance(record.get(key), list):
            kept[key] = len(record[key])
    for key in ("rejected", "evaluate_rejected"):
        if isinstance(record.get(key), list):
            kept[key] = [{"reason": item["reason"]} for item in record[key]]
    return kept
