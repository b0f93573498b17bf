"""DP wired into the Flower app, end to end in the simulation engine (tiny, 2 clients, CPU).

One run does it all: FedProx with FedBN's local layers, sample-level DP-SGD with a fixed noise
multiplier and an epsilon budget, client-level DP on top; interrupted after round 1 and
resumed. The clients differ in size (15 and 3 training clips), so the small one (sample rate
1) reaches the budget first: it must refuse round 2, be left out of round 3, and the larger
one must keep training with its epsilon growing across the resume.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fedmirasol.cli import main as cli_main
from fedmirasol.task import data as client_data
from fedmirasol.client import state as client_state
from fedmirasol.pretrained.checkpoint import with_digest
from fedmirasol.runs import run_dir as rundir
from fedmirasol.task.model import init_model
from fedmirasol.runs.report import summary_table
from fedmirasol.config import load_config
from fedmirasol.engines.simulation import StopRun, simulate
from fedmirasol.privacy import ledger
from fedmirasol.privacy.calibration import SamplingPlan, planned_epsilon
from fedmirasol.privacy.client_level import ClientLevelAccountant
from fedmirasol.privacy.release_log import ReleaseLog
from pretrained_fixtures import tiny_checkpoint

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SIGMA, BUDGET, DELTA, BATCH = 1.0, 9.0, 1e-5, 4
OVERRIDES = [
    "num-rounds=3", "data.num-clients=2", "data.clips-per-client=12",
    "data.partitioner='quantity'", "data.quantity-alpha=0.3", "data.min-partition-size=4",
    "data.val-fraction=0.25", "data.test-clips=4", "model.num-frames=8",
    f"client.batch-size={BATCH}", "client.local-epochs=1", "client.threads=1",
    "strategy.name='fedprox'", "strategy.proximal-mu=0.1", "split.local='normalization'",
    "strategy.min-train-nodes=1", "strategy.min-available-nodes=1",
    "strategy.min-evaluate-nodes=1", "privacy.enabled=true", f"privacy.noise-multiplier={SIGMA}",
    f"privacy.budget-epsilon={BUDGET}", f"privacy.delta={DELTA}", "privacy.client-level=true",
    "privacy.client-clip-norm=0.05", "privacy.client-noise-multiplier=1.0",
    "privacy.keep-client-rows=true",  # the test reads who took part in which round
]


def round_steps(train_clips: int) -> int:
    """DP-SGD steps of one round, and the one release of its DP loss figures."""
    return SamplingPlan.for_round(train_clips, BATCH, 1).steps + 1


def expected_epsilon(train_clips: int, rounds: int) -> float:
    """Epsilon after `rounds` DP rounds, from Opacus' RDP analysis of the planned steps."""
    plan = SamplingPlan.for_round(train_clips, BATCH, 1)
    return planned_epsilon(SIGMA, plan.sample_rate, round_steps(train_clips) * rounds, DELTA,
                           "rdp")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    config = load_config(None, OVERRIDES + [
        f"output.runs-dir='{tmp_path_factory.mktemp('runs')}'"])
    sizes = [row["train"] for row in client_data.partition_summary(config)]
    assert sizes == [15, 3]
    # The scenario: client 1 fits one round only; client 0 fits all three.
    assert expected_epsilon(3, 1) <= BUDGET < expected_epsilon(3, 2)
    assert expected_epsilon(15, 3) <= BUDGET

    def stop_after_round_1(record: dict) -> None:
        if record["round"] == 1:
            raise StopRun("interrupted by the test")

    with pytest.raises(StopRun):
        simulate(config, progress=stop_after_round_1)
    (run_dir,) = Path(config.output.runs_dir).iterdir()
    assert [r["round"] for r in rundir.read_metrics(run_dir)] == [0, 1]
    assert simulate(resume=run_dir, progress=None) == run_dir
    return run_dir, config


def client_records(run_dir: Path, pid: int) -> list[dict]:
    return [r for r in ledger.read(run_dir) if r["kind"] == "client" and r["partition-id"] == pid]


def test_ledger_epsilon_grows_across_rounds_and_the_resume(run) -> None:
    run_dir, _ = run
    records = client_records(run_dir, 0)
    assert [r["round"] for r in records] == [1, 2, 3]
    assert all(r["trained"] for r in records)
    steps = round_steps(15)
    assert [r["total-steps"] for r in records] == [steps, 2 * steps, 3 * steps]  # never reset
    for rounds, record in enumerate(records, 1):
        assert record["epsilon"] == pytest.approx(expected_epsilon(15, rounds), rel=0.01)
        assert record["epsilon"] <= BUDGET
        assert (record["noise-multiplier"], record["delta"]) == (SIGMA, DELTA)
        assert record["sample-rate"] == pytest.approx(BATCH / 15)
    assert records[0]["epsilon"] < records[1]["epsilon"] < records[2]["epsilon"]


