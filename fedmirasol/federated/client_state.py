"""What a client keeps between rounds, in Flower's `context.state`.

The local (never shared) parameters live in ``context.state["local-params"]`` as an
ArrayRecord; later stages add their own records (an Opacus accountant, a personal model).
In simulation the whole state can be mirrored to a directory so a resumed run picks up where
the interrupted one left off; a deployed client would point this at its own disk.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from flwr.app import RecordDict

from fedmirasol.federated.parameters import NumpyState, from_record, to_record

LOCAL_PARAMS_KEY = "local-params"


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
    return Path(directory) / f"client-{partition_id:05d}-round-{server_round:05d}.pkl"


def mirror_to_disk(state: RecordDict, directory: str | Path, partition_id: int,
                   server_round: int) -> None:
    """Write the client's array records, as of the end of `server_round`, to `directory`."""
    if not state.array_records:
        return
    path = _state_file(directory, partition_id, server_round)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {key: from_record(record) for key, record in state.array_records.items()}
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as handle:
        pickle.dump(payload, handle)
    tmp.replace(path)


def restore_from_disk(state: RecordDict, directory: str | Path, partition_id: int,
                      up_to_round: int) -> bool:
    """Fill an empty state with the latest mirror from a round <= `up_to_round`.

    True when something was restored (a resumed run); False for a fresh client.
    """
    if state.array_records or not Path(directory).is_dir():
        return False
    candidates = sorted(
        (int(path.stem.rsplit("-", 1)[1]), path)
        for path in Path(directory).glob(f"client-{partition_id:05d}-round-*.pkl")
    )
    candidates = [(r, path) for r, path in candidates if r <= up_to_round]
    if not candidates:
        return False
    with candidates[-1][1].open("rb") as handle:
        payload: dict[str, NumpyState] = pickle.load(handle)
    for key, values in payload.items():
        state[key] = to_record(values)
    return True
