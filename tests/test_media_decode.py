"""Decoding real files with PyAV: frames by timestamp, audio, sizes and the errors of bad files."""

from __future__ import annotations

import numpy as np
import pytest
from media_fixtures import BAD_FILES, frame_index, index_frames, media_files, peak_hz, sine  # noqa: F401

from fedmirasol.data.media.decode import DecodeSettings, decode_media
from fedmirasol.data.media.errors import MediaError
from fedmirasol.data.media.probe import probe_media
from fedmirasol.data.media.writer import write_media_file


def expected_indices(source_fps: float, model_fps: float, num_slots: int, count: int) -> np.ndarray:
    """The source frame on screen at each slot's midpoint, for a constant-rate source."""
    times = (np.arange(num_slots) + 0.5) / model_fps
    return np.minimum(np.floor(times * source_fps + 1e-9).astype(int), count - 1)


@pytest.mark.parametrize(
    ("name", "source_fps", "count"),
    [
        ("h264_30", 30.0, 60),
        ("h264_2997", 30000 / 1001, 60),
        ("fps_12_5", 12.5, 25),
        ("vp9_opus", 30.0, 60),
    ],
)
@pytest.mark.parametrize("model_fps", [8.0, 12.5])
def test_constant_rates_land_the_frame_on_screen(media_files, name, source_fps, count, model_fps):
    decoded = decode_media(media_files[name], DecodeSettings(fps=model_fps, image_size=24))
    duration = count / source_fps
    assert decoded.num_slots == int(np.ceil(duration * model_fps - 0.5))
    want = expected_indices(source_fps, model_fps, decoded.num_slots, count)
    np.testing.assert_array_equal(frame_index(decoded.frames), want)
    np.testing.assert_allclose(decoded.frame_times, want / source_fps, atol=1e-3)


def test_variable_frame_rate_goes_by_timestamps(media_files):
    times = np.array([0.0, 0.04, 0.12, 0.13, 0.3, 0.5, 0.55, 0.9, 1.2, 1.25])
    decoded = decode_media(media_files["vfr"], DecodeSettings(fps=8.0, image_size=24))
    slots = (np.arange(decoded.num_slots) + 0.5) / 8.0
    want = np.searchsorted(times, slots, side="right") - 1
    np.testing.assert_array_equal(frame_index(decoded.frames), want)
    assert decoded.num_slots == 10  # the last frame (1.25 s) lasts 40 ms: slots up to 1.29 s


@pytest.mark.parametrize(
    ("name", "hz"), [("stereo_44k", 880.0), ("vp9_opus", 1000.0), ("h264_30", 440.0)]
)
def test_audio_is_16k_mono_at_its_pitch(media_files, name, hz):
    decoded = decode_media(media_files[name], DecodeSettings(fps=8.0, image_size=24))
    assert decoded.audio is not None and decoded.audio.dtype == np.float32
    assert decoded.audio.shape == (decoded.num_slots * 2000,)  # 16 kHz / 8 fps per slot
    body = decoded.audio[1600:-1600]
    assert abs(peak_hz(body, 16_000) - hz) < 5
    assert 0.2 < np.sqrt(np.mean(body**2)) < 0.8


@pytest.mark.parametrize("start", [0.0, 1.5])
def test_audio_and_video_cover_the_same_seconds(tmp_path, start):
    """A flash and a tone burst both at [2.0, 2.25) s land in the same slots and samples."""
    frames = np.zeros((90, 32, 32, 3), np.uint8)
    frames[60:68] = 255  # frames 60..67 at 30 fps = [2.0, 2.267)
    audio = np.zeros(3 * 16_000, np.float32)
    audio[32_000:36_000] = sine(0.25, 16_000, hz=500)
    path = write_media_file(tmp_path / "sync.mp4", frames, 30, audio, 16_000)
    decoded = decode_media(path, DecodeSettings(fps=8.0, image_size=32, start=start))
    bright = np.flatnonzero(decoded.frames.reshape(decoded.num_slots, -1).mean(axis=1) > 128)
    first = round((2.0 - start) * 8)
    np.testing.assert_array_equal(bright, [first, first + 1])
    energy = np.sqrt(np.mean(decoded.audio.reshape(decoded.num_slots, 2000) ** 2, axis=1))
    loud = np.flatnonzero(energy > 0.1)
    np.testing.assert_array_equal(loud, [first, first + 1])


