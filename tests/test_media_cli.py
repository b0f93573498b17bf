"""`fedmirasol data synth | inspect | partition`, and synth files matching the in-memory clips."""

from __future__ import annotations

import shutil

import pytest
import torch
from media_fixtures import media_files  # noqa: F401

from fedmirasol.cli import main
from fedmirasol.data.media.dataset import load_manifest_datasets
from fedmirasol.data.media.manifest import ClipRecord, read_manifest, write_manifest
from fedmirasol.data.media.probe import probe_media
from fedmirasol.data.synthetic import SyntheticAVDataset, SyntheticConfig
from fedmirasol.models.config import get_config


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert (
        main(["data", "synth", "--out", str(out), "--clips", "12", "--seed", "3", "--sites", "3"]) == 0
    )
    return out


def test_synth_writes_h264_aac_mp4s_and_a_manifest(synth_dir):
    records = read_manifest(synth_dir / "manifest.csv")
    assert len(records) == 12 and {r.site for r in records} == {"0", "1", "2"}
    info = probe_media(records[0].path)
    tiny = get_config("tiny")
    assert (info.video_codec, info.audio_codec, info.sample_rate, info.channels) == (
        "h264",
        "aac",
        16_000,
        1,
    )
    assert (info.width, info.frames, info.fps) == (tiny.image_size, tiny.num_frames, tiny.fps)


def test_synth_files_decode_to_the_in_memory_clips(tmp_path):
    assert main(["data", "synth", "--out", str(tmp_path), "--clips", "4", "--seed", "5"]) == 0
    config = get_config("tiny")
    train, _ = load_manifest_datasets(tmp_path / "manifest.csv", config, val_fraction=0, cache_dir=None)
    memory = SyntheticAVDataset(SyntheticConfig.for_model(config), 4, seed=5)
    for index in range(4):
        decoded, rendered = train[index], memory[index]
        assert decoded["label"] == rendered["label"] and torch.equal(decoded["text"], rendered["text"])
        # lossy codecs: small error against the signals' own size
        video_error = (decoded["video"] - rendered["video"]).abs().mean() / rendered[
            "video"
        ].abs().mean()
        audio_error = (decoded["audio"] - rendered["audio"]).abs().mean() / rendered[
            "audio"
        ].abs().mean()
        assert video_error < 0.12 and audio_error < 0.1  # a different clip: > 0.5
        assert decoded["audio_present"] and decoded["video_present"]


def test_inspect_lists_each_file_and_totals(media_files, tmp_path, capsys):
    rows = [
        ClipRecord(path=str(media_files[n]), label=i, label_name=n)
        for i, n in enumerate(["h264_30", "no_audio", "text"])
    ]
    manifest = write_manifest(rows, tmp_path / "m.csv")
    assert main(["data", "inspect", str(manifest)]) == 1  # a bad file makes the exit code 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(
        f"ok    {media_files['h264_30']}: 2.00 s, h264 64x48 30.000 fps 60 frames, aac 16000 Hz 1 ch"
    )
    assert out[1].startswith("ok") and "no audio" in out[1]
    assert out[2].startswith(f"error {media_files['text']}: not-media")
    assert out[3] == "files: 3, ok: 2, failed: 1 (not-media 1)"
    assert out[4] == "duration: 4.0 s in all, 2.00 s per ok file"
    assert "no audio x1" in out[5] and "video h264 x2" in out[5]
    assert out[6] == "labels: h264_30 x1, no_audio x1"


def test_partition_writes_one_manifest_per_client(synth_dir, capsys):
    out = synth_dir / "parts"
    assert (
        main(["data", "partition", str(synth_dir / "manifest.csv"), "--by", "site", "--out", str(out)])
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["client_0.csv", "client_1.csv", "client_2.csv"]
    assert [len(read_manifest(out / f"client_{i}.csv")) for i in range(3)] == [4, 4, 4]
    for method in ("iid", "dirichlet"):
        target = synth_dir / method
        assert (
            main(
                [
                    "data",
                    "partition",
                    str(synth_dir / "manifest.csv"),
                    "--by",
                    method,
                    "--clients",
                    "2",
                    "--out",
                    str(target),
                ]
            )
            == 0
        )
        assert sum(len(read_manifest(target / f"client_{i}.csv")) for i in range(2)) == 12
    train, val = load_manifest_datasets(out, get_config("tiny"), client_id=2, cache_dir=None)
    assert len(train) + len(val) == 4


@pytest.mark.parametrize("command", ["synth", "inspect", "partition"])
def test_each_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main(["data", command, "--help"])
    assert done.value.code == 0 and "usage: fedmirasol data " + command in capsys.readouterr().out


def test_partition_errors_exit_2(synth_dir, capsys):
    code = main(
        [
            "data",
            "partition",
            str(synth_dir / "manifest.csv"),
            "--by",
            "site",
            "--clients",
            "5",
            "--out",
            str(synth_dir / "x"),
        ]
    )
    assert code == 2 and "does not match the manifest's 3 sites" in capsys.readouterr().err


def test_inspect_reads_class_folders_and_vggsound_layouts(media_files, tmp_path, capsys):
    for cls, name in (("drums", "h264_30"), ("drums", "vp9_opus"), ("voice", "zero_bytes")):
        (tmp_path / "tree" / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(media_files[name], tmp_path / "tree" / cls / media_files[name].name)
    assert main(["data", "inspect", str(tmp_path / "tree"), "--format", "folders"]) == 1
    out = capsys.readouterr().out
    assert "files: 3, ok: 2, failed: 1 (empty 1)" in out and "labels: drums x2" in out

    (tmp_path / "videos").mkdir()
    shutil.copy(media_files["h264_30"], tmp_path / "videos" / "abc_000001.mp4")
    (tmp_path / "vgg.csv").write_text("abc,1,dog barking,train\nmissing,4,cat purring,test\n")
    args = ["data", "inspect", str(tmp_path / "vgg.csv"), "--format", "vggsound"]
    assert main([*args, "--video-dir", str(tmp_path / "videos"), "--split", "train"]) == 0
    assert "files: 1, ok: 1, failed: 0 (none)" in capsys.readouterr().out
    assert main(args) == 2 and "--format vggsound needs --video-dir" in capsys.readouterr().err
