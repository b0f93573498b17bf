"""Dense evaluation: several clips per video, their class scores averaged per video."""

from __future__ import annotations

import torch
from torch import nn

from fedmirasol.data.batch import to_device
from fedmirasol.data.media.dataset import MediaClipDataset, media_loader
from fedmirasol.data.media.sampling import average_clip_predictions


@torch.no_grad()
def evaluate_dense(
    model: nn.Module,
    dataset: MediaClipDataset,
    batch_size: int = 16,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Video-level accuracy from the mean logits of each video's clips.

    Videos whose file was skipped as bad are left out (their items held another video's
    clips); ``skipped_files`` says how many.
    """
    model.eval()
    loader = media_loader(dataset, batch_size=batch_size, num_workers=num_workers)
    logits = torch.cat([model(to_device(batch, device)).logits.float().cpu() for batch in loader])
    videos, mean = average_clip_predictions(logits, dataset.video_ids())
    labels = torch.from_numpy(dataset.labels)[videos]
    keep = (labels >= 0) & ~dataset.failed_mask()[videos]
    if not bool(keep.any()):
        raise ValueError("dense evaluation found no labelled video that decodes")
    correct = (mean[keep].argmax(dim=-1) == labels[keep]).float()
    return {
        "accuracy": float(correct.mean()),
        "num_videos": float(keep.sum()),
        "clips_per_video": float(dataset.clips_per_video),
        "skipped_files": float(dataset.skipped_count()),
    }
