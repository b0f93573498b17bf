"""Open a media file with PyAV, turning every way it can fail into a `MediaError`."""

from __future__ import annotations

from pathlib import Path

import av

from fedmirasol.data.media.errors import MediaError


def open_media(path: str | Path) -> av.container.InputContainer:
    """Open `path` for reading; missing, empty and non-media files raise `MediaError`."""
    path = Path(path)
    if not path.exists():
        raise MediaError(path, "missing", "no such file")
    if not path.is_file():
        raise MediaError(path, "missing", "not a regular file")
    if path.stat().st_size == 0:
        raise MediaError(path, "empty", "the file has zero bytes")
    try:
        return av.open(str(path), mode="r")
    except av.error.FFmpegError as error:
        reason = _ffmpeg_reason(error)
        if _has_media_signature(path):
            raise MediaError(
                path, "corrupt", f"truncated or damaged container: FFmpeg says {reason!r}"
            ) from error
        raise MediaError(path, "not-media", f"not a media file: FFmpeg says {reason!r}") from error


def video_stream(
    container: av.container.InputContainer, path: str | Path
) -> av.video.stream.VideoStream:
    """The container's first video stream, checked to have a decoder."""
    # Cover art (an attached picture) is a video stream too, but it is no video.
    streams = [
        s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
    ]
    if not streams:
        raise MediaError(path, "no-video", "the file has no video stream")
    check_decoder(streams[0], path)
    return streams[0]


def check_decoder(stream: av.stream.Stream, path: str | Path) -> None:
    """Raise `unsupported-codec` when the wheel's FFmpeg cannot decode `stream`."""
    context = stream.codec_context
    if context is None or context.codec is None:
        raise MediaError(
            path, "unsupported-codec", f"no decoder for {stream.type} stream {stream.index}"
        )
    try:
        av.codec.Codec(context.codec.name, "r")
    except Exception as error:  # av raises UnknownCodecError or ValueError by version
        raise MediaError(
            path, "unsupported-codec", f"no decoder for {stream.type} codec {context.codec.name!r}"
        ) from error


def header_duration(
    container: av.container.InputContainer, video: av.video.stream.VideoStream
) -> float | None:
    """Seconds of video the headers declare, or None when they do not say."""
    if video.duration is not None and video.time_base is not None:
        return float(video.duration * video.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def check_complete(
    path: str | Path, decoded_end: float, declared: float | None, wanted_end: float | None = None
) -> None:
    """Raise `corrupt` when the frames stop well before the duration the headers declare.

    FFmpeg decodes a cut-off webm/mkv up to the cut without an error; this catches it. The
    slack (half a second, or a tenth of the file) absorbs headers that round their duration.
    """
    if not declared:
        return
    target = declared if wanted_end is None else min(declared, wanted_end)
    if decoded_end < target - max(0.5, 0.1 * declared):
        raise MediaError(
            path,
            "corrupt",
            f"truncated: the video stops at {decoded_end:.2f} s of the {declared:.2f} s its header declares",
        )


# Leading bytes of the containers FFmpeg reads most: (offset, magic).
_SIGNATURES = (
    (4, b"ftyp"),
    (0, b"\x1a\x45\xdf\xa3"),
    (0, b"RIFF"),
    (0, b"OggS"),
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),
)


def _has_media_signature(path: Path) -> bool:
    """Whether the file starts like an mp4/mov, mkv/webm, avi, ogg, flv or mpeg-ps container."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    return any(head[offset : offset + len(magic)] == magic for offset, magic in _SIGNATURES)


def _ffmpeg_reason(error: av.error.FFmpegError) -> str:
    """FFmpeg's own message without the file name it repeats."""
    return getattr(error, "strerror", None) or str(error)
