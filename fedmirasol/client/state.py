"""What a client keeps between rounds, in Flower's `context.state`.

The local (never shared) parameters live in ``context.state["local-params"]`` as an
ArrayRecord; later stages add their own records (a personal model).
Where a client has a state directory (a simulation's ``client-state/``, a site's
``state-dir``), that directory is the state's home: it is read when a message for this client
arrives and written after training, and nothing of it stays in memory between messages
(`evict`). A simulation of 10,000 virtual clients then holds only the sampled clients' state,
and a resumed run picks up where the interrupted one left off.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flwr.app import RecordDict
from safetensors.numpy import load_file, save_file

from fedmirasol.compression.downlink import REPLICA_KEY
from fedmirasol.core.parameters import NumpyState, from_record, to_record
from fedmirasol.errors import ConfigError

LOCAL_PARAMS_KEY = "local-params"
# Records not mirrored: the downlink replica (the server sends it whole to a client that lost it)
NOT_MIRRORED = (REPLICA_KEY,)


def load_local_params(state: RecordDict) -> NumpyState | None:
    """The client's local parameters, or None before its first round."""
    if LOCAL_PARAMS_KEY not in state.array_records:
        return None
    return from_record(state.array_records[LOCAL_PARAMS_KEY])


def save_local_params(state: RecordDict, values: NumpyState) -> None:
    """Keep the local parameters (nothing is stored when the split keeps none)."""
    if values:
        state[LOCAL_PARAMS_KEY] = to_record(values)


def _state_file(directory: str | Path, partition_id: int, server_round: int) -> Path:
    """The mirror of one client's state after one round (safetensors; the record and array
    names in its metadata). Ids are integers, so the name cannot leave `directory`."""
    return Path(directory) / f"client-{int(partition_id):05d}-round-{int(server_round):05d}" \
        ".safetensors"


def mirror_to_disk(state: RecordDict, directory: str | Path, partition_id: int,
                   server_round: int, keep_from: int | None = None) -> None:
    """Write the client's array records, as of the end of `server_round`, to `directory`.

    `keep_from`: the oldest round a resume can go back to (the server's latest checkpoint is
    never older): this client's mirrors that no resume can read any more (older than its
    newest mirror from a round <= `keep_from`) are removed."""
    records = {key: record for key, record in state.array_records.items()
               if key not in NOT_MIRRORED}
    if not records:
        return
    path = _state_file(directory, partition_id, server_round)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    layout: list[list[str]] = []  # [record key, array name, tensor key]
    for key, record in records.items():
        for name, value in from_record(record).items():
            tensor = f"t{len(layout)}"
            tensors[tensor] = np.ascontiguousarray(value)
            layout.append([key, name, tensor])
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"layout": json.dumps(layout)})
    tmp.replace(path)
    if keep_from is not None:
        _prune(directory, partition_id, keep_from)


def _mirrors(directory: str | Path, partition_id: int) -> list[tuple[int, Path]]:
    """This client's mirror files by round, oldest first."""
    return sorted((int(path.stem.rsplit("-", 1)[1]), path) for path in
                  Path(directory).glob(f"client-{partition_id:05d}-round-*.safetensors"))


def _prune(directory: str | Path, partition_id: int, keep_from: int) -> None:
    mirrors = _mirrors(directory, partition_id)
    needed = [r for r, _ in mirrors if r <= keep_from]
    for server_round, path in mirrors:
        if needed and server_round < needed[-1]:
            path.unlink(missing_ok=True)


def read_mirror(path: Path) -> dict[str, NumpyState]:
    """One mirror file: record key -> array name -> array."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        layout = json.loads((handle.metadata() or {})["layout"])
    tensors = load_file(str(path))
    payload: dict[str, NumpyState] = {}
    for key, name, tensor in layout:
        payload.setdefault(key, {})[name] = tensors[tensor]
    return payload


def evict(state: RecordDict) -> None:
    """Drop the array records kept on disk from the in-memory state; the records never
    mirrored (the downlink replica) and the small config records of a multi-stage protocol
    stay."""
    for key in list(state.array_records):
        if key not in NOT_MIRRORED:
            del state[key]


def restore_from_disk(state: RecordDict, directory: str | Path, partition_id: int,
                      up_to_round: int) -> bool:
    """Fill an empty state with the latest mirror from a round <= `up_to_round` (the state
    that goes with the server's checkpoint). The DP accountant is not among them: it lives in
    the site's release log, which never goes back (`fedmirasol.privacy.release_log`). True
    when something was restored (a resumed run); False for a fresh client.
    """
    if state.array_records or not Path(directory).is_dir():
        return False
    if any(Path(directory).glob(f"client-{partition_id:05d}-round-*.pkl")):
        raise ConfigError(f"{directory} holds client state of an older fedmirasol (pickle "
                          "files); this version does not unpickle files: start a new run")
    candidates = _mirrors(directory, partition_id)
    earlier = [(r, path) for r, path in candidates if r <= up_to_round]
    payload = read_mirror(earlier[-1][1]) if earlier else {}
    if not payload:
        return False
    for key, values in payload.items():
        state[key] = to_record(values)
    return True
