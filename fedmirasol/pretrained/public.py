"""Public pre-training on first use: a `pretrained.checkpoint` recipe, trained once and cached.

A `pretrained.checkpoint` value of the form ``"public: <flags>"`` names a recipe instead of a
file: `fedmirasol train --public <flags>` (flags: ``--config/--model``, ``--epochs``,
``--batch-size``, ``--lr``, ``--train-clips``, ``--val-clips``, ``--seed``, ``--threads``,
``--device``; the model defaults to the run's ``model.name``). `fedmirasol simulate` trains a
recipe the first time it is used and caches the result under
``runs/pretrained-public/<key>/`` (``best.pt`` and the rest of `fedmirasol train`'s run
directory), where ``<key>`` is the first 16 hex digits of the SHA-256 of the recipe: the full
model config, the training settings (epochs, clips, batch size, learning rate, weight decay,
seed), the resolved device, the CPU threads and the public data's config. Later runs with the
same recipe reuse it ("using cached ..."); any change to the recipe is another entry.

Training is deterministic given the recipe (`train_centralized` seeds the model, the data and
the loader order; one CPU thread by default). ``recipe.json`` beside the checkpoint records
the recipe, the equivalent `fedmirasol train` command and the SHA-256 of ``best.pt``; a cached
file whose digest differs from it is refused (it is never silently retrained or used: delete
the entry to retrain it). The resolved run config then names the cached file and its digest
(`pretrained.sha256`), which every client checks as for any other checkpoint.

``python -m fedmirasol.pretrained.public "public: --epochs 6"`` trains (or checks)
a recipe's entry by itself, e.g. before `flwr run .`.
"""

from __future__ import annotations

import logging
import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from fedmirasol.errors import ConfigError  # a user's error: one line from `fedmirasol`

log = logging.getLogger("fedmirasol.pretrained")

PREFIX = "public:"
CACHE_ROOT = Path("runs") / "pretrained-public"
RECIPE_FILE = "recipe.json"
CHECKPOINT_FILE = "best.pt"
FORMAT = 1  # bump when the recipe's meaning changes (e.g. the public data's generator)
# The recipe's defaults where they differ from `fedmirasol train`'s: one thread, so that the
# file is the same on every run (and it is the fastest on a loaded machine).
DEFAULT_THREADS = 1


def say(line: str) -> None:
    log.info("%s", line)


def is_recipe(checkpoint: str) -> bool:
    return checkpoint.strip().startswith(PREFIX)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # no sys.exit: a config error names the key
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    from fedmirasol.training.centralized import TrainSettings

    defaults = TrainSettings()
    parser = _Parser(prog=PREFIX, add_help=False, allow_abbrev=False)
    parser.add_argument("--config", "--model", dest="config")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--train-clips", type=int, default=defaults.train_clips)
    parser.add_argument("--val-clips", type=int, default=defaults.val_clips)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    parser.add_argument("--device", default="cpu")
    # the videoqa task (`fedmirasol train --task videoqa`): questions about the public clips
    parser.add_argument("--task", choices=("classification", "videoqa"), default="classification")
    parser.add_argument("--frames", type=int)
    parser.add_argument("--text-weight", type=float)
    return parser


