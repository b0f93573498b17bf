"""The bounds secure aggregation keeps: under client-level DP the quantized update's L2 norm
never exceeds the clip norm the accountant uses (at 8 and 16 bits, 2.1M parameters, and in the
worst case by construction); the sum field is sized from the weight bound and the number of
clients, and a configuration no field can hold is refused naming its keys."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.config import load_config
from fedmirasol.config.secagg import sum_field_bits
from fedmirasol.errors import ConfigError
from fedmirasol.secagg import client as secagg_client
from fedmirasol.secagg.quantization import Quantizer
from secagg_standins import SPEC, Clients, aggregator, max_error, train_messages

CLIP = 0.5


def clipped(d: int, seed: int) -> np.ndarray:
    """A float32 update of L2 norm CLIP (as `privacy.client_level.clip_update` leaves it)."""
    x = np.random.default_rng(seed).standard_normal(d).astype(np.float32)
    return (x * (CLIP / np.linalg.norm(x.astype(np.float64)))).astype(np.float32)


def quantized_norm(quantizer: Quantizer, out: np.ndarray) -> float:
    """The decoded update's L2 norm, from the integers exactly."""
    ints = out.view(np.int32).astype(np.int64)
    return math.sqrt(int(np.dot(ints, ints))) / quantizer.scale


class AlwaysAway:
    """A rounding 'generator' that sends every positive value up: the worst case."""

    @staticmethod
    def random(size: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return np.full(size, 1 - 2 ** -40)
        out.fill(1 - 2 ** -40)
        return out


@pytest.mark.parametrize("bits", [8, 16])
def test_the_quantized_update_keeps_the_clip_norm_at_2_1m_parameters(bits: int) -> None:
    d = 2_100_000
    quantizer = Quantizer(CLIP, bits)
    for seed in (0, 1):
        update = clipped(d, seed)
        plain, bounded = np.zeros(d, np.uint32), np.zeros(d, np.uint32)
        quantizer.encode([update], 1, plain, np.random.default_rng(seed))
        quantizer.encode([update], 1, bounded, np.random.default_rng(seed), max_norm=CLIP)
        assert quantized_norm(quantizer, plain) > CLIP  # rounding alone exceeds the clip
        assert quantized_norm(quantizer, bounded) <= CLIP
        if bits == 16:  # and the bounded encoding stays close to the update
            decoded = quantizer.decode(bounded, 1).astype(np.float64)
            assert np.linalg.norm(decoded - update) < 0.02 * CLIP


@pytest.mark.parametrize("bits", [8, 16])
def test_the_worst_case_rounding_is_pulled_back_within_the_clip(bits: int) -> None:
    d = 50_000  # every value positive and rounded up: sqrt(d) steps over the norm
    update = np.full(d, CLIP / math.sqrt(d) * (1 - 1e-7), np.float32)
    quantizer = Quantizer(CLIP, bits)
    plain, bounded = np.zeros(d, np.uint32), np.zeros(d, np.uint32)
    quantizer.encode([update], 1, plain, AlwaysAway())
    quantizer.encode([update], 1, bounded, AlwaysAway(), max_norm=CLIP)
    rounded_up = np.ceil(update.astype(np.float64) * quantizer.scale) / quantizer.scale
    assert quantized_norm(quantizer, plain) == pytest.approx(np.linalg.norm(rounded_up))
    assert quantized_norm(quantizer, plain) > CLIP
    assert quantized_norm(quantizer, bounded) <= CLIP


def test_clients_bound_the_norm_inside_a_secure_round(monkeypatch: pytest.MonkeyPatch) -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    encode, norms = Quantizer.encode, []

    def spy(self, arrays, weight, out, rng, max_norm=None):  # noqa: ANN001, ANN202
        encode(self, arrays, weight, out, rng, max_norm=max_norm)
        norms.append((max_norm, quantized_norm(self, out)))

    monkeypatch.setattr(secagg_client.Quantizer, "encode", spy)
    clients = Clients()
    for pid, update in clients.updates.items():  # clipped to CLIP, as client-level DP does
        flat = clipped(sum(int(np.prod(s)) for _, s in SPEC), pid)
        clients.updates[pid] = {"a": flat[:600].reshape(30, 20), "b": flat[600:]}
    result = aggregator(CLIP, "equal", max_norm=CLIP, bits=8).run(
        clients.grid, train_messages(), 10, 1)
    assert result.failure is None and len(norms) == 5
    assert all(bound == CLIP and norm <= CLIP for bound, norm in norms)
    assert max_error(result.mean, clients.mean(list(range(5)), weighted=False)) < 5 * CLIP / 128


def test_the_sum_field_is_sized_from_the_weight_bound_and_the_clients() -> None:
    assert sum_field_bits(16, 1, 1000) == 32  # equal weights
    assert sum_field_bits(16, 65_535 // 5, 5) == 32
    assert sum_field_bits(16, 100_000, 5) == 64  # 500,000 clips: the 64-bit field
    assert sum_field_bits(16, 100_000, 1_000_000) == 64
    with pytest.raises(ConfigError, match="needs 65.0 bits, more than the 64-bit field: lower "
                                          "secagg.bits or strategy.max-num-examples"):
        sum_field_bits(30, 2 ** 31, 16)
    settings = {"secagg.enabled": "true", "secagg.bits": "30", "data.num-clients": "16",
                "strategy.max-num-examples": str(2 ** 31)}
    with pytest.raises(ConfigError, match="strategy.max-num-examples"):
        load_config(None, [f"{k}={v}" for k, v in settings.items()])
