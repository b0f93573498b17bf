"""`data inspect`: check every file of a manifest and total what it holds."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from fedmirasol.data.media.container import check_decoder, open_media
from fedmirasol.data.media.errors import MediaError
from fedmirasol.data.media.manifest import ClipRecord
from fedmirasol.data.media.probe import MediaInfo, probe_media


@dataclass
class InspectTotals:
    ok: int = 0
    failed: Counter = field(default_factory=Counter)  # reason -> files
    seconds: float = 0.0
    streams: Counter = field(
        default_factory=Counter
    )  # "video h264", "audio aac 44100 Hz 2 ch", "no audio"
    labels: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        total = self.ok + sum(self.failed.values())
        failed = ", ".join(f"{k} {v}" for k, v in sorted(self.failed.items())) or "none"
        mean = self.seconds / self.ok if self.ok else 0.0
        return [
            f"files: {total}, ok: {self.ok}, failed: {sum(self.failed.values())} ({failed})",
            f"duration: {self.seconds:.1f} s in all, {mean:.2f} s per ok file",
            "streams: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.streams.items())),
            "labels: "
            + ", ".join(f"{k} x{v}" for k, v in sorted(self.labels.items(), key=lambda kv: str(kv[0]))),
        ]


def inspect_records(
    records: list[ClipRecord], verify: bool = True, emit: Callable[[str], None] = print
) -> InspectTotals:
    """Emit one line per file (``ok`` with what it holds, or ``error`` and why); return totals."""
    totals = InspectTotals()
    for record in records:
        try:
            info = probe_media(record.path, verify=verify)
            if record.audio_path:
                audio = probe_audio(record.audio_path)
        except MediaError as error:
            totals.failed[error.kind] += 1
            emit(f"error {error}")
            continue
        totals.ok += 1
        totals.seconds += _span(info, record)
        totals.streams[f"video {info.video_codec}"] += 1
        if record.audio_path:
            totals.streams[f"audio {audio} (separate file)"] += 1
        elif info.audio_codec:
            totals.streams[f"audio {info.audio_codec} {info.sample_rate} Hz {info.channels} ch"] += 1
        else:
            totals.streams["no audio"] += 1
        totals.labels[record.label_name or (record.label if record.label >= 0 else "unlabelled")] += 1
        emit(f"ok    {record.path}: {info.describe()}")
    return totals


def probe_audio(path: str) -> str:
    """'codec rate Hz ch' of a separate audio file (raises `MediaError`)."""
    with open_media(path) as container:
        if not container.streams.audio:
            raise MediaError(path, "no-frames", "the separate audio file has no audio stream")
        context = container.streams.audio[0].codec_context
        check_decoder(container.streams.audio[0], path)
        return f"{context.name} {context.sample_rate} Hz {context.channels} ch"


def _span(info: MediaInfo, record: ClipRecord) -> float:
    end = info.duration if record.end is None else min(record.end, info.duration)
    return max(end - (record.start or 0.0), 0.0)
