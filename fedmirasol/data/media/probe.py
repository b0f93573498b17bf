"""What a media file holds: streams, codecs, sizes, rates and duration (`data inspect`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av

from fedmirasol.data.media.container import (
    check_complete,
    check_decoder,
    header_duration,
    open_media,
    video_stream,
)
from fedmirasol.data.media.errors import MediaError


@dataclass(frozen=True)
class MediaInfo:
    path: str
    duration: float  # seconds of video
    video_codec: str
    width: int
    height: int
    fps: float  # average frame rate
    frames: int  # decoded frames when verified, else the header's count (0 if unknown)
    audio_codec: str | None
    sample_rate: int | None
    channels: int | None

    def describe(self) -> str:
        audio = (
            f"{self.audio_codec} {self.sample_rate} Hz {self.channels} ch"
            if self.audio_codec
            else "no audio"
        )
        return (
            f"{self.duration:.2f} s, {self.video_codec} {self.width}x{self.height} "
            f"{self.fps:.3f} fps {self.frames} frames, {audio}"
        )


def probe_media(path: str | Path, verify: bool = True) -> MediaInfo:
    """Read the headers of `path`; with `verify`, decode every video frame to prove it decodes."""
    with open_media(path) as container:
        video = video_stream(container, path)
        audio = container.streams.audio[0] if container.streams.audio else None
        if audio is not None:
            check_decoder(audio, path)
        rate = float(video.average_rate or video.guessed_rate or 0)
        duration = header_duration(container, video) or 0.0
        frames = video.frames
        if verify:
            frames, decoded = _decode_all(container, video, path, rate)
            check_complete(path, decoded, duration or None)
            duration = decoded
        return MediaInfo(
            path=str(path),
            duration=duration,
            video_codec=video.codec_context.name,
            width=video.codec_context.width,
            height=video.codec_context.height,
            fps=rate,
            frames=frames,
            audio_codec=audio.codec_context.name if audio is not None else None,
            sample_rate=audio.codec_context.sample_rate if audio is not None else None,
            channels=audio.codec_context.channels if audio is not None else None,
        )


def _decode_all(container, video, path, rate: float) -> tuple[int, float]:
    """Count the decodable frames and measure the span their timestamps cover."""
    count, last_end, first = 0, 0.0, None
    try:
        for frame in container.decode(video):
            count += 1
            time = frame.time if frame.time is not None else count / (rate or 1.0)
            first = time if first is None else first
            step = float(frame.duration * frame.time_base) if frame.duration else 1.0 / (rate or 1.0)
            last_end = time + step
    except av.error.FFmpegError as error:
        raise MediaError(
            path, "decode-error", f"video does not decode after {count} frames ({error})"
        ) from error
    if count == 0:
        raise MediaError(path, "no-frames", "the video stream has no decodable frame")
    return count, last_end - (first or 0.0)
