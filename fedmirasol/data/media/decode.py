"""Decode a file onto the model's frame grid, with its audio at 16 kHz mono, using PyAV.

Frames are picked by presentation timestamp: slot ``k`` of the grid is the frame on screen at
``start + (k + 0.5) / fps`` (the last frame whose pts is at or before that time), so variable
and odd frame rates (29.97, 12.5 fps) land the frames a player would show. Audio is placed by
its own timestamps, so sample ``i`` of the result is the sound at ``start + i / sample_rate``
and any run of slots ``[a, b)`` matches the samples ``[a, b) * sample_rate / fps`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from fedmirasol.data.media.container import (
    check_complete,
    check_decoder,
    header_duration,
    open_media,
    video_stream,
)
from fedmirasol.data.media.errors import MediaError
from fedmirasol.data.media.transforms import resized_shape

SEEK_MARGIN = 1.0  # seconds: seek only when the span starts later than this


@dataclass(frozen=True)
class DecodeSettings:
    """What a decode depends on besides the file (also part of the cache key)."""

    fps: float
    image_size: int  # short side after resizing
    sample_rate: int = 16_000
    start: float = 0.0  # seconds into the file
    end: float | None = None  # seconds into the file, or the end of the video


@dataclass
class DecodedMedia:
    """A file's span on the model's grid."""

    frames: np.ndarray  # uint8 K x h x w x 3; slot k is shown at start + (k + 0.5) / fps
    frame_times: np.ndarray  # float64 K: the source pts (seconds) of the frame in each slot
    audio: np.ndarray | None  # float32 samples from `start`, at least K / fps seconds; None: no audio
    fps: float
    sample_rate: int

    @property
    def num_slots(self) -> int:
        return len(self.frames)


def decode_media(
    path: str | Path, settings: DecodeSettings, audio_path: str | Path | None = None
) -> DecodedMedia:
    """Decode `path` (and its audio, or the audio of `audio_path`) into a `DecodedMedia`."""
    path = Path(path)
    with open_media(path) as container:
        video = video_stream(container, path)
        audio = None
        if audio_path is None and container.streams.audio:
            audio = container.streams.audio[0]
            check_decoder(audio, path)
        _seek(container, settings.start)
        frames, times, audio_chunks = _pick_frames(container, video, audio, settings, path)
    if audio_path is not None:
        audio_chunks = _decode_audio_file(Path(audio_path), settings)
    num_slots = len(frames)
    samples = None
    if audio_chunks is not None:
        samples = _place_audio(audio_chunks, settings, num_slots)
    return DecodedMedia(
        frames=np.stack(frames),
        frame_times=np.asarray(times, dtype=np.float64),
        audio=samples,
        fps=settings.fps,
        sample_rate=settings.sample_rate,
    )


def _seek(container: av.container.InputContainer, start: float) -> None:
    """Jump to the keyframe before `start`; decoding then runs forward to it."""
    if start > SEEK_MARGIN:
        container.seek(int((start - SEEK_MARGIN) * av.time_base), backward=True, any_frame=False)


class _Grid:
    """Fills grid slots from frames arriving in presentation order."""

    def __init__(self, settings: DecodeSettings, size: tuple[int, int]) -> None:
        self.settings, self.size = settings, size
        self.frames: list[np.ndarray] = []
        self.times: list[float] = []
        self.shown: list | None = None  # [time, rgb array or None, av frame] on screen now

    def slot_time(self, k: int) -> float:
        return self.settings.start + (k + 0.5) / self.settings.fps

    def add(self, frame: av.VideoFrame, time: float) -> None:
        """`frame` appears at `time`: the frame shown so far fills the slots before it."""
        late_first = self.shown is None and time > self.slot_time(0)
        if late_first:  # the first frame comes after slot 0: it is what shows before it, too
            self.shown = [time, None, frame]
        self.fill_until(time)
        if not late_first:
            self.shown = [time, None, frame]

    def fill_until(self, time: float) -> None:
        """Fill every slot before `time` (and before the span's end) with the frame on screen."""
        end = self.settings.end
        while (
            self.shown is not None
            and self.slot_time(len(self.frames)) < time
            and (end is None or self.slot_time(len(self.frames)) < end)
        ):
            self.append_shown()

    def append_shown(self) -> None:
        """Put the frame on screen in the next slot (resized with an area filter and converted
        to RGB once, however many slots it fills)."""
        if self.shown[1] is None:
            width, height = self.size
            self.shown[1] = self.shown[2].to_ndarray(
                format="rgb24", width=width, height=height, interpolation="AREA"
            )
            self.shown[2] = None
        self.frames.append(self.shown[1])
        self.times.append(self.shown[0])


class _AudioCollector:
    """Resampled 16 kHz mono chunks with their start times."""

    def __init__(self, settings: DecodeSettings) -> None:
        self.end = settings.end
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=settings.sample_rate)
        self.chunks: list[tuple[float | None, np.ndarray]] = []
        self.done = False

    def add(self, frame: av.AudioFrame) -> None:
        for out in self.resampler.resample(frame):
            self.chunks.append((_time(out, frame), out.to_ndarray().reshape(-1)))
        self.done = self.end is not None and frame.time is not None and frame.time >= self.end

    def flush(self) -> None:
        if not self.done:
            self.chunks.extend(
                (None, out.to_ndarray().reshape(-1)) for out in self.resampler.resample(None)
            )


