"""The one error a media file can raise: it names the file and says what is wrong with it."""

from __future__ import annotations

from pathlib import Path

# Short, stable names for why a file could not be used; the skip counters are keyed by them.
REASONS = (
    "missing",  # no such file on disk
    "empty",  # zero bytes
    "not-media",  # no media container at all (text, random bytes)
    "corrupt",  # a media container that is truncated or damaged
    "no-video",  # a container without a video stream
    "unsupported-codec",  # the wheel's FFmpeg has no decoder for the stream's codec
    "decode-error",  # the container opens but its packets do not decode
    "no-frames",  # the video stream holds no decodable frame (in the requested span)
)


class MediaError(Exception):
    """A file that cannot become a training sample: ``str(error)`` is ``"PATH: reason"``."""

    def __init__(self, path: str | Path, kind: str, detail: str) -> None:
        if kind not in REASONS:
            raise ValueError(f"unknown media error kind {kind!r}; known: {', '.join(REASONS)}")
        self.path = str(path)
        self.kind = kind
        self.detail = detail
        super().__init__(f"{self.path}: {kind}: {detail}")

    def __reduce__(self):  # keep the three fields when sent between processes
        return (MediaError, (self.path, self.kind, self.detail))
