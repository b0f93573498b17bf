"""LEAF's JSON files, indexed by the byte offsets of each user's data so one user is read alone.

A LEAF file is one JSON object: ``users`` (ids), ``num_samples`` (one count per user),
``user_data`` (user -> ``{"x": [...], "y": [...]}``) and optionally ``hierarchies``. FEMNIST's
files hold hundreds of MB each, so loading a file whole for every client (what LEAF's own
``read_dir`` does) costs memory and minutes per process. Here a file is scanned once: a regular
expression walks its brackets and quotes (over an mmap, never holding the file in memory) and
records where every top-level value and every user's value begins and ends. The index is kept
on disk (``$FEDMIRASOL_CACHE/leaf-index``, keyed by the file's path, size and modification
time); reading a user afterwards is one seek and one ``json.loads`` of its bytes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmirasol.errors import ConfigError

INDEX_VERSION = 1
REQUIRED_KEYS = ("users", "num_samples", "user_data")

# A backslash escape (two bytes, only ever inside a string) or a structural byte.
_TOKENS = re.compile(rb'\\.|["\[\]{}]', re.DOTALL)
_KEY_COLON = re.compile(rb"\s*:")


class LeafFormatError(ConfigError):
    """A LEAF file that does not hold what LEAF's format promises; names the file (and the
    user, when one user's entry is at fault)."""

    def __init__(self, path: str | Path, problem: str, user: str | None = None) -> None:
        where = f"LEAF file {path}" + (f", user {user!r}" if user is not None else "")
        super().__init__(f"{where}: {problem}")
        self.path, self.user = str(path), user


@dataclass(frozen=True)
class FileIndex:
    """Where each user's data lies in one LEAF file, and the file's per-user counts."""

    path: str
    users: tuple[str, ...]
    num_samples: dict[str, int]
    hierarchies: dict[str, Any]
    spans: dict[str, tuple[int, int]]  # user -> [start, end) byte offsets of its value

    def read(self, user: str) -> dict[str, Any]:
        """The user's ``{"x": [...], "y": [...]}`` exactly as the file holds it, checked against
        ``num_samples`` (one seek and one parse)."""
        start, end = self.spans[user]
        with open(self.path, "rb") as handle:
            handle.seek(start)
            raw = handle.read(end - start)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as error:
            raise LeafFormatError(self.path, f"its data is not valid JSON ({error})", user) from None
        if not isinstance(value, dict) or "x" not in value or "y" not in value:
            raise LeafFormatError(self.path, "its entry in user_data needs both 'x' and 'y'", user)
        x, y = value["x"], value["y"]
        if not isinstance(x, list) or not isinstance(y, list):
            raise LeafFormatError(self.path, "'x' and 'y' must be lists", user)
        if len(x) != len(y):
            raise LeafFormatError(self.path, f"'x' holds {len(x)} samples but 'y' {len(y)}", user)
        if len(x) != self.num_samples[user]:
            raise LeafFormatError(self.path, f"num_samples says {self.num_samples[user]} but "
                                  f"'x' holds {len(x)} samples", user)
        return value


def cache_root() -> Path:
    """Where indexes are kept: ``$FEDMIRASOL_CACHE/leaf-index`` (default ``~/.cache/fedmirasol``)."""
    base = os.environ.get("FEDMIRASOL_CACHE") or Path.home() / ".cache" / "fedmirasol"
    return Path(base) / "leaf-index"


