"""A decode cache on disk, keyed by file content and decode settings.

An entry is the whole decoded span of a file (its grid frames and audio), so any later window,
random or not, is a slice of it: later epochs and rounds never decode again. Files that failed
are cached too (as their error), so a bad file costs one decode attempt per cache, not one per
epoch. Writes go to a temporary name and are renamed into place, so DataLoader workers can
share a cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from fedmirasol.data.media.decode import DecodedMedia, DecodeSettings
from fedmirasol.data.media.errors import MediaError

CACHE_VERSION = 1  # bump when the decoded content would change for the same settings
DEFAULT_CACHE_DIR = (
    Path(os.environ.get("FEDMIRASOL_CACHE", Path.home() / ".cache" / "fedmirasol")) / "decode"
)

_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> content digest


def content_digest(path: str | Path) -> str:
    """BLAKE2b of the file's bytes, remembered per (path, size, mtime) within a process."""
    stat = os.stat(path)
    memo = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _digests:
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _digests[memo] = digest.hexdigest()
    return _digests[memo]


class DecodeCache:
    """Decoded media under `root`, one ``.npz`` (or ``.err``) per (content, settings)."""

    def __init__(self, root: str | Path = DEFAULT_CACHE_DIR) -> None:
        self.root = Path(root)

    def key(
        self, path: str | Path, settings: DecodeSettings, audio_path: str | Path | None = None
    ) -> str | None:
        """The entry's name, or None when a file is missing (nothing to key on)."""
        try:
            parts = [content_digest(path), content_digest(audio_path) if audio_path else ""]
        except OSError:
            return None
        description = json.dumps([CACHE_VERSION, parts, dataclasses.asdict(settings)], sort_keys=True)
        return hashlib.blake2b(description.encode(), digest_size=20).hexdigest()

    def load(
        self, key: str, path: str | Path, audio_path: str | Path | None = None
    ) -> DecodedMedia | MediaError | None:
        """The cached decode, the cached error, or None.

        An error names the file as it is called now (`path`, or `audio_path` when the separate
        audio file was the bad one): the same bytes may sit under another name.
        """
        error_file = self._file(key, ".err")
        if error_file.exists():
            cached = json.loads(error_file.read_text())
            bad = audio_path if cached.get("file") == "audio" and audio_path else path
            return MediaError(bad, cached["kind"], cached["detail"])
        data_file = self._file(key, ".npz")
        if not data_file.exists():
            return None
        with np.load(data_file) as entry:
            audio = entry["audio"] if bool(entry["audio_present"]) else None
            return DecodedMedia(
                frames=entry["frames"],
                frame_times=entry["frame_times"],
                audio=audio,
                fps=float(entry["fps"]),
                sample_rate=int(entry["sample_rate"]),
            )

    def store(self, key: str, decoded: DecodedMedia) -> None:
        audio = decoded.audio if decoded.audio is not None else np.zeros(0, dtype=np.float32)
        self._write(
            key,
            ".npz",
            lambda handle: np.savez(
                handle,
                frames=decoded.frames,
                frame_times=decoded.frame_times,
                audio=audio,
                audio_present=decoded.audio is not None,
                fps=decoded.fps,
                sample_rate=decoded.sample_rate,
            ),
        )

    def store_error(self, key: str, error: MediaError, audio_path: str | Path | None = None) -> None:
        """Remember that the entry fails, and whether its audio file was the culprit."""
        file = "audio" if audio_path is not None and error.path == str(audio_path) else "video"
        payload = json.dumps({"kind": error.kind, "detail": error.detail, "file": file}).encode()
        self._write(key, ".err", lambda handle: handle.write(payload))

    def _file(self, key: str, suffix: str) -> Path:
        return self.root / key[:2] / f"{key}{suffix}"

    def _write(self, key: str, suffix: str, write) -> None:
        target = self._file(key, suffix)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as handle:
            write(handle)
        os.replace(temporary, target)
