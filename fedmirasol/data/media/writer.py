"""Write frames and audio into a real media file with PyAV (tests and `data synth` use it)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

# Default codecs per container, all built into the PyAV wheel's FFmpeg.
CODECS_BY_SUFFIX = {
    ".mp4": ("libx264", "aac"),
    ".mov": ("libx264", "aac"),
    ".mkv": ("libx264", "aac"),
    ".webm": ("libvpx-vp9", "libopus"),
}
AUDIO_FRAME = 1024  # samples per audio frame handed to the encoder
VFR_TIME_BASE = Fraction(1, 1000)  # timestamps of variable-frame-rate video, in seconds


def _rate(fps: float | Fraction) -> Fraction:
    """30 -> 30/1, 29.97 -> 30000/1001 (the NTSC rates), 12.5 -> 25/2."""
    if isinstance(fps, Fraction):
        return fps
    ntsc = round(fps * 1.001)
    if abs(fps - round(fps)) > 1e-6 and abs(fps - ntsc * 1000 / 1001) < 1e-3:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(fps).limit_denominator(1000)


def write_media_file(
    path: str | Path,
    frames: np.ndarray | None,
    fps: float | Fraction,
    audio: np.ndarray | None = None,
    sample_rate: int = 16_000,
    video_codec: str | None = None,
    audio_codec: str | None = None,
    crf: int = 18,
    frame_times: Sequence[float] | None = None,
) -> Path:
    """Encode `frames` (uint8 N x H x W x 3, even H and W) at `fps` and `audio`.

    `audio` is float32 in [-1, 1], shaped ``M`` (mono) or ``C x M``. Either may be None (but
    not both). Codecs default from the suffix (mp4/mov/mkv: h264 + aac, webm: vp9 + opus).
    `frame_times` (seconds, increasing) gives each frame its own timestamp: variable frame rate.
    """
    path = Path(path)
    default_video, default_audio = CODECS_BY_SUFFIX.get(path.suffix.lower(), ("libx264", "aac"))
    if frames is None and audio is None:
        raise ValueError("write_media_file needs frames, audio or both")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        video_stream = audio_stream = None
        if frames is not None:
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
                raise ValueError(
                    f"frames must be uint8 N x H x W x 3, got {frames.dtype} {frames.shape}"
                )
            video_stream = container.add_stream(video_codec or default_video, rate=_rate(fps))
            video_stream.height, video_stream.width = frames.shape[1:3]
            video_stream.pix_fmt = "yuv420p"
            if (video_codec or default_video) == "libx264":
                video_stream.options = {"crf": str(crf)}
            if frame_times is not None:
                if len(frame_times) != len(frames):
                    raise ValueError(f"{len(frame_times)} frame times for {len(frames)} frames")
                video_stream.codec_context.time_base = VFR_TIME_BASE
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
            layout = {1: "mono", 2: "stereo"}[audio.shape[0]]
            audio_stream = container.add_stream(
                audio_codec or default_audio, rate=sample_rate, layout=layout
            )
        if video_stream is not None:
            for index, pixels in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                if frame_times is not None:
                    frame.pts, frame.time_base = round(frame_times[index] / VFR_TIME_BASE), VFR_TIME_BASE
                container.mux(video_stream.encode(frame))
            container.mux(video_stream.encode())
        if audio_stream is not None:
            for start in range(0, audio.shape[1], AUDIO_FRAME):
                chunk = np.ascontiguousarray(audio[:, start : start + AUDIO_FRAME])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
                frame.sample_rate = sample_rate
                frame.pts = start
                frame.time_base = Fraction(1, sample_rate)
                container.mux(audio_stream.encode(frame))
            container.mux(audio_stream.encode())
    return path
