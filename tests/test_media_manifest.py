"""Manifests (CSV, JSON Lines), the VGGSound and class-folder adapters, and partitioning."""

from __future__ import annotations

from collections import Counter

import pytest

from fedmirasol.data.media.adapters import read_class_folders, read_vggsound
from fedmirasol.data.media.manifest import ClipRecord, read_manifest, write_manifest
from fedmirasol.data.media.partition import partition_records, write_partitions


def test_csv_manifest_with_every_column(tmp_path):
    (tmp_path / "m.csv").write_text(
        "path,audio_path,start,end,label,caption,site\n"
        "videos/a.mp4,audio/a.wav,1.5,4,dog,a dog barks,hospital-1\n"
        "/data/b.webm,,,,cat,,hospital-2\n"
    )
    a, b = read_manifest(tmp_path / "m.csv")
    assert a.path == str(tmp_path / "videos" / "a.mp4") and a.audio_path == str(
        tmp_path / "audio" / "a.wav"
    )
    assert (a.start, a.end, a.caption, a.site) == (1.5, 4.0, "a dog barks", "hospital-1")
    assert (a.label, a.label_name, b.label, b.label_name) == (
        1,
        "dog",
        0,
        "cat",
    )  # names numbered sorted
    assert (b.path, b.audio_path, b.start, b.caption) == ("/data/b.webm", None, None, None)


def test_jsonl_manifest_and_round_trip(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        '{"path": "x.mp4", "label": 3, "caption": "hi"}\n\n{"path": "y.mp4"}\n'
    )
    x, y = read_manifest(tmp_path / "m.jsonl")
    assert (x.label, x.caption, y.label) == (3, "hi", -1)
    for suffix in (".csv", ".jsonl"):
        again = read_manifest(write_manifest([x, y], tmp_path / f"copy{suffix}"))
        assert again == [x, y]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,label\n,1\n", "m.csv:2: the path is empty"),
        ("path,start\na.mp4,soon\n", "m.csv:2: start 'soon' is not a number"),
        ("path,start,end\na.mp4,3,2\n", "m.csv:2: end 2.0 is not after start 3.0"),
        ("path,colour\na.mp4,red\n", "m.csv:2: unknown columns"),
        ("video,label\na.mp4,1\n", "needs a header with a 'path' column"),
        ("path\n", "lists no clips"),
    ],
)
def test_bad_manifest_rows_name_file_and_line(tmp_path, text, message):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_manifest(tmp_path / "m.csv")


def test_vggsound_layout(tmp_path):
    (tmp_path / "vggsound.csv").write_text(
        "abc,30,dog barking,train\nxyz,0,cat purring,test\nfull,120,dog barking,train\ngone,5,cat purring,train\n"
    )
    videos = tmp_path / "video"
    videos.mkdir()
    for name in ("abc_000030.mp4", "xyz_0_10000.mp4", "full.mkv"):
        (videos / name).write_bytes(b"x")
    rows = read_vggsound(tmp_path / "vggsound.csv", videos)
    assert [r.path for r in rows[:3]] == [
        str(videos / n) for n in ("abc_000030.mp4", "xyz_0_10000.mp4", "full.mkv")
    ]
    assert (rows[0].start, rows[2].start, rows[2].end) == (None, 120.0, 130.0)  # full video is cut
    assert [r.label for r in rows] == [1, 0, 1, 0] and rows[0].label_name == "dog barking"
    assert rows[3].path == str(videos / "gone_000005.mp4")  # kept so it is reported and counted
    assert len(read_vggsound(tmp_path / "vggsound.csv", videos, split="train", drop_missing=True)) == 2


def test_class_folder_layout(tmp_path):
    for cls, names in {
        "walk": ["a.mp4", "b.avi"],
        "jump": ["c.webm", "notes.txt"],
        ".hidden": ["d.mp4"],
    }.items():
        (tmp_path / cls).mkdir()
        for name in names:
            (tmp_path / cls / name).write_bytes(b"x")
    rows = read_class_folders(tmp_path)
    assert [(r.label, r.label_name, r.path.rsplit("/", 1)[1]) for r in rows] == [
        (0, "jump", "c.webm"),
        (1, "walk", "a.mp4"),
        (1, "walk", "b.avi"),
    ]


def labelled(count: int, classes: int, sites: int = 0) -> list[ClipRecord]:
    return [
        ClipRecord(
            path=f"/v/{i}.mp4",
            label=i % classes,
            label_name=f"c{i % classes}",
            site=f"s{i % sites}" if sites else None,
        )
        for i in range(count)
    ]


def test_iid_partition_splits_everything_evenly():
    parts = partition_records(labelled(60, 6), 4, "iid", seed=1)
    assert [len(p) for p in parts] == [15] * 4
    assert sorted(r.path for p in parts for r in p) == sorted(r.path for r in labelled(60, 6))


def test_dirichlet_partition_skews_labels():
    records = labelled(400, 4)
    skewed = partition_records(records, 4, "dirichlet", alpha=0.1, seed=3)
    even = partition_records(records, 4, "dirichlet", alpha=1000.0, seed=3)
    assert sum(len(p) for p in skewed) == 400

    def top_share(parts):  # mean share of each client's most common label
        return sum(Counter(r.label for r in p).most_common(1)[0][1] / len(p) for p in parts) / len(parts)

    assert top_share(skewed) > 0.6 > 0.35 > top_share(even)


def test_manifest_split_is_the_runs_split():
    """`fedmirasol data partition` and a run's pool split are one implementation."""
    import numpy as np

    from fedmirasol.config.sections import DataConfig
    from fedmirasol.data.partitioning import split_pool

    records = labelled(120, 4)
    labels = np.array([r.label for r in records])
    data = DataConfig(partitioner="dirichlet", num_clients=5, alpha=0.3, min_partition_size=4)
    manifest_parts = partition_records(records, 5, "dirichlet", alpha=0.3, seed=7,
                                       min_partition_size=4)
    run_parts = split_pool(labels, data, 7)
    assert [[r.path for r in part] for part in manifest_parts] == [
        [records[i].path for i in sorted(part.tolist())] for part in run_parts]


def test_site_partition_and_files(tmp_path):
    parts = partition_records(labelled(9, 3, sites=3), None, "site")
    assert [{r.site for r in p} for p in parts] == [{"s0"}, {"s1"}, {"s2"}]
    with pytest.raises(ValueError, match="does not match the manifest's 3 sites"):
        partition_records(labelled(9, 3, sites=3), 2, "site")
    with pytest.raises(ValueError, match="needs a 'site' column"):
        partition_records(labelled(9, 3), None, "site")
    paths = write_partitions(parts, tmp_path)
    assert [p.name for p in paths] == ["client_0.csv", "client_1.csv", "client_2.csv"]
    assert read_manifest(paths[1]) == parts[1]
