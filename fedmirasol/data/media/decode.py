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

from fedmirasol.data.media.container import check_complete, check_decoder, header_duration, open_media, video_stream
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


def decode_media(path: str | Path, settings: DecodeSettings, audio_path: str | Path | None = None) -> DecodedMedia:
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


def _pick_frames(container, video, audio, settings: DecodeSettings, path: Path):
    """One pass over the packets: grid frames from the video, raw chunks from the audio."""
    fps, start, end = settings.fps, settings.start, settings.end
    frames: list[np.ndarray] = []
    times: list[float] = []
    audio_chunks: list[tuple[float, np.ndarray]] | None = [] if audio is not None else None
    resampler = av.AudioResampler(format="flt", layout="mono", rate=settings.sample_rate)
    size = resized_shape(video.codec_context.width, video.codec_context.height, settings.image_size)
    previous = None  # (time, rgb array or None, frame) of the frame on screen
    video_done = False
    video_end = 0.0
    audio_done = audio is None
    slot = lambda k: start + (k + 0.5) / fps  # noqa: E731

    def rgb(entry):
        if entry[1] is None:
            entry[1] = entry[2].to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation="AREA")
            entry[2] = None  # free the decoded frame
        return entry[1]

    streams = [video] + ([audio] if audio is not None else [])
    try:
        for frame in container.decode(*streams):
            if isinstance(frame, av.AudioFrame):
                if audio_done:
                    continue
                for out in resampler.resample(frame):
                    audio_chunks.append((_time(out, frame), out.to_ndarray().reshape(-1)))
                if end is not None and frame.time is not None and frame.time >= end:
                    audio_done = True
            else:
                if video_done:
                    continue
                time = frame.time if frame.time is not None else (previous[0] + 1.0 / fps if previous else 0.0)
                if previous is None and time > slot(0):
                    # The first frame comes late: it is what is on screen before it, too.
                    previous = [time, None, frame]
                while previous is not None and slot(len(frames)) < time and (end is None or slot(len(frames)) < end):
                    frames.append(rgb(previous))
                    times.append(previous[0])
                previous = [time, None, frame]
                video_end = time + _frame_step(frame, video, fps)
                if end is not None and time >= end:
                    video_done = True
            if video_done and audio_done:
                break
        if audio_chunks is not None and not audio_done:
            for out in resampler.resample(None):
                audio_chunks.append((None, out.to_ndarray().reshape(-1)))
    except av.error.FFmpegError as error:
        raise MediaError(path, "decode-error", f"decoding failed after {len(frames)} grid frames ({error})") from error
    if previous is None:
        raise MediaError(path, "no-frames", f"no decodable video frame from {start:.2f} s")
    check_complete(path, video_end, header_duration(container, video), end)
    stop = video_end if end is None else min(video_end, end)
    while slot(len(frames)) < stop or not frames:
        frames.append(rgb(previous))
        times.append(previous[0])
    return frames, times, audio_chunks


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
        resampler = av.AudioResampler(format="flt", layout="mono", rate=settings.sample_rate)
        chunks: list[tuple[float | None, np.ndarray]] = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append((_time(out, frame), out.to_ndarray().reshape(-1)))
                if settings.end is not None and frame.time is not None and frame.time >= settings.end:
                    break
            for out in resampler.resample(None):
                chunks.append((None, out.to_ndarray().reshape(-1)))
        except av.error.FFmpegError as error:
            raise MediaError(path, "decode-error", f"audio does not decode ({error})") from error
    return chunks


def _place_audio(chunks: list[tuple[float | None, np.ndarray]], settings: DecodeSettings, num_slots: int) -> np.ndarray:
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

