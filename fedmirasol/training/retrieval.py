"""Metrics of embeddings: text-video retrieval (Recall@K, median rank) and a kNN probe."""

from __future__ import annotations

import torch

RECALL_AT = (1, 5, 10)


def first_relevant_rank(similarity: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """``Q`` 1-based rank of each query's best-scored relevant item among the ``Q x G``
    similarities: 1 + the non-relevant items scored at least as high (ties count against)."""
    if not bool(relevant.any(dim=1).all()):
        raise ValueError("every query needs at least one relevant item")
    best = similarity.masked_fill(~relevant, float("-inf")).max(dim=1, keepdim=True).values
    return 1 + ((similarity >= best) & ~relevant).sum(dim=1)


def rank_metrics(ranks: torch.Tensor, prefix: str) -> dict[str, float]:
    """Recall@1/5/10 (fraction of queries ranked within K) and the median rank."""
    metrics = {f"{prefix}_r{k}": float((ranks <= k).float().mean()) for k in RECALL_AT}
    metrics[f"{prefix}_median_rank"] = float(ranks.float().median())
    return metrics


def retrieval_metrics(similarity: torch.Tensor, relevant: torch.Tensor | None = None
                      ) -> dict[str, float]:
    """Video->text and text->video retrieval from a ``videos x texts`` similarity matrix.

    `relevant` (default: the diagonal) marks which texts belong to which video; a text query's
    relevant videos are the column's. Keys ``v2t_r1`` ... ``v2t_median_rank``, ``t2v_*``.
    """
    if relevant is None:
        if similarity.shape[0] != similarity.shape[1]:
            raise ValueError("a non-square similarity matrix needs `relevant`")
        relevant = torch.eye(len(similarity), dtype=torch.bool, device=similarity.device)
    return {**rank_metrics(first_relevant_rank(similarity, relevant), "v2t"),
            **rank_metrics(first_relevant_rank(similarity.T, relevant.T), "t2v")}


def knn_accuracy(features: torch.Tensor, labels: torch.Tensor, k: int = 20,
                 temperature: float = 0.07) -> float:
    """Leave-one-out weighted kNN accuracy (Wu et al. 2018): each sample takes the class of the
    largest sum of exp(cosine / temperature) over its k nearest other samples."""
    count = len(features)
    if count < 2:
        raise ValueError("a kNN probe needs at least 2 labelled samples")
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    similarity = (unit @ unit.T).fill_diagonal_(float("-inf"))
    top, index = similarity.topk(min(k, count - 1), dim=1)
    votes = torch.zeros(count, int(labels.max()) + 1)
    votes.scatter_add_(1, labels[index], (top / temperature).exp())
    return float((votes.argmax(dim=1) == labels).float().mean())
