"""MediaClipDataset: the sample contract, skipping and counting bad files, the decode cache."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from media_fixtures import BAD_FILES, media_files  # noqa: F401

import fedmirasol.data.media.dataset as dataset_module
from fedmirasol.data.batch import BATCH_KEYS, collate
from fedmirasol.data.media.cache import DecodeCache
from fedmirasol.data.media.dataset import (
    MediaClipDataset,
    load_manifest_datasets,
    media_loader,
)
from fedmirasol.data.media.decode import DecodeSettings
from fedmirasol.data.media.evaluate import evaluate_dense
from fedmirasol.data.media.manifest import ClipRecord, read_manifest, write_manifest
from fedmirasol.data.questions import QUESTION_TYPES
from fedmirasol.errors import ConfigError
from fedmirasol.models.config import get_config
from fedmirasol.models.tokenizer import ByteTokenizer

CONFIG = get_config("tiny", num_frames=8)  # 8 frames at 8 fps: 1 s clips, 16000 samples


def records(media_files, names, **fields) -> list[ClipRecord]:
    return [
        ClipRecord(path=str(media_files[n]), label=i % CONFIG.num_classes, **fields)
        for i, n in enumerate(names)
    ]


def test_sample_follows_the_batch_contract(media_files):
    data = MediaClipDataset(records(media_files, ["h264_30"], caption="a red disc"), CONFIG)
    sample = data[0]
    assert set(sample) == set(BATCH_KEYS)
    assert sample["video"].shape == (8, 3, 32, 32) and sample["video"].dtype == torch.float32
    assert sample["audio"].shape == (16_000,)  # 1 s at 16 kHz, the seconds of the 8 frames
    assert sample["video_present"].item() and sample["audio_present"].item()
    assert sample["label"].dtype == torch.int64 and sample["label"].item() == 0
    torch.testing.assert_close(sample["text"], ByteTokenizer().encode("a red disc", CONFIG.max_text_len))
    batch = collate([sample, data[0]])
    assert batch["video"].shape == (2, 8, 3, 32, 32)


def test_missing_audio_is_marked_and_no_caption_is_all_pad(media_files):
    sample = MediaClipDataset(records(media_files, ["no_audio"]), CONFIG)[0]
    assert not sample["audio_present"].item()
    assert sample["audio"].abs().max() == 0 and sample["audio"].shape == (16_000,)
    assert (sample["text"] == ByteTokenizer.pad_id).all()


def test_one_frame_video_makes_a_full_clip(media_files):
    sample = MediaClipDataset(records(media_files, ["one_frame"]), CONFIG)[0]
    assert sample["video"].shape == (8, 3, 32, 32)
    assert torch.equal(sample["video"][0], sample["video"][-1])


def test_bad_files_are_skipped_counted_and_replaced(media_files):
    names = ["h264_30", *sorted(BAD_FILES), "vp9_opus"]
    data = MediaClipDataset(records(media_files, names), CONFIG)
    labels = [int(data[i]["label"]) for i in range(len(data))]
    # each bad index returns the next good file (vp9_opus, label 6)
    assert labels == [0] + [len(names) - 1] * len(BAD_FILES) + [len(names) - 1]
    assert data.skipped_count() == len(BAD_FILES)
    assert data.skipped_reasons() == Counter(BAD_FILES.values())
    assert sorted(data.skipped_files()) == sorted(str(media_files[n]) for n in BAD_FILES)
    assert data.skip_metrics()["skipped_files"] == len(BAD_FILES)


def test_skips_in_dataloader_workers_are_seen_by_the_main_process(media_files):
    data = MediaClipDataset(records(media_files, ["h264_30", "text", "zero_bytes", "vp9_opus"]), CONFIG)
    batches = list(media_loader(data, batch_size=2, num_workers=2))
    assert sum(len(b["label"]) for b in batches) == 4
    assert data.skipped_count() == 2 and data.skipped_reasons() == {"not-media": 1, "empty": 1}


def test_all_files_bad_is_an_error(media_files):
    data = MediaClipDataset(records(media_files, ["text", "missing"]), CONFIG)
    with pytest.raises(RuntimeError, match="none of the 2 files"):
        data[0]


def test_label_outside_the_model_is_refused(media_files):
    with pytest.raises(ValueError, match="outside the model's 8 classes"):
        MediaClipDataset([ClipRecord(path=str(media_files["h264_30"]), label=8)], CONFIG)


def test_cache_serves_later_epochs_without_decoding(media_files, tmp_path, monkeypatch):
    cache = DecodeCache(tmp_path / "cache")
    data = MediaClipDataset(records(media_files, ["h264_30", "text"]), CONFIG, cache=cache)
    first = data[0]
    data[1]  # caches text.mp4's error as well
    assert (
        len(list((tmp_path / "cache").rglob("*.npz"))) == 1
        and len(list((tmp_path / "cache").rglob("*.err"))) == 1
    )

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(dataset_module, "decode_media", no_decoding)
    again = MediaClipDataset(records(media_files, ["h264_30", "text"]), CONFIG, cache=cache)
    torch.testing.assert_close(again[0]["video"], first["video"])
    torch.testing.assert_close(again[0]["audio"], first["audio"])
    again[1]
    assert again.skipped_reasons() == {"not-media": 1}


def test_cache_key_follows_content_and_settings(media_files, tmp_path):
    cache = DecodeCache(tmp_path)
    copy = tmp_path / "clip.mp4"
    copy.write_bytes(media_files["h264_30"].read_bytes())
    settings = DecodeSettings(fps=8.0, image_size=32)
    key = cache.key(copy, settings)
    assert key == cache.key(media_files["h264_30"], settings)  # same bytes, same key
    assert key != cache.key(copy, DecodeSettings(fps=8.0, image_size=64))
    assert key != cache.key(copy, DecodeSettings(fps=8.0, image_size=32, start=0.5))
    copy.write_bytes(media_files["h264_2997"].read_bytes())
    assert key != cache.key(copy, settings)
    assert cache.key(tmp_path / "nothing.mp4", settings) is None


def test_dense_gives_several_clips_per_video(media_files):
    data = MediaClipDataset(
        records(media_files, ["h264_30", "vp9_opus"]), CONFIG, strategy="dense", num_clips=3
    )
    assert len(data) == 6 and data.video_ids().tolist() == [0, 0, 0, 1, 1, 1]
    clips = [data[i]["video"] for i in range(3)]
    assert not torch.equal(clips[0], clips[2])  # from the start and from the end of a 2 s file


def test_random_strategy_draws_different_windows(media_files):
    data = MediaClipDataset(records(media_files, ["h264_30"]), CONFIG, strategy="random")
    torch.manual_seed(0)
    firsts = {round(float(data[0]["video"][0].mean()), 3) for _ in range(12)}
    assert len(firsts) > 2


def test_load_manifest_datasets_by_site_and_partition_folder(media_files, tmp_path):
    names = ["h264_30", "h264_2997", "vp9_opus", "stereo_44k", "fps_12_5", "no_audio"]
    rows = [
        ClipRecord(path=str(media_files[n]), label=i, site="a" if i < 4 else "b")
        for i, n in enumerate(names)
    ]
    manifest = write_manifest(rows, tmp_path / "all.csv")
    train, val = load_manifest_datasets(
        manifest, CONFIG, client_id="a", val_fraction=0.25, cache_dir=tmp_path / "c"
    )
    assert len(train) == 3 and len(val) == 1
    assert {r.site for r in train.records + val.records} == {"a"}
    assert train.strategy == "random" and val.strategy == "center"
    train_b, val_b = load_manifest_datasets(
        manifest, CONFIG, client_id=1, cache_dir=None
    )  # index into sites
    assert {r.site for r in train_b.records + val_b.records} == {"b"} and train_b.cache is None
    write_manifest(rows[:2], tmp_path / "parts" / "client_0.csv")
    train_p, val_p = load_manifest_datasets(tmp_path / "parts", CONFIG, client_id=0, val_fraction=0.5)
    assert len(train_p) == 1 and len(val_p) == 1
    with pytest.raises(ValueError, match="matches none"):
        load_manifest_datasets(manifest, CONFIG, client_id="c")


def test_iid_share_without_sites_and_split_column(media_files, tmp_path):
    rows = [ClipRecord(path=str(media_files["h264_30"]), label=i % 8) for i in range(10)]
    manifest = write_manifest(rows, tmp_path / "m.jsonl")
    shares = [
        load_manifest_datasets(manifest, CONFIG, client_id=c, num_clients=2, val_fraction=0.2)
        for c in range(2)
    ]
    assert [len(t) + len(v) for t, v in shares] == [5, 5]
    split = [
        ClipRecord(path=str(media_files["h264_30"]), split="train" if i < 7 else "val")
        for i in range(10)
    ]
    train, val = load_manifest_datasets(write_manifest(split, tmp_path / "s.csv"), CONFIG)
    assert (len(train), len(val)) == (7, 3)


def test_long_files_are_decoded_up_to_max_seconds(media_files):
    whole = MediaClipDataset(records(media_files, ["h264_30"]), CONFIG, max_seconds=None)
    capped = MediaClipDataset(records(media_files, ["h264_30"]), CONFIG, max_seconds=1.0)
    assert whole.decoded(0).num_slots == 16 and capped.decoded(0).num_slots == 8


def test_a_bad_separate_audio_file_is_named_also_from_the_cache(media_files, tmp_path):
    row = [ClipRecord(path=str(media_files["no_audio"]), audio_path=str(media_files["text"]))]
    for attempt in range(2):  # decoded, then served from the cache
        data = MediaClipDataset(row, CONFIG, cache=DecodeCache(tmp_path))
        with pytest.raises(RuntimeError):
            data[0]
        assert data.skipped_reasons() == {"not-media": 1}
    cache = DecodeCache(tmp_path)
    key = cache.key(row[0].path, DecodeSettings(fps=8.0, image_size=32, end=120.0), row[0].audio_path)
    assert str(cache.load(key, row[0].path, row[0].audio_path)).startswith(
        f"{media_files['text']}: not-media"
    )


def test_dense_evaluation_averages_clips_and_leaves_out_bad_videos(media_files):
    class SplitVote(torch.nn.Module):
        """Right with weight 0.9 on a video's early clip, wrong with 0.8 on its late clip: only
        the per-video average of the two is right."""

        def forward(self, batch):
            early = batch["video"][:, 0, 0].mean(dim=(-1, -2)) < 0  # red level grows with time
            right = torch.nn.functional.one_hot(batch["label"], 8).float()
            wrong = torch.nn.functional.one_hot((batch["label"] + 1) % 8, 8).float()
            weight = torch.where(early, 0.9, 0.2).unsqueeze(-1)
            return SimpleNamespace(logits=weight * right + (1 - weight) * wrong)

    names = ["h264_30", "text", "vp9_opus"]
    data = MediaClipDataset(records(media_files, names), CONFIG, strategy="dense", num_clips=2)
    result = evaluate_dense(SplitVote(), data, batch_size=4)
    assert result == {"accuracy": 1.0, "num_videos": 2.0, "clips_per_video": 2.0, "skipped_files": 1.0}
    single = MediaClipDataset(records(media_files, names), CONFIG, strategy="dense", num_clips=1)
    assert evaluate_dense(SplitVote(), single)["accuracy"] == 0.0  # one centre clip: the late vote


def test_manifest_questions_and_scored_captions_for_videoqa(media_files, tmp_path):
    manifest = tmp_path / "qa.csv"
    manifest.write_text(f"path,caption,question,answer\n{media_files['h264_30']},,what is it?,a disc\n"
                        f"{media_files['h264_30']},a red disc,,\n")
    data = MediaClipDataset(read_manifest(manifest), CONFIG, score_captions=True)
    question, caption = data[0], data[1]
    prompt = "what is it? "
    assert int(question["prompt_length"]) == 1 + len(prompt)
    assert ByteTokenizer().decode(question["text"][1:]) == prompt + "a disc"
    assert QUESTION_TYPES[int(question["question_type"])] == "open"
    assert QUESTION_TYPES[int(caption["question_type"])] == "caption"
    assert ByteTokenizer().decode(caption["text"][int(caption["prompt_length"]):]) == "a red disc"
    plain = MediaClipDataset(read_manifest(manifest), CONFIG)[1]  # classification: as before
    torch.testing.assert_close(plain["text"], ByteTokenizer().encode("a red disc", CONFIG.max_text_len))
    manifest.write_text(f"path,question\n{media_files['h264_30']},what is it?\n")
    with pytest.raises(ConfigError, match="needs an answer"):
        read_manifest(manifest)
