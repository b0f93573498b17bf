"""User errors name their cause in one line (did you mean, the keys and sizes involved); bugs
keep their traceback; `fedmirasol --help` imports no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import fedmirasol.cli.report_cmd as report_cmd
from fedmirasol.cli import build_parser, main
from fedmirasol.errors import ConfigError, UnknownKeyError
from fedmirasol.config import load_config
from fedmirasol.config.sections import DataConfig


def config_error(overrides: list[str]) -> ConfigError:
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    return error.value


@pytest.mark.parametrize("override, message", [
    ("strategy.nme=fedprox", "unknown config key 'strategy.nme' (did you mean 'strategy.name'?)"),
    ("privacy.noise-multipler=2.0", "(did you mean 'privacy.noise-multiplier'?)"),
    ("num-round=3", "unknown config key 'num-round' (did you mean 'num-rounds'?)"),
    ("model.widht=64", "unknown config key 'model.widht' (did you mean 'model.width'?)"),
    ("strateg.name=fedprox", "unknown config section 'strateg' in key 'strateg.name' "
                             "(did you mean 'strategy'?)"),
    ("strategy=fedprox", "'strategy' is a section, not a value"),
])
def test_unknown_keys_and_sections_suggest_the_closest(override: str, message: str) -> None:
    error = config_error([override])
    assert isinstance(error, UnknownKeyError) and isinstance(error, KeyError)
    assert message in str(error)


def test_unknown_choices_suggest_the_closest() -> None:
    assert "got 'fedprx' (did you mean 'fedprox'?)" in str(config_error(["strategy.name=fedprx"]))
    assert "(did you mean 'tiny'?)" in str(config_error(["model.name=tinny"]))
    assert "did you mean" not in str(config_error(["strategy.name=zzzzzz"]))


def test_a_federation_too_small_names_the_keys_not_privacy() -> None:
    message = str(config_error(["data.num-clients=1"]))
    for key in ("data.num-clients = 1", "strategy.min-train-nodes = 2",
                "strategy.min-available-nodes = 2", "strategy.min-evaluate-nodes = 2"):
        assert key in message
    assert "privacy" not in message.lower()
    # evaluation off: its minimum does not count
    message = str(config_error(["data.num-clients=1", "strategy.fraction-evaluate=0.0"]))
    assert "min-evaluate-nodes" not in message
    load_config(None, ["data.num-clients=1", "strategy.min-train-nodes=1",
                       "strategy.min-available-nodes=1", "strategy.min-evaluate-nodes=1"])


def test_bulyan_needs_4f_plus_3_updates() -> None:
    message = str(config_error(["strategy.name=bulyan", "strategy.num-malicious=2"]))
    assert "4 x strategy.num-malicious + 3" in message and "= 11" in message
    assert "data.num-clients = 10" in message and "privacy" not in message.lower()
    load_config(None, ["strategy.name=bulyan", "strategy.num-malicious=1"])  # 10 >= 7


# flwr-datasets warns at each Dirichlet retry before it gives up; the test wants the error
@pytest.mark.filterwarnings("ignore:The specified min_partition_size:UserWarning")
def test_partition_errors_name_the_keys_and_sizes() -> None:
    from fedmirasol.data.partitioning import client_specs

    data = DataConfig(source="manifest", manifest="clips/manifest.csv")
    with pytest.raises(ConfigError) as error:
        client_specs(np.array([0, 1, 0, 1]), data, seed=0)
    message = str(error.value)
    assert "data.num-clients = 10 needs at least 40 clips" in message
    assert "data.min-partition-size = 4" in message
    assert "manifest clips/manifest.csv has 4" in message
    # flwr-datasets' own failure (Dirichlet cannot reach the minimum) gets the keys added
    skewed = DataConfig(alpha=0.01, min_partition_size=7)
    with pytest.raises(ConfigError) as error:
        client_specs(np.repeat(np.arange(4), 20), skewed, seed=0)
    assert "data.partitioner = 'dirichlet', data.alpha = 0.01" in str(error.value)
    assert "data.num-clients = 10" in str(error.value)


def test_manifest_partition_errors_name_the_flags() -> None:
    from fedmirasol.data.media.manifest import ClipRecord
    from fedmirasol.data.media.partition import partition_records

    records = [ClipRecord(path=f"c{i}.mp4", label=i % 2) for i in range(4)]
    with pytest.raises(ConfigError, match=r"--clients 10 needs at least 10 clips; the manifest "
                                          r"has 4"):
        partition_records(records, 10, "iid")
    with pytest.raises(ConfigError, match=r"--clients 2 x --min-size 3 needs at least 6"):
        partition_records(records, 2, "dirichlet", min_partition_size=3)


def test_config_errors_are_one_line_with_exit_2(monkeypatch, capsys) -> None:
    def bad_input(args):
        raise ConfigError("config key 'x' is wrong")

    monkeypatch.setattr(report_cmd, "run", bad_input)
    assert main(["report", "somewhere"]) == 2
    err = capsys.readouterr().err
    assert err == "fedmirasol report: error: config key 'x' is wrong\n"


def test_simulate_reports_a_typo_before_anything_starts(capsys) -> None:
    assert main(["simulate", "--set", "strategy.nme=fedprox"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fedmirasol simulate: error: unknown config key 'strategy.nme' "
                   "(did you mean 'strategy.name'?)"]


@pytest.mark.parametrize("bug", [KeyError("round"), ValueError("shapes (2,) and (3,)"),
                                 TypeError("unsupported operand")])
def test_a_bug_keeps_its_traceback(monkeypatch, bug: Exception) -> None:
    def buggy(args):
        raise bug

    monkeypatch.setattr(report_cmd, "run", buggy)
    with pytest.raises(type(bug)):
        main(["report", "somewhere"])


def test_report_explains_a_run_without_rounds(tmp_path, capsys) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert main(["report", str(tmp_path)]) == 2
    assert "no completed rounds" in capsys.readouterr().err


def test_model_name_typos_suggest_the_closest(capsys) -> None:
    assert main(["model", "info", "tinny"]) == 2
    assert "unknown model config 'tinny' (did you mean 'tiny'?)" in capsys.readouterr().err


def test_help_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "import fedmirasol.cli\n"
        "fedmirasol.cli.build_parser()\n"
        "try:\n"
        "    fedmirasol.cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('torch', 'flwr', 'ray', 'datasets', 'flwr_datasets', 'av')\n"
        "               if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert "heavy: []" in done.stdout, done.stdout + done.stderr


def test_train_help_states_the_training_defaults() -> None:
    from fedmirasol.training.centralized import TrainSettings

    defaults = TrainSettings()
    train = build_parser()._subparsers._group_actions[0].choices["train"]  # noqa: SLF001
    helps = {a.dest: a.help for a in train._actions}  # noqa: SLF001
    assert helps["epochs"] == f"default {defaults.epochs}"
    assert helps["batch_size"] == f"default {defaults.batch_size}"
    assert helps["lr"].startswith(f"default {defaults.learning_rate:g} ")
    assert helps["train_clips"] == f"default {defaults.train_clips}"
    assert helps["val_clips"] == f"default {defaults.val_clips}"
    assert helps["seed"] == f"default {defaults.seed}"


def test_clientapp_server_needs_a_transport_to_the_runtime_api(capsys) -> None:
    assert main(["clientapp-server", "--runtime-api-address", "127.0.0.1:9094"]) == 2
    err = capsys.readouterr().err
    assert "--root-certificates" in err and "--insecure" in err
