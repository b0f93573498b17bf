"""`fedmirasol privacy-audit` end to end on tiny runs (in process, CPU): the audit's power
without DP, its soundness under DP, a mechanism broken on purpose caught, the canaries'
secrecy, and canaries kept out of every reported accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmirasol.cli import main as cli_main
from fedmirasol.client.site import apply_site
from fedmirasol.config import load_config
from fedmirasol.engines.audit import privacy_audit
from fedmirasol.errors import ConfigError
from fedmirasol.privacy.accountant_state import new_accountant
from fedmirasol.privacy.audit.canaries import CanaryPlan, client_file, read_client_canaries
from fedmirasol.privacy.calibration import SamplingPlan
from fedmirasol.privacy.dp_training import train_private
from fedmirasol.runs import run_dir as rundir
from fedmirasol.task import data as task_data
from fedmirasol.testing import broken_dp
from fedmirasol.testing.in_process import run_in_process
from privacy_fixtures import clips, sgd, snapshot, tiny_model

torch.set_num_threads(1)

# The audit's own design (simulations/audit.toml, smaller): few real clips, many canaries,
# plain SGD with a small step, two local epochs so nearly every included canary is sampled.
AUDIT = ["num-rounds=2", "data.num-clients=2", "data.clips-per-client=8",
         "data.partitioner='iid'", "data.test-clips=4", "model.num-frames=8",
         "client.batch-size=8", "client.local-epochs=2", "client.threads=1",
         "client.optimizer='sgd'", "client.lr=0.0001", "strategy.min-train-nodes=1",
         "strategy.min-available-nodes=1", "strategy.min-evaluate-nodes=1", "audit.canaries=64"]


def audit_run(tmp_path: Path, *overrides: str) -> tuple[Path, dict]:
    config = load_config(None, AUDIT + [f"output.runs-dir='{tmp_path}'", *overrides])
    return privacy_audit(config, engine=run_in_process, progress=None)


@pytest.fixture(scope="module")
def no_dp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return audit_run(tmp_path_factory.mktemp("no-dp"), "privacy.enabled=false")


@pytest.fixture(scope="module")
def dp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return audit_run(tmp_path_factory.mktemp("dp"), "privacy.enabled=true",
                     "privacy.target-epsilon=1")


@pytest.mark.slow
def test_without_dp_the_canaries_show_epsilon_at_least_1(no_dp) -> None:
    run_dir, table = no_dp
    assert table["epsilon-lower-bound"] >= 1.0
    assert table["accountant-epsilon"] is None
    assert table["m"] == 64 and 0 < table["v"] <= table["r"] <= 64
    on_disk = json.loads((run_dir / "audit.json").read_text())
    assert on_disk["epsilon-lower-bound"] == table["epsilon-lower-bound"]
    assert len(on_disk["canaries"]) == 64
    assert (run_dir / "plots" / "audit-scores.png").stat().st_size > 10_000
    report = rundir.read_report(run_dir)
    assert report["audit"]["model_not_for_use"] is True


@pytest.mark.slow
def test_under_dp_the_bound_stays_under_the_accountant(dp, no_dp) -> None:
    _, table = dp
    assert table["accountant-epsilon"] == pytest.approx(1.0, abs=0.05)
    assert table["epsilon-lower-bound"] <= table["accountant-epsilon"]
    assert table["epsilon-lower-bound"] < no_dp[1]["epsilon-lower-bound"]
    assert table["exceeds-accountant"] is False


@pytest.mark.slow
def test_privacy_report_prints_the_audit_beside_the_accountant(dp, capsys) -> None:
    run_dir, table = dp
    assert cli_main(["privacy-report", str(run_dir), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "empirical audit (sample-level DP-SGD, unit: clip" in out
    assert f"m = 64 canaries, r = {table['r']} guesses, v = {table['v']} correct" in out
    assert "accountant's epsilon: " in out and "not for use" in out
    assert cli_main(["privacy-report", str(run_dir), "--no-plot", "--json"]) == 0
    audit = json.loads(capsys.readouterr().out)["audit"]
    assert audit["epsilon-lower-bound"] == table["epsilon-lower-bound"]
    assert "canaries" not in audit


@pytest.mark.slow
def test_no_inclusion_bit_is_in_the_run_before_audit_json(dp) -> None:
    run_dir, table = dp
    config = rundir.read_config(run_dir)
    assert config.audit.canary_dir == ""  # the clients' folder was never the server's
    for path in run_dir.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl") and path.name != "audit.json":
            assert "included" not in path.read_text(), path
    assert sum(c["included"] for c in table["canaries"]) == sum(
        1 for c in table["canaries"] if c["included"])


def test_each_client_file_holds_only_its_included_canaries(tmp_path: Path) -> None:
    config = load_config(None, ["model.num-frames=8"])
    plan = CanaryPlan.draw(24, 3, 4, "noise")
    held = plan.write_client_files(tmp_path, config.model.mirasol)
    for client in range(3):
        expected = [i for i in range(24) if plan.owners[i] == client and plan.included[i]]
        samples, ids = read_client_canaries(tmp_path, client)
        assert ids == expected
        assert held.get(client, 0) == len(expected)
        assert client_file(tmp_path, client).is_file() == bool(expected)
        for sample, index in zip(samples, ids):  # the same clip the auditor scores
            assert torch.equal(sample["video"], plan.samples(config.model.mirasol,
                                                             [index])[0]["video"])
    # the bits come from the OS's CSPRNG: two plans are not the same draw
    assert not np.array_equal(plan.included, CanaryPlan.draw(24, 3, 4, "noise").included)


def test_only_the_node_config_names_a_canary_folder(tmp_path: Path) -> None:
    sent = load_config(None, [f"audit.canary-dir='{tmp_path}'"])
    assert apply_site(sent, {}).audit.canary_dir == ""
    assert apply_site(sent, {"audit.canary-dir": str(tmp_path)}).audit.canary_dir == \
        str(tmp_path)


def test_canaries_join_the_training_split_only(tmp_path: Path) -> None:
    config = load_config(None, AUDIT)
    plan = CanaryPlan.draw(16, 2, config.model.mirasol.num_classes, "noise")
    plan.write_client_files(tmp_path, config.model.mirasol)
    site = apply_site(config, {"audit.canary-dir": str(tmp_path)})
    for client in range(2):
        plain = task_data.client_data(config, client)
        audited = task_data.client_data(site, client)
        count = int(((plan.owners == client) & plan.included).sum())
        assert len(audited.train) == len(plain.train) + count
        assert len(audited.val) == len(plain.val)
        assert all(torch.equal(audited.val[i]["video"], plain.val[i]["video"])
                   for i in range(len(plain.val)))
    with pytest.raises(FileNotFoundError, match="canary-dir"):
        task_data.client_data(apply_site(config, {"audit.canary-dir": str(tmp_path / "x")}),
                              0)


def test_an_audit_refuses_what_it_cannot_audit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="audit.level"):
        privacy_audit(load_config(None, AUDIT + ["audit.level='client'"]),
                      engine=run_in_process, progress=None)
    with pytest.raises(ConfigError, match="audit.score-parameters"):
        privacy_audit(load_config(None, AUDIT + ["audit.score-parameters='nothing.*'"]),
                      engine=run_in_process, progress=None)
    for setting in ("secagg.enabled=true", "he.enabled=true", "compression.codec='top-k'"):
        assert cli_main(["privacy-audit", "--set", setting]) == 2


# Mechanisms broken on purpose, in this process only (fedmirasol.testing.broken_dp): the
# accountant is told one mechanism and the training runs another. The audit must put its lower
# bound above the reported epsilon.
@pytest.mark.slow
@pytest.mark.parametrize("broken", [broken_dp.weak_noise, broken_dp.clipping_off])
def test_a_broken_mechanism_is_caught(broken, tmp_path: Path) -> None:
    with broken():
        _, table = audit_run(tmp_path, "privacy.enabled=true", "privacy.target-epsilon=0.5",
                             "privacy.max-grad-norm=0.01", "client.lr=0.01")
    assert table["accountant-epsilon"] <= 0.5
    assert table["epsilon-lower-bound"] > table["accountant-epsilon"]
    assert table["exceeds-accountant"] is True


def test_each_clip_twice_doubles_every_clips_share_of_a_step() -> None:
    """The break reaches every clip (canaries included): without noise, a full-batch step
    moves the model exactly twice as far as the correct one (sensitivity 2 clip norms where
    the accountant is told 1)."""
    data = clips(4)

    def step() -> torch.Tensor:
        model = tiny_model()
        before = snapshot(model)
        train_private(model, data, sgd(model, lr=1.0), accountant=new_accountant("rdp"),
                      plan=SamplingPlan.for_round(4, 4, 1), epochs=1, noise_multiplier=0.0,
                      max_grad_norm=0.01, generator=torch.Generator().manual_seed(0))
        after = snapshot(model)
        return torch.cat([(after[n] - before[n]).flatten() for n in before])

    correct = step()
    with broken_dp.each_clip_twice():
        doubled = step()
    assert 0.005 < float(correct.norm()) <= 0.01 * (1 + 1e-4)
    # float32 parameters: the moves agree to their rounding (~1e-7 per coordinate)
    assert float(doubled.norm() / correct.norm()) == pytest.approx(2.0, rel=1e-2)
    assert float(torch.nn.functional.cosine_similarity(doubled, correct, dim=0)) > 0.999


@pytest.mark.slow
def test_client_level_audit_sees_weak_noise_and_respects_real_noise(tmp_path: Path) -> None:
    client_level = ["audit.level='client'", "privacy.client-level=true", "data.num-clients=4",
                    "privacy.client-clip-norm=0.1", "audit.canaries=64"]
    _, weak = audit_run(tmp_path / "weak", *client_level, "privacy.client-noise-multiplier=0.01")
    _, real = audit_run(tmp_path / "real", *client_level, "privacy.client-noise-multiplier=2")
    assert weak["epsilon-lower-bound"] >= 1.0
    assert real["epsilon-lower-bound"] <= real["accountant-epsilon"]
    assert real["epsilon-lower-bound"] <= real["canary-accountant-epsilon"]
    # the estimate: infinite (null in audit.json) when the cosines are told apart at once
    assert weak["epsilon-estimate"] is None or weak["epsilon-estimate"] > real["epsilon-estimate"]
