"""Writing LEAF-format JSON: the layout LEAF's ``preprocess.sh -t sample`` produces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

UserData = Mapping[str, Mapping[str, Sequence[Any]]]  # user -> {"x": [...], "y": [...]}


def write_leaf_file(path: str | Path, user_data: UserData,
                    hierarchies: Mapping[str, Any] | None = None) -> Path:
    """One LEAF JSON file: ``users``, ``num_samples``, ``user_data`` (and ``hierarchies``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    users = list(user_data)
    content: dict[str, Any] = {
        "users": users,
        "num_samples": [len(user_data[u]["y"]) for u in users],
        "user_data": {u: {"x": list(user_data[u]["x"]), "y": list(user_data[u]["y"])}
                      for u in users},
    }
    if hierarchies is not None:
        content["hierarchies"] = [hierarchies[u] for u in users]
    with path.open("w") as handle:
        json.dump(content, handle)
    return path


def write_leaf_dataset(root: str | Path, train: UserData, test: UserData,
                       name: str = "all_data") -> tuple[Path, Path]:
    """``root/train/<name>_train.json`` and ``root/test/<name>_test.json``."""
    root = Path(root)
    return (write_leaf_file(root / "train" / f"{name}_train.json", train),
            write_leaf_file(root / "test" / f"{name}_test.json", test))
