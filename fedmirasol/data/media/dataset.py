"""Manifest clips as a torch Dataset of model samples (see `fedmirasol.data.batch`).

Bad files: a file that fails to decode is logged (its path and the reason), flagged and
counted, and the index it was asked for returns the next good file's sample instead, so a
batch is always full and one bad file never stops training; with ``substitute=False`` (what
federated clients use: under DP a substitute would be drawn twice as often as the accountant
assumes) it raises `UnavailableSample` instead, and the caller drops the item. The flags live in shared memory,
so `skipped_count()` in the main process sees the failures of every DataLoader worker.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fedmirasol.data.batch import Sample, UnavailableSample, collate
from fedmirasol.data.media.cache import DEFAULT_CACHE_DIR, DecodeCache
from fedmirasol.data.media.decode import DecodedMedia, DecodeSettings, decode_media
from fedmirasol.data.media.errors import REASONS, MediaError
from fedmirasol.data.media.manifest import ClipRecord, read_manifest
from fedmirasol.data.media.sampling import STRATEGIES, cut_audio, plan_clips
from fedmirasol.data.media.transforms import to_model_video
from fedmirasol.data.videoqa import record_text
from fedmirasol.errors import ConfigError
from fedmirasol.models.config import MirasolConfig
from fedmirasol.models.tokenizer import ByteTokenizer

log = logging.getLogger(__name__)
VAL_SPLITS = ("val", "valid", "validation", "test")


class MediaClipDataset(Dataset):
    """Samples decoded from `records` with PyAV, `num_clips` per video for ``dense``.

    ``random`` windows and random crops are training augmentations; they draw from torch's
    RNG, which DataLoader seeds per worker and epoch. Pass ``cache=None`` to decode every time.
    A record without an end is decoded for at most `max_seconds` from its start (None: all of
    it), which bounds the memory and cache size of long videos.
    """

    def __init__(
        self,
        records: Sequence[ClipRecord],
        model_config: MirasolConfig,
        strategy: str = "center",
        num_clips: int = 1,
        random_crop: bool = False,
        cache: DecodeCache | None = None,
        num_frames: int | None = None,
        max_seconds: float | None = 120.0,
        score_captions: bool = False,
        substitute: bool = True,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown sampling strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        for record in records:
            if record.label >= model_config.num_classes:
                raise ValueError(
                    f"{record.path}: label {record.label} is outside the model's {model_config.num_classes} classes"
                )
            if record.question and len(record.question.encode("utf-8")) + 4 > model_config.max_text_len:
                raise ConfigError(f"{record.path}: question {record.question!r} leaves no room "
                                  f"for an answer in max_text_len {model_config.max_text_len}")
        self.records = list(records)
        self.config = model_config
        self.strategy = strategy
        self.clips_per_video = num_clips if strategy == "dense" else 1
        self.random_crop = random_crop
        self.cache = cache
        self.num_frames = num_frames or model_config.num_frames
        self.max_seconds = max_seconds
        self.substitute = substitute
        self._tokenizer = ByteTokenizer()
        self.score_captions = score_captions  # videoqa: captions as scored "caption:" prompts
        self._failed = torch.zeros(len(self.records), dtype=torch.int8).share_memory_()

    def __len__(self) -> int:
        return len(self.records) * self.clips_per_video

    def __getitem__(self, index: int) -> Sample:
        video, clip = divmod(index, self.clips_per_video)
        if not self.substitute:
            if not self._failed[video]:
                try:
                    return self._sample(video, clip)
                except MediaError as error:
                    self._failed[video] = REASONS.index(error.kind) + 1
                    log.warning("skipping %s", error)
            raise UnavailableSample(f"{self.records[video].path} does not decode")
        for step in range(len(self.records)):
            candidate = (video + step) % len(self.records)
            if self._failed[candidate]:
                continue
            try:
                return self._sample(candidate, clip)
            except MediaError as error:
                self._failed[candidate] = REASONS.index(error.kind) + 1
                log.warning("skipping %s", error)
        raise RuntimeError(
            f"none of the {len(self.records)} files of this dataset decodes; see the warnings above"
        )

    @property
    def labels(self) -> np.ndarray:
        """Each video's label (-1: none), read from the manifest without decoding anything."""
        return np.array([r.label for r in self.records], dtype=np.int64)

    def owners(self) -> list[str | None]:
        """Each item's unit of user-level DP (the record's user, else its video)."""
        return [self.records[i // self.clips_per_video].owner for i in range(len(self))]

    def video_ids(self) -> torch.Tensor:
        """The video index of each item (for averaging dense clips per video)."""
        return torch.arange(len(self.records)).repeat_interleave(self.clips_per_video)

    def skipped_count(self) -> int:
        """Files found bad so far (each counted once)."""
        return int((self._failed > 0).sum())

    def skipped_reasons(self) -> Counter:
        """Reason -> number of files found bad for it."""
        return Counter(REASONS[code - 1] for code in self._failed.tolist() if code)

    def failed_mask(self) -> torch.Tensor:
        """Per video: whether its file was found bad (so its items hold other videos' clips)."""
        return self._failed > 0

    def skipped_files(self) -> list[str]:
        return [r.path for r, code in zip(self.records, self._failed.tolist(), strict=True) if code]

    def skip_metrics(self) -> dict[str, int]:
        """Flat numbers for run metrics: ``skipped_files`` and ``skipped_<reason>``."""
        return {
            "skipped_files": self.skipped_count(),
            **{f"skipped_{k}": v for k, v in self.skipped_reasons().items()},
        }

    def decoded(self, index: int) -> DecodedMedia:
        """The decoded span of record `index`, from the cache when it holds it."""
        record = self.records[index]
        start = record.start or 0.0
        end = (
            record.end
            if record.end is not None or self.max_seconds is None
            else start + self.max_seconds
        )
        settings = DecodeSettings(
            fps=self.config.fps,
            image_size=self.config.image_size,
            sample_rate=self.config.sample_rate,
            start=start,
            end=end,
        )
        key = self.cache.key(record.path, settings, record.audio_path) if self.cache else None
        if key is not None:
            cached = self.cache.load(key, record.path, record.audio_path)
            if isinstance(cached, MediaError):
                raise cached
            if cached is not None:
                return cached
        try:
            decoded = decode_media(record.path, settings, record.audio_path)
        except MediaError as error:
            if key is not None and error.kind != "missing":
                self.cache.store_error(key, error, record.audio_path)
            raise
        if key is not None:
            self.cache.store(key, decoded)
        return decoded

    def _sample(self, index: int, clip: int) -> Sample:
        record = self.records[index]
        decoded = self.decoded(index)
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()))) if self._random else None
        plans = plan_clips(
            decoded.num_slots,
            self.num_frames,
            self.config.frames_per_chunk,
            self.config.sample_rate / self.config.fps,
            self.strategy,
            rng,
            self.clips_per_video,
        )
        plan = plans[clip]
        video = to_model_video(
            decoded.frames[plan.slots], self.config.image_size, rng if self.random_crop else None
        )
        samples = len(plan.audio_starts) * self.config.samples_per_chunk
        if decoded.audio is None:
            audio = torch.zeros(samples)
        else:
            audio = torch.from_numpy(cut_audio(decoded.audio, plan, self.config.samples_per_chunk))
        max_len = self.config.max_text_len
        return {
            "video": video,
            "audio": audio,
            "video_present": torch.tensor(True),
            "audio_present": torch.tensor(decoded.audio is not None),
            "label": torch.tensor(record.label, dtype=torch.long),
            **record_text(self._tokenizer, max_len, question=record.question,
                          answer=record.answer, caption=record.caption,
                          score_captions=self.score_captions),
        }

    @property
    def _random(self) -> bool:
        return self.strategy == "random" or self.random_crop


