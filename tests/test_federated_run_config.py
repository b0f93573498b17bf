"""Run config: defaults, TOML files, --set overrides, validation naming the bad key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedmirasol.config.legacy import (
    DEFAULTS,
    flatten,
    from_flower_run_config,
    load_config,
    local_spec,
    model_config,
    parse_assignment,
    parse_ids,
)

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_quickstart_config() -> None:
    assert load_config() == load_config(ROOT / "simulations" / "quickstart.toml")
    assert load_config()["data"]["partitioner"] == "dirichlet"
    assert load_config()["data"]["alpha"] == 0.5
    assert load_config()["data"]["num-clients"] == 10


@pytest.mark.parametrize("name", ["quickstart.toml", "feature-shift.toml", "fedprox.toml",
                                  "many-clients.toml"])
def test_every_ready_config_validates(name: str) -> None:
    config = load_config(ROOT / "simulations" / name)
    assert config["name"] == name.removesuffix(".toml")


def test_many_clients_config_samples_a_fraction_of_at_least_100_clients() -> None:
    config = load_config(ROOT / "simulations" / "many-clients.toml")
    assert config["data"]["num-clients"] >= 100
    assert config["strategy"]["fraction-train"] < 1.0


def test_set_overrides_parse_toml_values() -> None:
    assert parse_assignment("strategy.name=fedprox") == ("strategy.name", "fedprox")
    assert parse_assignment("strategy.proximal-mu = 0.5") == ("strategy.proximal-mu", 0.5)
    assert parse_assignment("num-rounds=3") == ("num-rounds", 3)
    config = load_config(None, ["strategy.name=fedprox", "strategy.proximal-mu=0.1",
                                "client.lr=1", "model.num-frames=8"])
    assert config["strategy"]["name"] == "fedprox"
    assert config["client"]["lr"] == 1.0 and isinstance(config["client"]["lr"], float)
    assert model_config(config).num_frames == 8


@pytest.mark.parametrize("override, fragment", [
    ("strategy.nmae=fedavg", "'strategy.nmae'"),
    ("num-rounds=many", "'num-rounds'"),
    ("num-rounds=0", "'num-rounds'"),
    ("strategy.name=fedsomething", "'strategy.name'"),
    ("model.widht=3", "'model.widht'"),
    ("data.val-fraction=1.5", "'data.val-fraction'"),
    ("data.source=manifest", "'data.manifest'"),
    ("seed", "key=value"),
])
def test_bad_values_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises((KeyError, ValueError)) as error:
        load_config(None, [override])
    assert fragment in str(error.value)


def test_invalid_model_override_is_reported() -> None:
    with pytest.raises(ValueError, match="model"):
        load_config(None, ["model.num-frames=7"])  # not a multiple of frames_per_chunk


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        load_config(tmp_path / "nope.toml")


def test_pyproject_flower_config_mirrors_the_defaults() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    flower = pyproject["tool"]["flwr"]["app"]
    assert flower["components"] == {"serverapp": "server.server_app:app",
                                    "clientapp": "clients.client_app:app"}
    app_config = dict(flower["config"])
    assert app_config.pop("config-file") == ""
    assert flatten(app_config) == flatten(DEFAULTS)


def test_flower_run_config_starts_from_file_and_applies_changed_keys() -> None:
    flat = flatten(DEFAULTS) | {"config-file": str(ROOT / "simulations" / "fedprox.toml"),
                                "num-rounds": 2}
    config = from_flower_run_config(flat)
    assert config["strategy"]["name"] == "fedprox"  # from the file
    assert config["num-rounds"] == 2  # changed on the command line


def test_fedbn_keeps_normalization_local() -> None:
    assert local_spec(load_config(None, ["strategy.name=fedbn"])) == "normalization"
    assert local_spec(load_config()) == ""


def test_parse_ids() -> None:
    assert parse_ids("1, 4,7") == {1, 4, 7}
    assert parse_ids("") == set()
    with pytest.raises(ValueError, match="'x'"):
        parse_ids("1,x")
