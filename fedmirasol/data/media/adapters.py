"""Read two common dataset layouts into clip records.

- VGGSound: a header-less CSV of ``youtube_id,start_seconds,label,split`` rows, next to a
  folder of downloaded videos. A 10 s clip file is named ``{id}_{start:06d}.{ext}`` (the
  common download scripts' naming) or ``{id}_{start*1000}_{(start+10)*1000}.{ext}`` (AudioSet
  naming); a full video ``{id}.{ext}`` is cut to ``[start, start + 10)``.
- A folder per class (UCF101, Kinetics, HMDB): ``root/<class>/<video>``; classes are numbered in
  sorted order.

Rows whose video is not on disk are kept (with the path they would have) so `data inspect`
reports them and training skips and counts them, unless ``drop_missing`` is set.
"""

from __future__ import annotations

import csv
from pathlib import Path

from fedmirasol.data.media.manifest import ClipRecord
from fedmirasol.errors import ConfigError

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ogv")
VGGSOUND_CLIP_SECONDS = 10.0


def read_vggsound(
    csv_path: str | Path, video_dir: str | Path, split: str | None = None, drop_missing: bool = False
) -> list[ClipRecord]:
    """Records for the rows of a VGGSound CSV (only `split`'s rows when given)."""
    csv_path, video_dir = Path(csv_path), Path(video_dir)
    rows = []
    with open(csv_path, newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row or (line == 1 and not _is_number(row[1] if len(row) > 1 else "")):
                continue  # blank line or a header
            if len(row) < 4:
                raise ConfigError(
                    f"{csv_path}:{line}: expected youtube_id,start_seconds,label,split; got {row}"
                )
            rows.append((row[0].strip(), int(float(row[1])), row[2].strip(), row[3].strip()))
    names = {name: index for index, name in enumerate(sorted({label for _, _, label, _ in rows}))}
    files = _index_videos(video_dir)
    records = []
    for video_id, start, label, row_split in rows:
        if split is not None and row_split != split:
            continue
        path, whole = _find_vggsound_file(files, video_dir, video_id, start)
        if drop_missing and not path.exists():
            continue
        records.append(
            ClipRecord(
                path=str(path),
                start=float(start) if whole else None,
                end=float(start) + VGGSOUND_CLIP_SECONDS if whole else None,
                label=names[label],
                label_name=label,
                caption=label,
                split=row_split,
            )
        )
    return records


def read_class_folders(root: str | Path, drop_missing: bool = False) -> list[ClipRecord]:
    """Records for ``root/<class>/<video>`` (videos found recursively under each class)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"class-folder root {root} is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ConfigError(f"{root}: no class folders in it")
    records = []
    for index, name in enumerate(classes):
        for video in sorted((root / name).rglob("*")):
            if video.suffix.lower() in VIDEO_SUFFIXES and video.is_file():
                records.append(
                    ClipRecord(path=str(video.resolve()), label=index, label_name=name, caption=name)
                )
    return records


def _index_videos(video_dir: Path) -> dict[str, Path]:
    """File stem -> path for the videos in `video_dir`."""
    if not video_dir.is_dir():
        return {}
    return {p.stem: p for p in video_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES}


def _find_vggsound_file(
    files: dict[str, Path], video_dir: Path, video_id: str, start: int
) -> tuple[Path, bool]:
    """(path, whether it is the full video that still needs cutting)."""
    end = start + int(VGGSOUND_CLIP_SECONDS)
    for stem in (
        f"{video_id}_{start:06d}",
        f"{video_id}_{start * 1000}_{end * 1000}",
        f"{video_id}_{start}",
    ):
        if stem in files:
            return files[stem], False
    if video_id in files:
        return files[video_id], True
    return video_dir / f"{video_id}_{start:06d}.mp4", False


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