def select_client(
    records: list[ClipRecord], client_id: int | str | None, num_clients: int | None, seed: int = 0
) -> list[ClipRecord]:
    """The records of one client: by the ``site`` column, else an IID share of `num_clients`."""
    if client_id is None:
        return records
    sites = sorted({r.site for r in records if r.site is not None})
    if sites:
        site = str(client_id) if str(client_id) in sites else None
        if site is None and isinstance(client_id, int) and 0 <= client_id < len(sites):
            site = sites[client_id]
        if site is None:
            raise ValueError(
                f"client {client_id!r} matches none of the manifest's sites: {', '.join(sites)}"
            )
        return [r for r in records if r.site == site]
    if not num_clients:
        raise ValueError("the manifest has no site column: give num_clients to split it IID")
    order = np.random.default_rng(seed).permutation(len(records))
    return [records[i] for i in order[int(client_id) :: num_clients]]


def split_train_val(
    records: list[ClipRecord], val_fraction: float, seed: int = 0
) -> tuple[list[ClipRecord], list[ClipRecord]]:
    """By the ``split`` column when there is one, else a seeded random `val_fraction`."""
    if any(r.split for r in records):
        return (
            [r for r in records if (r.split or "train") not in VAL_SPLITS],
            [r for r in records if r.split in VAL_SPLITS],
        )
    order = np.random.default_rng(seed).permutation(len(records))
    num_val = (
        min(max(1, round(len(records) * val_fraction)), len(records) - 1)
        if len(records) > 1 and val_fraction > 0
        else 0
    )
    return [records[i] for i in sorted(order[num_val:])], [records[i] for i in sorted(order[:num_val])]


