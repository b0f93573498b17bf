"""The update codecs on their own: unbiased quantization, error feedback that carries what top-k
leaves out, payloads that are what travels (and malformed ones refused), the clip norm kept
under client-level DP, the downlink replica, the residual surviving a resume, config rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.client import state as client_state
from fedmirasol.compression.codec import (
    MalformedPayload, from_payload_record, to_payload_record,
)
from fedmirasol.compression.downlink import DownlinkSender, ReplicaMismatch, open_model
from fedmirasol.compression.lowrank import LowRank
from fedmirasol.compression.quantize import Quantize, pack, unpack
from fedmirasol.compression.sparse import RandomK, TopK
from fedmirasol.compression.uplink import RESIDUAL_KEY, compress_update
from fedmirasol.config import load_config
from fedmirasol.core import vector
from fedmirasol.core.metrics import wire_bytes
from fedmirasol.errors import ConfigError

LAYOUT = [("w", (6, 10)), ("b", (7,)), ("v", (3, 4, 2))]
SIZE = vector.size(LAYOUT)


def update_vector(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(SIZE) * np.linspace(0.01, 1.0, SIZE)).astype(np.float32)


def config(**values: object):  # noqa: ANN201
    return load_config(None, [f"{key}={json.dumps(value)}" for key, value in values.items()])


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_stochastic_quantization_is_unbiased(bits: int) -> None:
    """The mean of many decoded draws equals the input, within a few standard errors of the
    per-value quantization noise (at most half a step)."""
    codec, x, draws = Quantize(bits, bucket_size=16), update_vector(), 2000
    rng = np.random.default_rng(1)
    decoded = np.stack([codec.decode(codec.encode(x, LAYOUT, rng, {}), LAYOUT)
                        for _ in range(draws)])
    steps = codec.encode(x, LAYOUT, rng, {})["step"].max()
    assert np.abs(decoded.mean(axis=0) - x).max() < 5 * (steps / 2) / np.sqrt(draws)
    # every draw lands on the bucket's levels and keeps within its range
    assert decoded.min() >= x.min() - 1e-6 and decoded.max() <= x.max() + 1e-6
    if bits == 8:  # and is precise: error per value within one step
        assert np.abs(decoded[0] - x).max() <= steps * 1.0001


def test_random_k_without_error_feedback_is_unbiased() -> None:
    codec, x, draws = RandomK(0.25, unbiased=True), update_vector(), 2000
    rng = np.random.default_rng(2)
    decoded = np.mean([codec.decode(codec.encode(x, LAYOUT, rng, {}), LAYOUT)
                       for _ in range(draws)], axis=0)
    spread = np.abs(x) * np.sqrt((1 / 0.25 - 1) / draws)  # the scaled value's standard error
    assert (np.abs(decoded - x) <= 5 * spread + 1e-7).all()


def test_codes_pack_into_bits_per_value() -> None:
    codes = np.random.default_rng(3).integers(0, 16, 101).astype(np.uint8)
    packed = pack(codes, 4)
    assert packed.dtype == np.uint8 and packed.size == 51  # two 4-bit codes per byte
    assert (unpack(packed, 4, 101) == codes).all()


def _round(state: RecordDict, update: np.ndarray, server_round: int, **settings: object
           ) -> np.ndarray:
    """One client round under `settings`: what the server decodes from the payload."""
    cfg = config(**{f"compression.{k}": v for k, v in settings.items()})
    record = compress_update(cfg, state, vector.unflatten(update, LAYOUT), 0, server_round)
    codec = TopK(float(settings["fraction"]))
    return from_payload_record(codec, record, LAYOUT)


def test_top_k_with_error_feedback_sends_everything_eventually() -> None:
    """One update, then zero updates: error feedback sends what top-k left out in later rounds
    (the residual carried in the client's state), so the decoded rounds add up to the update;
    without it most of the update never leaves."""
    x = update_vector()
    rounds = int(np.ceil(1 / 0.2))
    for feedback in (True, False):
        state, sent = RecordDict(), np.zeros(SIZE, np.float32)
        for r in range(1, rounds + 1):
            update = x if r == 1 else np.zeros(SIZE, np.float32)
            sent += _round(state, update, r, codec="top-k", fraction=0.2,
                           **{"error-feedback": feedback})
        if feedback:
            np.testing.assert_allclose(sent, x, rtol=0, atol=1e-6)
            residual = state.array_records[RESIDUAL_KEY]["residual"].numpy()
            assert np.abs(residual).max() < 1e-6
        else:
            assert RESIDUAL_KEY not in state.array_records
            assert np.count_nonzero(sent) == int(np.ceil(0.2 * SIZE))
            assert np.linalg.norm(sent - x) > 0.3 * np.linalg.norm(x)


def test_the_residual_survives_a_resume(tmp_path: Path) -> None:
    """The residual is mirrored with the client's state and restored on resume."""
    state = RecordDict()
    _round(state, update_vector(), 1, codec="top-k", fraction=0.2)
    client_state.mirror_to_disk(state, tmp_path, 3, 1)
    restored = RecordDict()
    assert client_state.restore_from_disk(restored, tmp_path, 3, 1)
    np.testing.assert_array_equal(restored.array_records[RESIDUAL_KEY]["residual"].numpy(),
                                  state.array_records[RESIDUAL_KEY]["residual"].numpy())


def test_old_mirrors_no_resume_can_read_are_removed(tmp_path: Path) -> None:
    state = RecordDict()
    _round(state, update_vector(), 1, codec="top-k", fraction=0.2)
    for server_round in (1, 2, 4, 5):
        client_state.mirror_to_disk(state, tmp_path, 0, server_round,
                                    keep_from=server_round - 2)
    kept = sorted(p.name for p in tmp_path.iterdir())
    # round 5 may resume from a checkpoint of round 3 or later: the newest mirror <= 3 stays
    assert kept == [f"client-00000-round-0000{r}.safetensors" for r in (2, 4, 5)]


@pytest.mark.parametrize("codec", [Quantize(2, 16), TopK(0.1), RandomK(0.1, False),
                                   LowRank(2)], ids=lambda c: c.name)
def test_payload_travels_as_packed_arrays_and_decodes_after_flower_serialization(codec) -> None:
    """The payload is the codec's arrays and a header; the bytes counted for the message are
    what Flower serializes, and rebuilding the message from exactly those bytes decodes to
    the same update."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    x = update_vector()
    payload = codec.encode(x, LAYOUT, np.random.default_rng(0), {})
    record = to_payload_record(codec, payload, LAYOUT)
    assert set(record) == {"header", *payload}
    message = Message(RecordDict({"arrays": record, "metrics": MetricRecord({"n": 1})}),
                      dst_node_id=5, message_type="train")
    contents = {oid: part.deflate() for oid, part in get_all_nested_objects(message).items()}
    assert wire_bytes(message) == sum(map(len, contents.values()))
    rebuilt = inflate_object_from_contents(message.object_id, dict(contents))
    decoded = from_payload_record(codec, rebuilt.content.array_records["arrays"], LAYOUT)
    np.testing.assert_array_equal(decoded, codec.decode(payload, LAYOUT))
    assert sum(array.nbytes for array in payload.values()) < x.nbytes  # it is smaller


def test_malformed_payloads_are_refused_by_name() -> None:
    codec = TopK(0.05)  # positions as uint16 indices (fewer bytes than a bitmap here)
    payload = codec.encode(update_vector(), LAYOUT, np.random.default_rng(0), {})
    good = to_payload_record(codec, payload, LAYOUT)
    other = to_payload_record(TopK(0.2), TopK(0.2).encode(update_vector(), LAYOUT,
                                                          np.random.default_rng(0), {}), LAYOUT)
    with pytest.raises(MalformedPayload, match="settings"):
        from_payload_record(codec, other, LAYOUT)
    with pytest.raises(MalformedPayload, match="layout"):
        from_payload_record(codec, good, LAYOUT[:2])
    for key, bad, reason in (("values", np.full(payload["values"].size, np.nan, np.float32),
                              "NaN"),
                             ("positions", payload["positions"][::-1].copy(), "increasing"),
                             ("values", payload["values"][:-1], "expected float32")):
        broken = to_payload_record(codec, {**payload, key: bad}, LAYOUT)
        with pytest.raises(MalformedPayload, match=reason):
            from_payload_record(codec, broken, LAYOUT)


@pytest.mark.parametrize("codec", ["quantize", "top-k", "random-k", "low-rank"])
def test_under_client_level_dp_the_decoded_update_keeps_the_clip_norm(codec: str) -> None:
    cfg = config(**{"compression.codec": codec, "compression.bits": 1, "privacy.client-level":
                    True, "privacy.client-clip-norm": 0.5, "compression.bucket-size": 16})
    x = update_vector()
    x *= 0.5 / np.linalg.norm(x)  # clipped, as the client's task leaves it
    state = RecordDict()
    for r in (1, 2, 3):  # the residual would push later rounds past the bound
        record = compress_update(cfg, state, vector.unflatten(x, LAYOUT), 0, r)
        from fedmirasol.compression.registry import update_codec

        decoded = from_payload_record(update_codec(cfg.compression), record, LAYOUT)
        assert np.linalg.norm(decoded.astype(np.float64)) <= 0.5


def test_low_rank_recovers_a_low_rank_matrix_and_sends_less() -> None:
    layout = [("m", (40, 30))]
    rng = np.random.default_rng(4)
    m = (rng.standard_normal((40, 2)) @ rng.standard_normal((2, 30))).astype(np.float32)
    codec, memory = LowRank(2), {}
    payload = codec.encode(m.reshape(-1), layout, rng, memory)
    assert payload["values"].size == 2 * (40 + 30) and memory["m"].shape == (30, 2)
    np.testing.assert_allclose(codec.decode(payload, layout), m.reshape(-1), atol=1e-4)


def test_downlink_replica_change_same_whole_and_mismatch() -> None:
    rng = np.random.default_rng(5)
    model = {"w": rng.standard_normal((8, 8)).astype(np.float32)}
    sender = DownlinkSender(Quantize(8, 16), seed=0)
    base = RecordDict({"config": __import__("flwr").app.ConfigRecord({"x": 1})})
    client, codec = RecordDict(), Quantize(8, 16)
    sender.update(model)
    first = open_model(sender.content(7, base), client, codec)  # unknown node: whole
    np.testing.assert_array_equal(first["w"], model["w"])
    sender.holders[7] = sender.version
    same = sender.content(7, base)
    assert len(same.array_records["arrays"]) == 0
    np.testing.assert_array_equal(open_model(same, client, codec)["w"], model["w"])
    moved = {"w": model["w"] + 0.01 * rng.standard_normal((8, 8)).astype(np.float32)}
    sender.update(moved)
    change = sender.content(7, base)
    assert change.config_records["downlink"]["kind"] == "change"
    got = open_model(change, client, codec)["w"]
    step = np.ptp(moved["w"] - model["w"]) / 255
    assert np.abs(got - moved["w"]).max() <= step * 1.01  # within one 8-bit step
    with pytest.raises(ReplicaMismatch, match="expects replica version"):
        open_model(change, client, codec)  # applied already: version moved on
    with pytest.raises(ReplicaMismatch, match="holds none"):
        open_model(change, RecordDict(), codec)


def test_config_refuses_codecs_under_secure_aggregation_or_he_and_bad_bits() -> None:
    with pytest.raises(ConfigError, match="lower secagg.bits"):
        config(**{"secagg.enabled": True, "compression.codec": "top-k",
                  "data.num-clients": 3, "strategy.min-train-nodes": 3})
    for key, value in (("compression.codec", "quantize"), ("compression.downlink", "quantize")):
        with pytest.raises(ConfigError, match="cannot be combined with he.enabled"):
            config(**{"he.enabled": True, "server.evaluate-every": 0, key: value})
    with pytest.raises(ConfigError, match="compression.bits"):
        config(**{"compression.bits": 3})
    with pytest.raises(ConfigError, match="compression.codec"):
        config(**{"compression.codec": "topk"})
