"""Media files generated with PyAV for the media tests (shared fixtures, built once per session).

Every video frame is one flat colour that encodes its index (red ``20 + 12 * (i % 18)``, green
``20 + 12 * (i // 18)``, steps wide enough to survive lossy codecs), so a test can read back
which source frame landed in each grid slot. Audio is a sine with a known pitch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedmirasol.data.media.writer import write_media_file

HEIGHT, WIDTH = 48, 64  # a 4:3 frame, so the aspect-ratio handling shows


def index_frames(count: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """`count` flat frames whose colour encodes their index."""
    index = np.arange(count)
    colours = np.stack([20 + 12 * (index % 18), 20 + 12 * (index // 18), np.full(count, 128)], axis=1)
    return np.broadcast_to(colours[:, None, None, :], (count, height, width, 3)).astype(np.uint8)


def frame_index(frames: np.ndarray) -> np.ndarray:
    """The source index each frame of ``K x h x w x 3`` shows (inverse of `index_frames`)."""
    mean = frames.reshape(len(frames), -1, 3).mean(axis=1)
    return (np.round((mean[:, 0] - 20) / 12) + 18 * np.round((mean[:, 1] - 20) / 12)).astype(int)


def sine(
    seconds: float, rate: int, hz: float = 440.0, channels: int = 1, amplitude: float = 0.5
) -> np.ndarray:
    """A sine of `seconds` at `rate`: shape ``M`` for mono, ``C x M`` otherwise."""
    wave = (amplitude * np.sin(2 * np.pi * hz * np.arange(round(seconds * rate)) / rate)).astype(
        np.float32
    )
    return wave if channels == 1 else np.repeat(wave[None], channels, axis=0)


def peak_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[spectrum.argmax()])


def _write_all(root: Path) -> dict[str, Path]:
    files = {
        "h264_30": write_media_file(root / "h264_30.mp4", index_frames(60), 30, sine(2, 16_000), 16_000),
        "h264_2997": write_media_file(
            root / "h264_2997.mp4", index_frames(60), 29.97, sine(2, 16_000), 16_000
        ),
        "fps_12_5": write_media_file(
            root / "fps_12_5.mkv", index_frames(25), 12.5, sine(2, 16_000), 16_000
        ),
        "vp9_opus": write_media_file(
            root / "vp9_opus.webm", index_frames(60), 30, sine(2, 48_000, hz=1000), 48_000
        ),
        "no_audio": write_media_file(root / "no_audio.mp4", index_frames(60), 30),
        "stereo_44k": write_media_file(
            root / "stereo_44k.mp4", index_frames(60), 30, sine(2, 44_100, hz=880, channels=2), 44_100
        ),
        "one_frame": write_media_file(
            root / "one_frame.mp4", index_frames(1), 30, sine(2, 16_000), 16_000
        ),
        "vfr": write_media_file(
            root / "vfr.mp4",
            index_frames(10),
            25,
            frame_times=[0.0, 0.04, 0.12, 0.13, 0.3, 0.5, 0.55, 0.9, 1.2, 1.25],
        ),
    }
    for name, source in (("truncated_mp4", files["h264_30"]), ("truncated_webm", files["vp9_opus"])):
        data = source.read_bytes()
        files[name] = root / f"{name}{source.suffix}"
        files[name].write_bytes(data[: len(data) // 2])
    # An mkv whose codec id no decoder knows: h264 packets under a made-up Matroska CodecID.
    mkv = write_media_file(root / "h264.mkv", index_frames(10), 10).read_bytes()
    files["unsupported"] = root / "unsupported.mkv"
    files["unsupported"].write_bytes(mkv.replace(b"V_MPEG4/ISO/AVC", b"V_ZZZZZ/ISO/ZZZ"))
    files["zero_bytes"] = root / "zero_bytes.mp4"
    files["zero_bytes"].write_bytes(b"")
    files["text"] = root / "text.mp4"
    files["text"].write_text("this is a text file, not a video\n" * 20)
    files["missing"] = root / "missing.mp4"
    return files


@pytest.fixture(scope="session")
def media_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Name -> path of the generated media (good and bad)."""
    return _write_all(tmp_path_factory.mktemp("media"))


BAD_FILES = {  # name -> the error kind it must raise
    "truncated_mp4": "corrupt",
    "truncated_webm": "corrupt",
    "zero_bytes": "empty",
    "text": "not-media",
    "unsupported": "unsupported-codec",
    "missing": "missing",
}