@dataclass(frozen=True)
class Recipe:
    """A public pre-training run: what `fedmirasol train --public` would be given."""

    model: str
    epochs: int
    batch_size: int
    learning_rate: float
    train_clips: int
    val_clips: int
    seed: int
    threads: int
    device: str
    task: str = "classification"
    frames: int | None = None  # the model's num_frames, if not its named config's
    text_weight: float | None = None  # the model's text_weight, if not its named config's

    @classmethod
    def parse(cls, checkpoint: str, model_name: str) -> "Recipe":
        """`"public: --epochs 6 ..."` -> Recipe; raises naming the config key."""
        text = checkpoint.strip()
        if not text.startswith(PREFIX):
            raise ConfigError(f"{checkpoint!r} is not a {PREFIX} recipe")
        try:
            args = _parser().parse_args(shlex.split(text[len(PREFIX):]))
            recipe = cls(model=args.config or model_name, epochs=args.epochs,
                         batch_size=args.batch_size, learning_rate=args.lr,
                         train_clips=args.train_clips, val_clips=args.val_clips, seed=args.seed,
                         threads=args.threads, device=args.device, task=args.task,
                         frames=args.frames, text_weight=args.text_weight)
            recipe.check()
        except (ValueError, KeyError) as error:
            reason = error.args[0] if isinstance(error, KeyError) and error.args else error
            raise ConfigError(f"config key 'pretrained.checkpoint' = {checkpoint!r}: {reason} "
                             f"(a recipe takes fedmirasol train's flags --config, --epochs, "
                             f"--batch-size, --lr, --train-clips, --val-clips, --seed, "
                             f"--threads, --device, --task, --frames, --text-weight)") from error
        return recipe

    def check(self) -> None:
        for name in ("epochs", "batch_size", "train_clips", "val_clips", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        model = self.model_config()  # raises for an unknown name or bad overrides
        if self.task == "videoqa" and model.text_weight <= 0:
            raise ConfigError("--task videoqa trains the text decoder: add --text-weight 1")

    def model_config(self):
        """The named model config with the recipe's --frames / --text-weight."""
        from fedmirasol.models import get_config

        overrides = {"num_frames": self.frames, "text_weight": self.text_weight}
        return get_config(self.model, **{k: v for k, v in overrides.items() if v is not None})

    def videoqa(self):
        """VideoQASettings for --task videoqa (all default question types), else None."""
        from fedmirasol.training.centralized import VideoQASettings

        return VideoQASettings() if self.task == "videoqa" else None

    def settings(self):
        from fedmirasol.training.centralized import TrainSettings

        return TrainSettings(epochs=self.epochs, batch_size=self.batch_size,
                             learning_rate=self.learning_rate, train_clips=self.train_clips,
                             val_clips=self.val_clips, seed=self.seed, device=self.device,
                             public=True)

    def description(self) -> dict[str, Any]:
        """Everything the checkpoint depends on: the cache key is its digest."""
        from fedmirasol.data.synthetic import SyntheticConfig
        from fedmirasol.training.device import resolve_device

        model_config = self.model_config()
        settings = asdict(self.settings())
        settings["device"] = resolve_device(self.device).type
        description = {"format": FORMAT, "model": model_config.to_dict(), "train": settings,
                       "threads": self.threads,
                       "data": asdict(SyntheticConfig.for_model(model_config, public=True))}
        if self.task != "classification":  # classification recipes keep their keys
            description["videoqa"] = asdict(self.videoqa())
        return description

    def key(self) -> str:
        text = json.dumps(self.description(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def command(self, out: Path | str) -> str:
        """The equivalent `fedmirasol train` command."""
        return (f"fedmirasol train --public --config {self.model} --threads {self.threads} "
                f"--device {self.device} --epochs {self.epochs} --batch-size {self.batch_size} "
                f"--lr {self.learning_rate:g} --train-clips {self.train_clips} "
                f"--val-clips {self.val_clips} --seed {self.seed}{self.task_flags()} --out {out}")

    def task_flags(self) -> str:
        """The --task / --frames / --text-weight flags that differ from the defaults."""
        flags = f" --task {self.task}" if self.task != "classification" else ""
        flags += f" --frames {self.frames}" if self.frames is not None else ""
        return flags + (f" --text-weight {self.text_weight:g}" if self.text_weight is not None else "")


def entry_dir(recipe: Recipe, root: Path | None = None) -> Path:
    return (root or CACHE_ROOT) / recipe.key()[:16]


def cached_checkpoint(recipe: Recipe, root: Path | None = None) -> Path | None:
    """The recipe's cached best.pt (absolute), checked against recipe.json; None if not cached.

    Raises when the cached file's SHA-256 differs from the one recorded when it was trained.
    """
    from fedmirasol.pretrained.digest import file_sha256

    entry = entry_dir(recipe, root)
    record_path, checkpoint = entry / RECIPE_FILE, entry / CHECKPOINT_FILE
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text())
    if not checkpoint.is_file():
        raise FileNotFoundError(f"cached public pre-training {entry} has {RECIPE_FILE} but no "
                                f"{CHECKPOINT_FILE}; delete {entry} to train it again")
    digest = file_sha256(checkpoint)
    if digest != record["sha256"]:
        raise ConfigError(f"cached pre-trained checkpoint {checkpoint} was changed after it was "
                         f"trained: its SHA-256 is {digest[:12]}..., {record_path} records "
                         f"{record['sha256'][:12]}...; delete {entry} to train it again")
    return checkpoint.resolve()


def not_trained_message(recipe: Recipe, root: Path | None = None) -> str:
    entry = entry_dir(recipe, root)
    return (f"the public pre-trained checkpoint of this recipe is not trained yet (no {entry}): "
            f"`fedmirasol simulate` trains and caches it on first use (about 6 minutes on 2 CPU "
            f"cores for dp.toml's recipe), or train it by itself with `python -m "
            f"fedmirasol.pretrained.public {shlex.quote(recipe_text(recipe))}`")


def recipe_text(recipe: Recipe) -> str:
    return (f"{PREFIX} --config {recipe.model} --epochs {recipe.epochs} "
            f"--batch-size {recipe.batch_size} --lr {recipe.learning_rate:g} "
            f"--train-clips {recipe.train_clips} --val-clips {recipe.val_clips} "
            f"--seed {recipe.seed} --threads {recipe.threads} --device {recipe.device}"
            f"{recipe.task_flags()}")


def _train(recipe: Recipe, out: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    import torch

    from fedmirasol.training.centralized import train_centralized

    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        return train_centralized(recipe.model_config(), recipe.settings(), out, progress,
                                 videoqa=recipe.videoqa())
    finally:
        torch.set_num_threads(threads)


def ensure_checkpoint(recipe: Recipe, root: Path | None = None,
                      progress: Callable[[str], None] = say) -> Path:
    """The recipe's cached best.pt, trained first (once) if it is not cached."""
    from fedmirasol.pretrained.digest import file_sha256

    entry = entry_dir(recipe, root)
    cached = cached_checkpoint(recipe, root)
    if cached is not None:
        progress(f"using cached public pre-trained checkpoint {entry / CHECKPOINT_FILE} "
                 f"(recipe key {entry.name})")
        return cached
    if entry.exists():  # a directory without recipe.json: not a finished entry
        raise ConfigError(f"{entry} exists but holds no {RECIPE_FILE} (not written by "
                              f"fedmirasol's pre-training cache); move it away to train here")
    partial = entry.with_name(f".{entry.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    progress(f"pre-training the public checkpoint once (recipe key {entry.name}; the same as "
             f"`{recipe.command(entry)}`; about 6 minutes on 2 CPU cores for dp.toml's "
             f"recipe) -> {entry}")
    started = time.perf_counter()
    try:
        summary = _train(recipe, partial, lambda line: progress(f"  pre-training {line}"))
        record = {"recipe": recipe_text(recipe), "description": recipe.description(),
                  "key": recipe.key(), "command": recipe.command(entry),
                  "checkpoint": CHECKPOINT_FILE,
                  "sha256": file_sha256(partial / CHECKPOINT_FILE),
                  "seconds": round(time.perf_counter() - started, 1), "summary": summary}
        (partial / RECIPE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        try:
            partial.rename(entry)
        except OSError:  # another process finished the same recipe first: use its file
            if cached_checkpoint(recipe, root) is None:
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    progress(f"pre-trained in {time.perf_counter() - started:.0f} s: best validation accuracy "
             f"{summary['best_val_accuracy']:.3f} (public task, epoch {summary['best_epoch']}) "
             f"-> {entry / CHECKPOINT_FILE}")
    return cached_checkpoint(recipe, root)  # type: ignore[return-value]


def _merged(path: Path | None, overrides: Iterable[str]) -> dict[str, Any]:
    """The flat config `load_config` would validate (defaults <- file <- overrides)."""
    import tomllib

    from fedmirasol.config import RunConfig, to_flat
    from fedmirasol.config.load import flatten, parse_assignment

    merged = to_flat(RunConfig())
    if path is not None and Path(path).is_file():
        with Path(path).open("rb") as handle:
            try:
                merged.update(flatten(tomllib.load(handle)))
            except tomllib.TOMLDecodeError:
                pass  # load_config reports it
    for text in overrides:
        try:
            key, value = parse_assignment(text)
        except ValueError:
            continue  # load_config reports it
        merged[key] = value
    return merged


NO_PRETRAIN = ['pretrained.checkpoint=""', 'pretrained.sha256=""', 'pretrained.reset=""',
               'pretrained.freeze=""', 'pretrained.trainable=""']


def prepare(path: Path | None, overrides: Iterable[str], pretrain: bool = True,
            root: Path | None = None, progress: Callable[[str], None] = say) -> list[str]:
    """`fedmirasol simulate`'s pre-training step; returns the overrides to load the config with.

    A `public:` recipe is trained and cached if it is not cached yet, after the rest of the
    config was validated. ``pretrain=False`` (--no-pretrain) starts from scratch instead: the
    pretrained.* keys are cleared, the whole model is trained (under DP-SGD such a run stays
    near chance; simulations/README.md), and a `--set pretrained.*` beside it is an error.
    """
    from fedmirasol.config import load_config

    overrides = list(overrides)
    if not pretrain:
        given = [text for text in overrides
                 if text.split("=", 1)[0].strip().startswith("pretrained.")]
        if given:
            raise ConfigError(f"--no-pretrain starts from scratch; it contradicts --set {given[0]}")
        progress("--no-pretrain: starting from the seeded fresh model, all of it trained "
                 "(pretrained.* cleared)")
        return overrides + NO_PRETRAIN
    merged = _merged(path, overrides)
    checkpoint = merged.get("pretrained.checkpoint", "")
    if not isinstance(checkpoint, str) or not is_recipe(checkpoint):
        return overrides
    recipe = Recipe.parse(checkpoint, str(merged.get("model.name", "tiny")))
    if cached_checkpoint(recipe, root) is None:
        load_config(path, overrides + NO_PRETRAIN)  # a config error shows before 6 minutes go
    ensure_checkpoint(recipe, root, progress)
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedmirasol.pretrained.public",
        description="train (once) and cache a public pre-training recipe, e.g. "
        "'public: --epochs 6 --val-clips 400'; prints the cached checkpoint's path")
    parser.add_argument("recipe")
    parser.add_argument("--model", default="tiny", help="the run's model.name (default: tiny)")
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):
        path = ensure_checkpoint(Recipe.parse(args.recipe, args.model))
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
