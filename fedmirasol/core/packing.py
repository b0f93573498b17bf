"""One Flower object per ArrayRecord on a deployment's wire.

Flower sends every `Array` of a message as objects of their own (the array and its chunks),
each one HTTP request per hop: ServerApp -> SuperLink -> SuperNode -> ClientApp, and back
for the reply. The tiny model's 78 tensors make about 160 requests per message and hop
(seconds a message on a loaded machine). `pack` turns each ArrayRecord of two or more arrays
into an ArrayRecord of one array (the arrays' serialized bytes, back to back) and a
ConfigRecord naming, typing and sizing them; `unpack` restores the arrays byte for byte.
Packing changes the encoding only, never a value: what a client releases is decided before
(`fedmirasol.client.release`).

`unpack` checks the description against the bytes before it builds anything (a peer may
lie): sizes that do not add up, duplicate names or a missing description are a
`PackingError` naming the record.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

PACKED_ARRAY = "fedmirasol-packed"  # the one array of a packed ArrayRecord
PACKED_STYPE = "fedmirasol.packed-arrays"  # its serialization type
META_PREFIX = "fedmirasol-packed:"  # + the ArrayRecord's key: its ConfigRecord


class PackingError(ValueError):
    """A packed ArrayRecord whose description does not fit its bytes."""


def _packable(name: str, record: object, content: RecordDict) -> bool:
    return isinstance(record, ArrayRecord) and len(record) >= 2 \
        and META_PREFIX + name not in content


def pack(content: RecordDict) -> RecordDict:
    """`content` with every ArrayRecord of two or more arrays packed (the same object when
    there is none)."""
    if not any(_packable(name, record, content) for name, record in content.items()):
        return content
    packed: dict[str, object] = {}
    for name, record in content.items():
        if not _packable(name, record, content):
            packed[name] = record
            continue
        arrays = list(record.items())
        packed[name] = ArrayRecord({PACKED_ARRAY: Array(
            dtype="uint8", shape=(sum(len(a.data) for _, a in arrays),), stype=PACKED_STYPE,
            data=b"".join(a.data for _, a in arrays))})
        packed[META_PREFIX + name] = ConfigRecord({
            "names": [key for key, _ in arrays],
            "dtypes": [a.dtype for _, a in arrays],
            "stypes": [a.stype for _, a in arrays],
            "ranks": [len(a.shape) for _, a in arrays],
            "dims": [int(d) for _, a in arrays for d in a.shape] or [0],
            "sizes": [len(a.data) for _, a in arrays],
        })
    return RecordDict(packed)  # type: ignore[arg-type]


def is_packed(content: RecordDict) -> bool:
    return any(isinstance(r, ArrayRecord) and list(r.keys()) == [PACKED_ARRAY]
               for r in content.values())


def unpack(content: RecordDict) -> RecordDict:
    """`content` with every packed ArrayRecord restored (the same object when none is)."""
    if not is_packed(content):
        return content
    restored: dict[str, object] = {}
    for name, record in content.items():
        if name.startswith(META_PREFIX):
            continue
        if isinstance(record, ArrayRecord) and list(record.keys()) == [PACKED_ARRAY]:
            meta = content.get(META_PREFIX + name)
            if not isinstance(meta, ConfigRecord):
                raise PackingError(f"packed ArrayRecord {name!r} has no description "
                                   f"({META_PREFIX + name!r})")
            record = _restore(name, record[PACKED_ARRAY], meta)
        restored[name] = record
    return RecordDict(restored)  # type: ignore[arg-type]


def _restore(name: str, packed: Array, meta: ConfigRecord) -> ArrayRecord:
    def listed(key: str, kind: type) -> list:
        values = meta.get(key)
        if not isinstance(values, list) or not all(isinstance(v, kind) for v in values):
            raise PackingError(f"packed ArrayRecord {name!r}: {key!r} is not a list of "
                               f"{kind.__name__}")
        return values

    names, dtypes, stypes = listed("names", str), listed("dtypes", str), listed("stypes", str)
    ranks, dims, sizes = listed("ranks", int), listed("dims", int), listed("sizes", int)
    if packed.stype != PACKED_STYPE:
        raise PackingError(f"packed ArrayRecord {name!r}: serialization {packed.stype!r}, "
                           f"not {PACKED_STYPE!r}")
    count = len(names)
    if not count == len(dtypes) == len(stypes) == len(ranks) == len(sizes) \
            or len(set(names)) != count:
        raise PackingError(f"packed ArrayRecord {name!r}: {count} names (unique: "
                           f"{len(set(names))}) but {len(dtypes)} dtypes, {len(stypes)} "
                           f"stypes, {len(ranks)} ranks, {len(sizes)} sizes")
    if any(r < 0 for r in ranks) or any(s < 0 for s in sizes) or any(d < 0 for d in dims) \
            or sum(ranks) > len(dims) or sum(sizes) != len(packed.data):
        raise PackingError(f"packed ArrayRecord {name!r}: the described sizes "
                           f"({sum(sizes)} bytes) or shapes do not fit its "
                           f"{len(packed.data)} bytes")
    arrays, offset, dim = {}, 0, 0
    for key, dtype, stype, rank, size in zip(names, dtypes, stypes, ranks, sizes):
        shape = tuple(dims[dim:dim + rank])
        arrays[key] = Array(dtype=dtype, shape=shape, stype=stype,
                            data=packed.data[offset:offset + size])
        offset, dim = offset + size, dim + rank
    return ArrayRecord(arrays)
