"""The typed run config: defaults, TOML files, --set overrides, Flower's flat form, validation
that names the bad key, and the rules the library keeps (typed lookups, no pickle, no cycles)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from fedmirasol.config import (
    RunConfig, from_flower_run_config, from_json, from_table, load_config, to_flat, to_json,
    with_values,
)
from fedmirasol.config.load import parse_assignment
from fedmirasol.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "fedmirasol"


def test_defaults_are_the_quickstart_config() -> None:
    assert load_config() == load_config(ROOT / "simulations" / "quickstart.toml")
    assert load_config().data.partitioner == "dirichlet"
    assert load_config().data.alpha == 0.5
    assert load_config().data.num_clients == 10


@pytest.mark.parametrize("name", ["quickstart.toml", "feature-shift.toml", "fedprox.toml",
                                  "many-clients.toml", "personalization.toml", "videoqa.toml",
                                  "videoqa-long.toml", "videoqa-dp.toml", "compression.toml",
                                  "byzantine.toml"])
def test_every_ready_config_validates(name: str) -> None:
    assert load_config(ROOT / "simulations" / name).name == name.removesuffix(".toml")


def test_many_clients_config_samples_a_fraction_of_at_least_100_clients() -> None:
    config = load_config(ROOT / "simulations" / "many-clients.toml")
    assert config.data.num_clients >= 100
    assert config.strategy.fraction_train < 1.0


def test_set_overrides_parse_toml_values() -> None:
    assert parse_assignment("strategy.name=fedprox") == ("strategy.name", "fedprox")
    assert parse_assignment("strategy.proximal-mu = 0.5") == ("strategy.proximal-mu", 0.5)
    assert parse_assignment("num-rounds=3") == ("num-rounds", 3)
    config = load_config(None, ["strategy.name=fedprox", "strategy.proximal-mu=0.1",
                                "client.lr=1", "model.num-frames=8",
                                "personalization.lambda=0.5"])
    assert config.strategy.name == "fedprox"
    assert config.client.lr == 1.0 and isinstance(config.client.lr, float)
    assert config.model.mirasol.num_frames == 8
    assert config.personalization.lam == 0.5


@pytest.mark.parametrize("override, fragment", [
    ("strategy.nmae=fedavg", "'strategy.nmae' (did you mean 'strategy.name'?)"),
    ("num-rounds=many", "'num-rounds' must be an integer"),
    ("num-rounds=0", "'num-rounds'"),
    ("client.batch-size=2.5", "'client.batch-size' must be an integer"),
    ("privacy.enabled=1", "'privacy.enabled' must be true or false"),
    ("strategy.name=fedsomething", "'strategy.name' must be one of"),
    ("strategy.name=fedprx", "(did you mean 'fedprox'?)"),
    ("model.widht=3", "'model.widht' (did you mean 'model.width'?)"),
    ("model.name=tinny", "(did you mean 'tiny'?)"),
    ("data.val-fraction=1.5", "'data.val-fraction'"),
    ("data.source=manifest", "'data.manifest'"),
    ("privacy.delta=0", "'privacy.delta'"),
    ("secagg.bits=40", "'secagg.bits'"),
    ("seed", "key=value"),
])
def test_bad_values_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert fragment in str(error.value)


def test_rules_across_sections_name_both_keys() -> None:
    with pytest.raises(ConfigError, match="secagg.enabled.*strategy.name"):
        load_config(None, ["secagg.enabled=true", "strategy.name=krum"])
    with pytest.raises(ConfigError, match="privacy.unit.*data.clips-per-user"):
        load_config(None, ["privacy.enabled=true", "privacy.unit=user"])


def test_invalid_model_override_is_reported() -> None:
    with pytest.raises(ConfigError, match="model"):
        load_config(None, ["model.num-frames=7"])  # not a multiple of frames_per_chunk


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        load_config(tmp_path / "nope.toml")


def test_config_is_frozen_and_hashable() -> None:
    config = load_config(None, ["model.num-frames=8"])
    assert hash(config) == hash(load_config(None, ["model.num-frames=8"]))
    assert hash(config) != hash(load_config())
    with pytest.raises(ValidationError):
        config.client.batch_size = 3  # type: ignore[misc]


def test_json_flat_and_table_forms_round_trip() -> None:
    config = load_config(ROOT / "simulations" / "feature-shift.toml", ["model.num-frames=8"])
    assert from_json(to_json(config)) == config
    assert from_table(json.loads(to_json(config))) == config
    changed = with_values(config, {"privacy.enabled": True, "privacy.target-epsilon": 8.0})
    assert changed.privacy.enabled and changed.privacy.budget == 8.0
    assert changed.data == config.data and not config.privacy.enabled


def test_pyproject_flower_config_is_the_flat_defaults() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    flower = pyproject["tool"]["flwr"]["app"]
    assert flower["components"] == {"serverapp": "server.server_app:app",
                                    "clientapp": "clients.client_app:app"}
    app_config = dict(flower["config"])
    assert app_config.pop("config-file") == ""
    assert app_config == to_flat(RunConfig())


def test_flower_run_config_starts_from_file_and_applies_changed_keys() -> None:
    flat = to_flat(RunConfig()) | {"config-file": str(ROOT / "simulations" / "fedprox.toml"),
                                   "num-rounds": 2}
    config = from_flower_run_config(flat)
    assert config.strategy.name == "fedprox"  # from the file
    assert config.num_rounds == 2  # changed on the command line


def test_fedbn_keeps_normalization_local() -> None:
    assert load_config(None, ["strategy.name=fedbn"]).local_selectors() == "normalization"
    assert load_config().local_selectors() == ""
    fedper = load_config(None, ["personalization.method=fedper"])
    assert fedper.local_selectors() == "classifier.*"


# ---- rules the library keeps

SECTIONS = "|".join(RunConfig.model_fields)
STRING_LOOKUP = re.compile(
    rf"""\[["'](?:{SECTIONS.replace('_', '-')})["']\]\s*\[["'][a-z0-9-]+["']\]"""  # c["a"]["b"]
    r"""|\b(?:config|cfg|run_config)\[["']""")  # config["..."]


def library_files() -> list[Path]:
    return sorted(LIBRARY.rglob("*.py"))


def test_library_reads_the_config_by_attribute_not_by_string_keys() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                 for path in library_files()
                 for number, line in enumerate(path.read_text().splitlines(), start=1)
                 if STRING_LOOKUP.search(line)]
    assert not offenders, "string-key config lookups:\n" + "\n".join(offenders)


def test_library_never_unpickles() -> None:
    offenders = [str(path.relative_to(ROOT)) for path in library_files()
                 if re.search(r"^\s*(import pickle|from pickle)|weights_only\s*=\s*False",
                              path.read_text(), re.MULTILINE)]
    assert not offenders


def test_no_import_cycles_in_the_library() -> None:
    import grimp
    import networkx as nx

    graph = grimp.build_graph("fedmirasol")
    edges = nx.DiGraph()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            edges.add_edge(module, imported)
    cycles = [cycle for cycle in nx.simple_cycles(edges)
              if not any(graph.is_module_squashed(m) for m in cycle)]
    # a package's __init__ importing its own modules is not a cycle between modules
    cycles = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".")
                                           or c[0].startswith(m + ".") for m in c)]
    assert not cycles, f"import cycles: {cycles[:3]}"