def load_manifest_datasets(
    manifest: str | Path,
    model_config: MirasolConfig,
    client_id: int | str | None = None,
    num_clients: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
    train_strategy: str = "random",
    eval_strategy: str = "center",
    eval_clips: int = 1,
    max_seconds: float | None = 120.0,
    score_captions: bool = False,
    substitute: bool = True,
) -> tuple[MediaClipDataset, MediaClipDataset]:
    """(train, val) datasets of one client (or of everyone when `client_id` is None).

    `manifest` is a manifest file, or a folder written by `data partition` (then client
    `client_id` reads ``client_<id>.csv``). `cache_dir=None` turns the decode cache off.
    `score_captions` (the videoqa task): captions become ``caption:`` prompts whose generated
    text is scored (`fedmirasol.data.videoqa.record_text`).
    """
    manifest = Path(manifest)
    if manifest.is_dir():
        if client_id is None:
            raise ValueError(f"{manifest} is a partition folder: give the client id")
        manifest = _client_manifest(manifest, client_id)
        records = read_manifest(manifest)
    else:
        records = select_client(read_manifest(manifest), client_id, num_clients, seed)
    train, val = split_train_val(records, val_fraction, seed)
    cache = DecodeCache(cache_dir) if cache_dir is not None else None
    return (
        MediaClipDataset(
            train,
            model_config,
            strategy=train_strategy,
            random_crop=True,
            cache=cache,
            max_seconds=max_seconds,
            score_captions=score_captions,
            substitute=substitute,
        ),
        MediaClipDataset(
            val,
            model_config,
            strategy=eval_strategy,
            num_clips=eval_clips,
            cache=cache,
            max_seconds=max_seconds,
            score_captions=score_captions,
            substitute=substitute,
        ),
    )


def manifest_pool(
    manifest: str | Path,
    model_config: MirasolConfig,
    strategy: str = "center",
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
    score_captions: bool = False,
    substitute: bool = True,
) -> MediaClipDataset:
    """Every clip of `manifest` as one dataset (``.labels`` for partitioners), for callers that
    split the pool themselves."""
    cache = DecodeCache(cache_dir) if cache_dir is not None else None
    return MediaClipDataset(read_manifest(manifest), model_config, strategy=strategy, cache=cache,
                            score_captions=score_captions,
                            substitute=substitute)


def _client_manifest(folder: Path, client_id: int | str) -> Path:
    for name in (
        f"client_{client_id}",
        f"client_{int(client_id):03d}" if str(client_id).isdigit() else None,
    ):
        for suffix in (".csv", ".jsonl"):
            if name and (folder / f"{name}{suffix}").is_file():
                return folder / f"{name}{suffix}"
    raise FileNotFoundError(f"{folder} has no manifest for client {client_id} (client_<id>.csv)")


def media_loader(
    dataset: MediaClipDataset, batch_size: int, shuffle: bool = False, num_workers: int = 0, **kwargs
) -> DataLoader:
    """A DataLoader whose workers decode in parallel, one torch thread each."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=_one_thread if num_workers else None,
        persistent_workers=num_workers > 0,
        **kwargs,
    )


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)