def _pick_frames(container, video, audio, settings: DecodeSettings, path: Path):
    """One pass over the packets: grid frames from the video, resampled chunks from the audio."""
    grid = _Grid(
        settings,
        resized_shape(video.codec_context.width, video.codec_context.height, settings.image_size),
    )
    collector = _AudioCollector(settings) if audio is not None else None
    video_done, video_end = False, 0.0
    try:
        for frame in container.decode(*[s for s in (video, audio) if s is not None]):
            if isinstance(frame, av.AudioFrame):
                if not collector.done:
                    collector.add(frame)
            elif not video_done:
                time = frame.time if frame.time is not None else video_end
                grid.add(frame, time)
                video_end = time + _frame_step(frame, video, settings.fps)
                video_done = settings.end is not None and time >= settings.end
            if video_done and (collector is None or collector.done):
                break
        if collector is not None:
            collector.flush()
    except av.error.FFmpegError as error:
        raise MediaError(
            path, "decode-error", f"decoding failed after {len(grid.frames)} grid frames ({error})"
        ) from error
    if grid.shown is None:
        raise MediaError(path, "no-frames", f"no decodable video frame from {settings.start:.2f} s")
    check_complete(path, video_end, header_duration(container, video), settings.end)
    grid.fill_until(video_end)  # the last frame stays on screen for its duration
    if not grid.frames:  # a span shorter than half a slot (a one-frame video) still gives one
        grid.append_shown()
    return grid.frames, grid.times, collector.chunks if collector is not None else None


def _frame_step(frame: av.VideoFrame, video, fps: float) -> float:
    """How long `frame` stays on screen."""
    if frame.duration and frame.time_base is not None:
        return float(frame.duration * frame.time_base)
    rate = video.average_rate or video.guessed_rate
    return 1.0 / float(rate) if rate else 1.0 / fps


def _time(out: av.AudioFrame, source: av.AudioFrame) -> float | None:
    """Start time of a resampled chunk (the resampler keeps pts in 1/rate units)."""
    if out.pts is not None and out.time_base is not None:
        return float(out.pts * out.time_base)
    return source.time


def _decode_audio_file(path: Path, settings: DecodeSettings) -> list[tuple[float | None, np.ndarray]]:
    """The audio track of a separate file, from shortly before `settings.start`."""
    with open_media(path) as container:
        if not container.streams.audio:
            raise MediaError(path, "no-frames", "the separate audio file has no audio stream")
        stream = container.streams.audio[0]
        check_decoder(stream, path)
        _seek(container, settings.start)
        collector = _AudioCollector(settings)
        try:
            for frame in container.decode(stream):
                collector.add(frame)
                if collector.done:
                    break
            collector.flush()
        except av.error.FFmpegError as error:
            raise MediaError(path, "decode-error", f"audio does not decode ({error})") from error
    return collector.chunks


def _place_audio(
    chunks: list[tuple[float | None, np.ndarray]], settings: DecodeSettings, num_slots: int
) -> np.ndarray:
    """Samples from `settings.start`, covering `num_slots` grid slots (zeros past the track's end)."""
    rate = settings.sample_rate
    needed = round(num_slots * rate / settings.fps)
    out = np.zeros(needed, dtype=np.float32)
    first = next((t for t, _ in chunks if t is not None), settings.start)
    cursor = round((first - settings.start) * rate)  # where the decoded audio begins
    for _, data in chunks:
        lo, hi = max(cursor, 0), min(cursor + len(data), needed)
        if hi > lo:
            out[lo:hi] = data[lo - cursor : hi - cursor]
        cursor += len(data)
    return out