def test_a_client_at_its_budget_does_not_train_and_is_left_out(run) -> None:
    run_dir, _ = run
    first, refused = client_records(run_dir, 1)
    assert (first["round"], first["trained"], first["budget-exhausted"]) == (1, True, False)
    assert (refused["round"], refused["trained"], refused["budget-exhausted"]) == (2, False, True)
    assert refused["epsilon"] == first["epsilon"] <= BUDGET  # nothing spent on refusal
    assert refused["total-steps"] == first["total-steps"]
    rounds = {r["round"]: r for r in rundir.read_metrics(run_dir)}
    assert rounds[1]["participants"] == [0, 1]
    assert (rounds[2]["sampled"], rounds[2]["participants"]) == ([0, 1], [0])
    assert rounds[2]["budget_exhausted"] == [1] and not rounds[2]["rejected"]
    assert (rounds[3]["sampled"], rounds[3]["participants"]) == ([0], [0])  # left out
    # Its release log holds the one round it took.
    log = ReleaseLog.on_disk(run_dir / "client-state" / "privacy" / "client-00001"
                             / "default.jsonl")
    assert sum(steps for _, _, steps in log.history()) == first["total-steps"]
    mirrors = sorted((run_dir / "client-state").glob("client-00001-round-*.safetensors"))
    assert "local-params" in client_state.read_mirror(mirrors[-1])  # FedBN's local layers


def test_client_level_epsilon_is_accounted_every_round(run) -> None:
    run_dir, _ = run
    level = [r for r in ledger.read(run_dir) if r["kind"] == "client-level"]
    assert [(r["round"], r["sampled-clients"], r["num-clients"]) for r in level] == [
        (1, 2, 2), (2, 2, 2), (3, 1, 1)]
    replay = ClientLevelAccountant(2, DELTA)
    for record in level:
        assert record["epsilon"] == pytest.approx(
            replay.record_round(1.0, record["sampled-clients"], record["num-clients"]), rel=1e-9)
    assert level[0]["epsilon"] < level[1]["epsilon"] < level[2]["epsilon"]


def test_report_and_summary_state_the_worst_client(run, capsys) -> None:
    run_dir, _ = run
    report = json.loads((run_dir / "report.json").read_text())
    worst = report["privacy"]["worst_client"]
    assert worst["partition-id"] == 0 and worst["delta"] == DELTA
    assert worst["epsilon"] == client_records(run_dir, 0)[-1]["epsilon"]
    assert report["privacy"]["budget_exhausted"] == [1]
    assert report["privacy"]["client_level"]["round"] == 3
    assert "privacy: worst client 0 at epsilon" in summary_table(run_dir)
    assert cli_main(["privacy-report", str(run_dir)]) == 0
    assert "exhausted" in capsys.readouterr().out


def test_parameters_keep_clean_names(run) -> None:
    run_dir, config = run
    state = torch.load(run_dir / "final_model.pt", weights_only=False)["state_dict"]
    assert set(state) == set(init_model(config).state_dict())
    assert not any("_module" in name for name in state)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_dp_config_loads_with_epsilon_at_most_8(tmp_path: Path) -> None:
    dp_toml = ROOT / "simulations" / "dp.toml"
    with pytest.raises(FileNotFoundError, match="fedmirasol train --public"):
        with_digest(load_config(dp_toml, ['pretrained.checkpoint="no-such-dir/best.pt"']))
    config = with_digest(load_config(dp_toml,
                                     [f'pretrained.checkpoint="{tiny_checkpoint(tmp_path)}"']))
    assert config.pretrained.trainable == "classifier.*"
    privacy = config.privacy
    assert privacy.enabled and 0 < privacy.target_epsilon <= 8
    assert privacy.delta == 1e-5
    assert math.isfinite(privacy.max_grad_norm)


def test_privacy_report_json_is_reproduced_by_dp_accounting(run, capsys) -> None:
    """Every client's epsilon from its ledger history, by an independent accountant."""
    import dp_accounting

    run_dir, _ = run
    assert cli_main(["privacy-report", str(run_dir), "--json", "--no-plot"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "one training clip" in summary["unit"]
    for client in summary["clients"]:
        assert (client["unit"], client["accountant"], client["delta"]) == ("clip", "rdp", DELTA)
        reference = dp_accounting.rdp.RdpAccountant()
        for sigma, q, steps in client["history"]:
            reference.compose(dp_accounting.PoissonSampledDpEvent(
                q, dp_accounting.GaussianDpEvent(sigma)), int(steps))
        assert client["epsilon"] == pytest.approx(reference.get_epsilon(DELTA), rel=0.01)


def test_metrics_hold_no_unnoised_client_figure(run) -> None:
    run_dir, _ = run
    records = rundir.read_metrics(run_dir)[1:]
    for record in records:
        for row in record["clients"].values():
            # no loss, no validation figure; the bytes on the wire are what the server observes
            # of any message it sends or receives (public)
            assert set(row) <= {"train_examples", "bytes_down", "bytes_up"}, row
        # the train loss is the ratio of the noised sums: none when the noised count summed
        # over the clients is not positive (a few clips a client, noise std about 1.4 a count)
        noised = ["train_loss"] if record["train_loss"] is not None else []
        assert record["privacy_figures"]["noised"] == noised
        assert record["federated_accuracy"] is None
    assert any(record["train_loss"] is not None for record in records)
