"""`data synth`: the synthetic audio-visual task written as real mp4 files plus a manifest."""

from __future__ import annotations

from pathlib import Path

from fedmirasol.data.media.manifest import ClipRecord, write_manifest
from fedmirasol.data.media.writer import write_media_file
from fedmirasol.data.synthetic import DomainShift, SyntheticAVDataset, SyntheticConfig
from fedmirasol.models.config import MirasolConfig


def write_synthetic_media(
    out_dir: str | Path,
    num_clips: int,
    model_config: MirasolConfig,
    seed: int = 0,
    sites: int = 0,
    domain_shift: float = 0.0,
) -> Path:
    """Write clips ``clips/clip_<i>.mp4`` (h264 + aac) and ``manifest.csv``; return the manifest.

    With `sites` > 0, clip i belongs to site ``i % sites`` (the manifest's site column), and
    each site records through its own `DomainShift` of strength `domain_shift`.
    """
    out_dir = Path(out_dir)
    config = SyntheticConfig.for_model(model_config)
    groups = max(sites, 1)
    datasets = [
        SyntheticAVDataset(
            config,
            num_clips,
            seed,
            domain=DomainShift.random(seed * 1009 + site, strength=domain_shift) if sites else None,
        )
        for site in range(groups)
    ]
    records = []
    for index in range(num_clips):
        site = index % groups
        clip = datasets[site].render_clip(index)
        relative = Path("clips") / f"clip_{index:05d}.mp4"
        write_media_file(out_dir / relative, clip.frames, clip.fps, clip.audio, clip.sample_rate)
        records.append(
            ClipRecord(
                path=str(relative),
                label=clip.label,
                caption=clip.caption,
                site=str(site) if sites else None,
            )
        )
    return write_manifest(records, out_dir / "manifest.csv")
