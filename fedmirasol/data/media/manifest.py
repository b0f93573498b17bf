"""Clip manifests: CSV or JSON Lines, one clip per row.

Columns (only ``path`` is required):

- ``path``: the video file; relative paths are relative to the manifest's folder.
- ``audio_path``: a separate audio file, used instead of the video's own audio track.
- ``start`` / ``end``: seconds into the file (the whole file when absent).
- ``label``: a class index, or a class name (names are numbered in sorted order, per manifest;
  `write_manifest` writes indices plus ``label_name`` so partitions agree on the numbering).
- ``label_name``, ``caption``, ``site`` (site or client id), ``split`` (train / val / test).
- ``question`` and ``answer``: a question about the clip and its answer, for video QA (the text
  decoder reads the question and is trained to generate the answer); both or neither.
- ``user`` / ``video``: who or what the clip comes from; clips that share one (``user``, else
  ``video``) are one unit of user-level DP (``privacy.unit = "user"``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from fedmirasol.errors import ConfigError

COLUMNS = ("path", "audio_path", "start", "end", "label", "label_name", "caption", "site", "split",
           "question", "answer", "user", "video")


@dataclass(frozen=True)
class ClipRecord:
    path: str
    audio_path: str | None = None
    start: float | None = None
    end: float | None = None
    label: int = -1
    label_name: str | None = None
    caption: str | None = None
    site: str | None = None
    split: str | None = None
    question: str | None = None
    answer: str | None = None
    user: str | None = None
    video: str | None = None

    @property
    def owner(self) -> str | None:
        """The unit of user-level DP this clip belongs to (its user, else its video)."""
        return self.user or self.video


def read_manifest(manifest: str | Path) -> list[ClipRecord]:
    """Read a ``.csv`` or ``.jsonl`` manifest; bad rows raise ValueError naming file and line."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} does not exist")
    rows = list(_rows(manifest))
    if not rows:
        raise ConfigError(f"{manifest}: the manifest lists no clips")
    names = _label_names(rows)
    return [_record(row, manifest, line, names) for line, row in rows]


def write_manifest(records: Iterable[ClipRecord], manifest: str | Path) -> Path:
    """Write records as CSV or JSON Lines (by suffix), keeping only columns someone uses."""
    manifest = Path(manifest)
    records = list(records)
    used = [c for c in COLUMNS if c == "path" or any(getattr(r, c) not in (None, -1) for r in records)]
    if "label_name" in used and "label" not in used:
        used.insert(used.index("label_name"), "label")
    manifest.parent.mkdir(parents=True, exist_ok=True)
    values = [{c: getattr(r, c) for c in used} for r in records]
    if manifest.suffix.lower() == ".jsonl":
        manifest.write_text(
            "".join(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n" for row in values)
        )
    else:
        with open(manifest, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=used)
            writer.writeheader()
            writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in values)
    return manifest


def label_names(records: Sequence[ClipRecord]) -> dict[int, str]:
    """Class index -> name, for the records that carry a name."""
    return {r.label: r.label_name for r in records if r.label >= 0 and r.label_name}


def _rows(manifest: Path) -> Iterable[tuple[int, dict]]:
    if manifest.suffix.lower() == ".jsonl":
        for line, text in enumerate(manifest.read_text().splitlines(), start=1):
            if text.strip():
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as error:
                    raise ConfigError(f"{manifest}:{line}: not valid JSON ({error})") from error
                yield line, row
        return
    with open(manifest, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ConfigError(f"{manifest}: a CSV manifest needs a header with a 'path' column")
        for line, row in enumerate(reader, start=2):
            yield line, row


def _label_names(rows: list[tuple[int, dict]]) -> dict[str, int]:
    """Numbering for labels given as names (empty when every label is an index)."""
    names = {str(row.get("label")).strip() for _, row in rows if _blank(row.get("label")) is not None}
    if all(_is_int(name) for name in names):
        return {}
    return {name: index for index, name in enumerate(sorted(names))}


def _record(row: dict, manifest: Path, line: int, names: dict[str, int]) -> ClipRecord:
    where = f"{manifest}:{line}"
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ConfigError(f"{where}: unknown columns {sorted(unknown)}; known: {', '.join(COLUMNS)}")
    path = _blank(row.get("path"))
    if path is None:
        raise ConfigError(f"{where}: the path is empty")
    label, label_name = -1, _blank(row.get("label_name"))
    raw = _blank(row.get("label"))
    if raw is not None:
        if names:
            label, label_name = names[str(raw)], label_name or str(raw)
        else:
            label = int(raw)
    start, end = _seconds(row.get("start"), where, "start"), _seconds(row.get("end"), where, "end")
    if start is not None and end is not None and end <= start:
        raise ConfigError(f"{where}: end {end} is not after start {start}")
    audio = _blank(row.get("audio_path"))
    question, answer = _blank(row.get("question")), _blank(row.get("answer"))
    if (question is None) != (answer is None):
        raise ConfigError(f"{where}: a question needs an answer and an answer a question "
                          f"(question {question!r}, answer {answer!r})")
    return ClipRecord(
        path=str(_resolve(path, manifest)),
        audio_path=str(_resolve(audio, manifest)) if audio else None,
        start=start,
        end=end,
        label=label,
        label_name=label_name,
        caption=_blank(row.get("caption")),
        site=_blank(row.get("site")),
        split=_blank(row.get("split")),
        question=question,
        answer=answer,
        user=_blank(row.get("user")),
        video=_blank(row.get("video")),
    )


def _resolve(path: str, manifest: Path) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else (manifest.parent / candidate).resolve()


def _seconds(value, where: str, name: str) -> float | None:
    value = _blank(value)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError as error:
        raise ConfigError(f"{where}: {name} {value!r} is not a number of seconds") from error
    if seconds < 0:
        raise ConfigError(f"{where}: {name} {seconds} is negative")
    return seconds


def _blank(value) -> str | None:
    """None for missing or empty cells, else the value as stripped text."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
