"""A `public:` pretrained.checkpoint recipe is trained once, cached by its recipe and reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmirasol.pretrained import public
from fedmirasol.pretrained.checkpoint import with_digest
from fedmirasol.pretrained.digest import file_sha256
from fedmirasol.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = "public: --epochs 1 --train-clips 16 --val-clips 8 --batch-size 8"


@pytest.fixture
def trainings(monkeypatch: pytest.MonkeyPatch) -> list[public.Recipe]:
    """Counts the calls of the training function (which still trains)."""
    calls: list[public.Recipe] = []
    train = public._train

    def counted(recipe, out, progress):
        calls.append(recipe)
        return train(recipe, out, progress)

    monkeypatch.setattr(public, "_train", counted)
    return calls


def test_missing_checkpoint_is_trained_once_then_reused(tmp_path: Path, trainings) -> None:
    recipe = public.Recipe.parse(TINY, "tiny")
    lines: list[str] = []
    path = public.ensure_checkpoint(recipe, tmp_path, lines.append)
    assert len(trainings) == 1 and path.is_file() and path.is_absolute()
    assert path.parent == (tmp_path / recipe.key()[:16]).resolve()
    assert any("pre-training the public checkpoint once" in line for line in lines)
    assert any("pre-training epoch 1/1" in line for line in lines)  # progress
    record = json.loads((path.parent / public.RECIPE_FILE).read_text())
    assert record["sha256"] == file_sha256(path)
    assert record["key"] == recipe.key() and record["description"]["train"]["epochs"] == 1
    assert "fedmirasol train --public" in record["command"]
    assert not list(tmp_path.glob(".*partial*"))  # no half entry left behind
    mtime, digest = path.stat().st_mtime_ns, file_sha256(path)

    lines.clear()
    again = public.ensure_checkpoint(recipe, tmp_path, lines.append)
    assert again == path and len(trainings) == 1  # not trained again
    assert path.stat().st_mtime_ns == mtime and file_sha256(path) == digest
    assert lines and lines[0].startswith("using cached public pre-trained checkpoint")


def test_training_is_deterministic_given_the_recipe(tmp_path: Path) -> None:
    recipe = public.Recipe.parse(TINY, "tiny")
    first = public.ensure_checkpoint(recipe, tmp_path / "a", lambda line: None)
    second = public.ensure_checkpoint(recipe, tmp_path / "b", lambda line: None)
    assert file_sha256(first) == file_sha256(second)


def test_another_recipe_is_another_entry(tmp_path: Path, trainings) -> None:
    first = public.Recipe.parse(TINY, "tiny")
    other = public.Recipe.parse(TINY + " --seed 1", "tiny")
    assert first.key() != other.key()
    # flags in another order, or spelled as their defaults, are the same recipe
    assert public.Recipe.parse("public: --batch-size 8 --val-clips 8 --train-clips 16 "
                               "--epochs 1 --seed 0 --threads 1 --config tiny", "tiny") == first
    assert public.Recipe.parse(TINY, "latefusion-tiny").key() != first.key()  # the model
    a = public.ensure_checkpoint(first, tmp_path, lambda line: None)
    b = public.ensure_checkpoint(other, tmp_path, lambda line: None)
    assert a.parent != b.parent and len(trainings) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([a.parent.name, b.parent.name])


def test_a_tampered_cached_checkpoint_is_refused(tmp_path: Path, trainings) -> None:
    recipe = public.Recipe.parse(TINY, "tiny")
    path = public.ensure_checkpoint(recipe, tmp_path, lambda line: None)
    with path.open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ValueError, match="changed after it was trained.*delete"):
        public.ensure_checkpoint(recipe, tmp_path, lambda line: None)
    assert len(trainings) == 1  # refused, not retrained


def test_simulate_step_trains_then_config_names_the_cached_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trainings) -> None:
    monkeypatch.chdir(tmp_path)  # the cache is runs/pretrained-public/ under the working dir
    dp_toml = ROOT / "simulations" / "dp.toml"
    overrides = [f"pretrained.checkpoint={json.dumps(TINY)}"]
    with pytest.raises(FileNotFoundError, match="not trained yet.*fedmirasol simulate"):
        with_digest(load_config(dp_toml, overrides))  # outside simulate's step nothing is trained
    assert public.prepare(dp_toml, overrides, progress=lambda line: None) == overrides
    config = with_digest(load_config(dp_toml, overrides))
    path = Path(config.pretrained.checkpoint)
    assert path.is_absolute() and path.parent.parent == (tmp_path / public.CACHE_ROOT).resolve()
    assert config.pretrained.sha256 == file_sha256(path)  # what the clients check
    public.prepare(dp_toml, overrides, progress=lambda line: None)
    assert len(trainings) == 1


def test_a_config_error_shows_before_training(tmp_path: Path, trainings) -> None:
    overrides = [f"pretrained.checkpoint={json.dumps(TINY)}", "privacy.delta=2.0"]
    with pytest.raises(ValueError, match="delta"):
        public.prepare(ROOT / "simulations" / "dp.toml", overrides, root=tmp_path,
                       progress=lambda line: None)
    assert not trainings


def test_a_missing_user_file_says_how_to_make_it_or_skip_it(tmp_path: Path) -> None:
    missing = tmp_path / "mine" / "best.pt"
    with pytest.raises(FileNotFoundError) as caught:
        with_digest(load_config(ROOT / "simulations" / "dp.toml",
                                [f'pretrained.checkpoint="{missing}"']))
    message = str(caught.value)
    assert (f"fedmirasol train --public --threads 1 --epochs 6 --val-clips 400 "
            f"--out {missing.parent}") in message  # the README's recipe
    assert "--no-pretrain" in message and "public: --threads 1" in message


def test_no_pretrain_starts_from_scratch(tmp_path: Path, trainings) -> None:
    dp_toml = ROOT / "simulations" / "dp.toml"
    lines: list[str] = []
    overrides = public.prepare(dp_toml, [], pretrain=False, root=tmp_path,
                               progress=lines.append)
    config = with_digest(load_config(dp_toml, overrides))
    assert not any(getattr(config.pretrained, key) for key in
                   ("checkpoint", "sha256", "reset", "freeze", "trainable"))
    assert not trainings and "--no-pretrain" in lines[0]
    with pytest.raises(ValueError, match="--no-pretrain.*contradicts"):
        public.prepare(dp_toml, ['pretrained.checkpoint="x.pt"'], pretrain=False)


def test_bad_recipes_name_the_key() -> None:
    with pytest.raises(ValueError, match="pretrained.checkpoint.*unrecognized.*--out"):
        public.Recipe.parse("public: --out somewhere", "tiny")
    with pytest.raises(ValueError, match="pretrained.checkpoint.*--epochs must be at least 1"):
        public.Recipe.parse("public: --epochs 0", "tiny")


def test_the_demos_name_the_readme_recipe() -> None:
    for name in ("dp", "secagg"):
        text = (ROOT / "simulations" / f"{name}.toml").read_text()
        assert 'checkpoint = "public: --threads 1 --epochs 6 --val-clips 400"' in text
        recipe = public.Recipe.parse("public: --threads 1 --epochs 6 --val-clips 400", "tiny")
        assert (recipe.epochs, recipe.val_clips, recipe.threads) == (6, 400, 1)


def test_simulate_command_has_no_pretrain(capsys: pytest.CaptureFixture[str]) -> None:
    from fedmirasol.cli import main

    dp_toml = str(ROOT / "simulations" / "dp.toml")
    code = main(["simulate", "--config", dp_toml, "--no-pretrain",
                 "--set", 'pretrained.checkpoint="x.pt"'])  # refused before any simulation
    assert code == 2 and "--no-pretrain starts from scratch" in capsys.readouterr().err
    assert main(["simulate", "--resume", "some-run", "--no-pretrain"]) == 2
    assert "drop --config/--set/--no-pretrain" in capsys.readouterr().err