def index_file(path: str | Path) -> FileIndex:
    """The index of one LEAF JSON file: built once, then read from the cache on disk."""
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"LEAF file {path} does not exist") from None
    return _index_cached(str(resolved), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _index_cached(path: str, size: int, mtime_ns: int) -> FileIndex:
    key = hashlib.blake2b(json.dumps([INDEX_VERSION, path, size, mtime_ns]).encode(),
                          digest_size=16).hexdigest()
    stored = cache_root() / f"{key}.json"
    if stored.is_file():
        try:
            return _from_json(path, json.loads(stored.read_text()))
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache entry: build it again
    index = _build(path, size)
    stored.parent.mkdir(parents=True, exist_ok=True)
    temporary = stored.with_name(f"{stored.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(_to_json(index)))
    os.replace(temporary, stored)
    return index


def _to_json(index: FileIndex) -> dict[str, Any]:
    return {"users": list(index.users), "num_samples": index.num_samples,
            "hierarchies": index.hierarchies,
            "spans": {user: list(span) for user, span in index.spans.items()}}


def _from_json(path: str, stored: dict[str, Any]) -> FileIndex:
    return FileIndex(path=path, users=tuple(stored["users"]),
                     num_samples={u: int(n) for u, n in stored["num_samples"].items()},
                     hierarchies=dict(stored["hierarchies"]),
                     spans={u: (int(s), int(e)) for u, (s, e) in stored["spans"].items()})


def _build(path: str, size: int) -> FileIndex:
    if size == 0:
        raise LeafFormatError(path, "the file is empty")
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        top, spans = _scan(path, buf)
        missing = [key for key in REQUIRED_KEYS if key not in top]
        if missing:
            raise LeafFormatError(path, f"missing {', '.join(map(repr, missing))} (a LEAF file "
                                  f"holds {', '.join(REQUIRED_KEYS)})")
        users = _top_value(path, buf, top, "users")
        counts = _top_value(path, buf, top, "num_samples")
        hierarchies = _top_value(path, buf, top, "hierarchies") if "hierarchies" in top else None
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        raise LeafFormatError(path, "'users' must be a list of user ids (strings)")
    if not isinstance(counts, list) or len(counts) != len(users):
        raise LeafFormatError(path, f"'num_samples' must hold one count per user ({len(users)} "
                              "users)")
    for user, count in zip(users, counts):
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise LeafFormatError(path, f"num_samples holds {count!r}, not a count", user)
    if len(set(users)) != len(users):
        twice = next(u for u in users if users.count(u) > 1)
        raise LeafFormatError(path, "listed twice in 'users'", twice)
    for user in users:
        if user not in spans:
            raise LeafFormatError(path, "listed in 'users' but has no entry in 'user_data'", user)
    for user in spans:
        if user not in set(users):
            raise LeafFormatError(path, "has an entry in 'user_data' but is not in 'users'", user)
    groups = {}
    if hierarchies is not None:
        if not isinstance(hierarchies, list) or len(hierarchies) != len(users):
            raise LeafFormatError(path, "'hierarchies' must hold one entry per user")
        groups = dict(zip(users, hierarchies))
    return FileIndex(path=path, users=tuple(users), num_samples=dict(zip(users, counts)),
                     hierarchies=groups, spans=spans)


def _top_value(path: str, buf: mmap.mmap, top: dict[str, tuple[int, int]], key: str) -> Any:
    start, end = top[key]
    try:
        return json.loads(buf[start:end])
    except json.JSONDecodeError as error:
        raise LeafFormatError(path, f"{key!r} is not valid JSON ({error})") from None


def _scan(path: str, buf: mmap.mmap) -> tuple[dict[str, tuple[int, int]],
                                             dict[str, tuple[int, int]]]:
    """(top-level key -> span of its value, user -> span of its value in ``user_data``).

    Spans are [start, end) byte offsets of arrays or objects; brackets inside strings and
    escaped quotes are skipped. Top-level values that are not arrays or objects get no span.
    """
    top: dict[str, tuple[int, int]] = {}
    users: dict[str, tuple[int, int]] = {}
    depth = 0
    in_string = False
    string_start = value_start = user_start = 0
    top_key: str | None = None
    user_key: str | None = None
    in_user_data = False
    for match in _TOKENS.finditer(buf):
        token = match.group()
        if in_string:
            if token == b'"':
                in_string = False
                key = _key_at(buf, string_start, match.end(), depth, in_user_data)
                if key is not None:
                    if depth == 1:
                        top_key = key
                    else:
                        user_key = key
            continue
        if token == b'"':
            in_string, string_start = True, match.start()
        elif token in (b"[", b"{"):
            depth += 1
            if depth == 2 and top_key is not None:
                value_start = match.start()
                in_user_data = top_key == "user_data" and token == b"{"
            elif depth == 3 and in_user_data:
                user_start = match.start()
        elif token in (b"]", b"}"):
            if depth == 3 and in_user_data and user_key is not None:
                if user_key in users:
                    raise LeafFormatError(path, "appears twice in 'user_data'", user_key)
                users[user_key], user_key = (user_start, match.end()), None
            elif depth == 2 and top_key is not None:
                top[top_key], top_key, in_user_data = (value_start, match.end()), None, False
            depth -= 1
            if depth < 0:
                raise LeafFormatError(path, f"unbalanced bracket at byte {match.start()}")
        elif token.startswith(b"\\"):
            raise LeafFormatError(path, f"a backslash outside a string at byte {match.start()}")
    if depth != 0 or in_string:
        raise LeafFormatError(path, "the JSON ends early (truncated file?)")
    if not top and not users:
        raise LeafFormatError(path, "not a JSON object")
    return top, users


def _key_at(buf: mmap.mmap, start: int, end: int, depth: int, in_user_data: bool) -> str | None:
    """The string [start, end) decoded, if it is an object key at a depth that matters (the
    top level, or directly inside ``user_data``)."""
    if depth != 1 and not (depth == 2 and in_user_data):
        return None
    if not _KEY_COLON.match(buf, end):
        return None
    return json.loads(buf[start:end])