def test_start_and_end_cut_the_span(media_files):
    decoded = decode_media(
        media_files["h264_30"], DecodeSettings(fps=8.0, image_size=24, start=0.5, end=1.5)
    )
    assert decoded.num_slots == 8
    np.testing.assert_array_equal(frame_index(decoded.frames), expected_indices(30, 8, 8, 60) + 15)
    assert decoded.audio.shape == (16_000,)


def test_no_audio_track_gives_none_not_silence(media_files):
    decoded = decode_media(media_files["no_audio"], DecodeSettings(fps=8.0, image_size=24))
    assert decoded.audio is None and decoded.num_slots == 16


def test_separate_audio_file_replaces_the_track(media_files):
    decoded = decode_media(
        media_files["no_audio"],
        DecodeSettings(fps=8.0, image_size=24),
        audio_path=media_files["stereo_44k"],
    )
    assert abs(peak_hz(decoded.audio[1600:-1600], 16_000) - 880) < 5


def test_one_frame_video_fills_one_slot(media_files):
    decoded = decode_media(media_files["one_frame"], DecodeSettings(fps=8.0, image_size=24))
    assert decoded.num_slots == 1 and frame_index(decoded.frames).tolist() == [0]
    assert decoded.audio.shape == (2000,)


def test_resize_keeps_aspect_and_antialiases(tmp_path):
    board = (np.indices((48, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    frames = np.repeat(np.repeat(board[None, :, :, None], 3, axis=3), 4, axis=0)
    path = write_media_file(tmp_path / "board.mp4", frames, 8, crf=0)
    full = decode_media(path, DecodeSettings(fps=8.0, image_size=48)).frames
    small = decode_media(path, DecodeSettings(fps=8.0, image_size=12)).frames
    assert full.shape[1:] == (48, 64, 3) and full.std() > 100  # the pattern survives encoding
    assert small.shape[1:] == (12, 16, 3)  # short side 12, 4:3 kept
    assert abs(small.mean() - 127.5) < 10 and small.std() < 12  # averaged, not aliased


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_fail_naming_file_and_reason(media_files, name):
    for attempt in (
        lambda: decode_media(media_files[name], DecodeSettings(fps=8.0, image_size=24)),
        lambda: probe_media(media_files[name]),
    ):
        with pytest.raises(MediaError) as caught:
            attempt()
        assert caught.value.kind == BAD_FILES[name]
        assert str(media_files[name]) in str(caught.value)
        assert caught.value.detail


def test_audio_only_file_has_no_video(tmp_path):
    path = write_media_file(tmp_path / "voice.mp4", None, 8, sine(1, 16_000), 16_000)
    with pytest.raises(MediaError, match="no video stream") as caught:
        decode_media(path, DecodeSettings(fps=8.0, image_size=24))
    assert caught.value.kind == "no-video"


def test_probe_reports_streams(media_files):
    info = probe_media(media_files["h264_2997"])
    assert (info.video_codec, info.width, info.height, info.frames) == ("h264", 64, 48, 60)
    assert info.fps == pytest.approx(30000 / 1001, abs=1e-9)  # true NTSC, not 2997/100
    assert info.duration == pytest.approx(60 * 1001 / 30000, abs=1e-6)
    stereo = probe_media(media_files["stereo_44k"])
    assert (stereo.audio_codec, stereo.sample_rate, stereo.channels) == ("aac", 44_100, 2)
    webm = probe_media(media_files["vp9_opus"])
    assert (webm.video_codec, webm.audio_codec) == ("vp9", "opus")
    assert probe_media(media_files["no_audio"]).audio_codec is None


def test_late_first_frame_also_fills_the_slots_before_it(tmp_path):
    times = [0.3, 0.5, 0.9]
    path = write_media_file(tmp_path / "late.mkv", index_frames(3), 10, frame_times=times)
    decoded = decode_media(path, DecodeSettings(fps=8.0, image_size=24))
    slots = (np.arange(decoded.num_slots) + 0.5) / 8.0
    want = np.maximum(np.searchsorted(times, slots, side="right") - 1, 0)
    assert decoded.frame_times[0] == pytest.approx(0.3)
    np.testing.assert_array_equal(frame_index(decoded.frames), want)
