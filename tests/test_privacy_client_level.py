"""Client-level DP: update clipping, aggregate noise, and its accountant."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest

from fedmirasol.privacy.client_level import (
    ClientLevelAccountant,
    clip_update,
    noise_aggregate,
    noise_std,
)


def norm(values: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum(np.square(v, dtype=np.float64)) for v in values.values())))


def test_clipping_bounds_the_whole_update_and_keeps_its_direction():
    rng = np.random.default_rng(0)
    update = {"a": rng.normal(size=(4, 5)).astype(np.float32),
              "b": rng.normal(size=7).astype(np.float32)}
    clipped, before = clip_update(update, 0.5)
    assert before == pytest.approx(norm(update), rel=1e-5)
    assert norm(clipped) == pytest.approx(0.5, rel=1e-5)
    np.testing.assert_allclose(clipped["a"] / 0.5 * before, update["a"], rtol=1e-4, atol=1e-5)
    small, _ = clip_update({"a": np.full(3, 0.01, np.float32)}, 1.0)
    np.testing.assert_array_equal(small["a"], np.full(3, 0.01, np.float32))  # within bound
    assert update["a"] is not clipped["a"]  # the caller's arrays are untouched
    with pytest.raises(ValueError, match="non-finite"):
        clip_update({"a": np.array([np.nan], np.float32)}, 1.0)


def test_aggregate_noise_has_std_z_c_over_m():
    np.random.seed(0)
    zeros = {"w": np.zeros(200_000, np.float32)}
    noised = noise_aggregate(zeros, clip_norm=2.0, noise_multiplier=1.5, num_sampled=10)
    assert noise_std(2.0, 1.5, 10) == pytest.approx(0.3)
    assert float(np.std(noised["w"])) == pytest.approx(0.3, rel=0.01)
    assert float(np.abs(zeros["w"]).max()) == 0.0


def test_client_level_epsilon_matches_dp_accounting_and_survives_a_restart():
    accountant = ClientLevelAccountant(num_clients=100, delta=1e-5)
    epsilons = [accountant.record_round(1.2, 10) for _ in range(4)]
    assert all(a < b for a, b in zip(epsilons, epsilons[1:]))
    # independent: dp-accounting's RDP accountant with the event written out by hand
    reference = dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        100, 10, dp_accounting.GaussianDpEvent(1.2 / 2))  # sensitivity 2C for replace-one
    reference.compose(event, 4)
    assert epsilons[-1] == pytest.approx(reference.get_epsilon(1e-5), rel=0.01)
    restored = ClientLevelAccountant(num_clients=100, delta=1e-5)
    restored.load_state_dict(accountant.state_dict())
    assert restored.epsilon() == epsilons[-1]
    assert restored.record_round(1.2, 10) > epsilons[-1]


def test_a_smaller_draw_is_accounted_at_least_at_its_real_rate():
    full, shrunk = ClientLevelAccountant(10, 1e-5), ClientLevelAccountant(10, 1e-5)
    full.record_round(1.0, 3)
    shrunk.record_round(1.0, 3, population=7)  # 3 of 7: rate 0.43, composed as 5 of 10
    as_five = ClientLevelAccountant(10, 1e-5)
    as_five.record_round(1.0, 5)
    assert shrunk.epsilon() == as_five.epsilon() > full.epsilon()
    with pytest.raises(ValueError):
        shrunk.record_round(1.0, 8, population=7)


def test_an_update_within_the_rounding_slack_is_clipped_to_the_bound(tmp_path,
                                                                     monkeypatch) -> None:
    from flwr.app import Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedmirasol.core.parameters import from_record, to_record
    from fedmirasol.config import load_config
    from fedmirasol.privacy.client_level import get_norm
    from fedmirasol.privacy.server_side import CLIP_SLACK, ServerPrivacy

    for field in ("_run_id", "_task_id", "_node_id"):  # restored after the test
        monkeypatch.setattr(TaskIdentity, field, 1)
    config = load_config(None, ["privacy.client-level=true", "privacy.client-clip-norm=1.0"])
    privacy = ServerPrivacy(config, tmp_path, ["w"])
    replies = []
    for scale in (1 + CLIP_SLACK / 2, 1 + 2 * CLIP_SLACK, 0.5):
        update = {"w": np.full(4, scale / 2, np.float32)}  # L2 norm = scale
        replies.append(Message(RecordDict({"arrays": to_record(update)}), dst_node_id=1,
                               message_type=MessageType.TRAIN))
    accepted, rejected = privacy.check_clipped(replies, {})
    norms = [get_norm(list(from_record(r.content.array_records["arrays"]).values()))
             for r in accepted]
    assert len(rejected) == 1 and "exceeds privacy.client-clip-norm" in rejected[0].reason
    assert norms[0] <= 1.0 + 1e-7 and norms[1] == pytest.approx(0.5)
