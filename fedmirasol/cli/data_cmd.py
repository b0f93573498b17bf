"""`fedmirasol data`: synth, inspect and partition clip manifests of real media files; generate
LEAF's Synthetic(alpha, beta) dataset."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from fedmirasol.cli import model_config_name
from fedmirasol.errors import ConfigError

if TYPE_CHECKING:
    from fedmirasol.data.media.manifest import ClipRecord


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="prepare data: synth, inspect, partition clip "
                                 "manifests; generate LEAF's synthetic dataset")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    synth = commands.add_parser(
        "synth", help="write synthetic clips as mp4 files (h264 + aac) and a manifest"
    )
    synth.add_argument("--out", required=True, type=Path, help="output folder (clips/ and manifest.csv)")
    synth.add_argument("--clips", required=True, type=int, help="number of clips")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--config", default="tiny", help="model config whose geometry the clips take (default tiny)"
    )
    synth.add_argument(
        "--sites", type=int, default=0, help="spread clips over this many sites (site column)"
    )
    synth.add_argument(
        "--domain-shift", type=float, default=0.0, help="per-site recording differences, 0 = none"
    )
    synth.set_defaults(func=_synth)

    inspect = commands.add_parser(
        "inspect", help="check every file of a manifest; totals of what it holds"
    )
    _add_source(inspect)
    inspect.add_argument(
        "--quick", action="store_true", help="read headers only, do not decode every frame"
    )
    inspect.set_defaults(func=_inspect)

    partition = commands.add_parser(
        "partition", help="write one manifest per client (what each site gets)"
    )
    _add_source(partition)
    partition.add_argument(
        "--clients", type=int, help="number of clients (by site: must match the sites)"
    )
    partition.add_argument("--by", choices=("site", "dirichlet", "iid"), required=True)
    partition.add_argument(
        "--alpha", type=float, default=0.5, help="Dirichlet concentration (smaller = less IID)"
    )
    partition.add_argument("--min-size", type=int, default=1, help="Dirichlet: fewest clips per client")
    partition.add_argument("--seed", type=int, default=42)
    partition.add_argument("--out", required=True, type=Path, help="folder for client_<i>.csv")
    partition.set_defaults(func=_partition)

    leaf = commands.add_parser(
        "leaf-synthetic", help="write LEAF's Synthetic(alpha, beta) dataset (train/ and test/ JSON)",
        description="Generate Synthetic(alpha, beta) (Li et al., FedProx; the synthetic data of "
        "the LEAF benchmark) with numpy and write it in LEAF's format: one user per client, "
        "each user's samples split into train/ and test/.",
    )
    leaf.add_argument("--alpha", type=float, required=True, help="how much the users' models differ")
    leaf.add_argument("--beta", type=float, required=True, help="how much the users' inputs differ")
    leaf.add_argument("--users", type=int, default=30, help="number of users (default 30)")
    leaf.add_argument("--out", required=True, type=Path, help="output folder (train/, test/)")
    leaf.add_argument("--dim", type=int, default=60, help="features per sample (default 60)")
    leaf.add_argument("--classes", type=int, default=10, help="classes (default 10)")
    leaf.add_argument("--iid", action="store_true", help="one model and input distribution "
                      "for all users (alpha and beta unused)")
    leaf.add_argument("--train-fraction", type=float, default=0.9,
                      help="each user's share of samples in train/ (default 0.9)")
    leaf.add_argument("--seed", type=int, default=0)
    leaf.add_argument("--force", action="store_true", help="overwrite existing JSON in --out")
    leaf.set_defaults(func=_leaf_synthetic)


def _add_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "manifest", type=Path, help="manifest (.csv / .jsonl), VGGSound CSV, or class-folder root"
    )
    parser.add_argument(
        "--format",
        choices=("manifest", "vggsound", "folders"),
        default="manifest",
        help="how to read MANIFEST: a clip manifest (default), a VGGSound CSV, or a folder per class",
    )
    parser.add_argument("--video-dir", type=Path, help="vggsound: the folder of downloaded videos")
    parser.add_argument("--split", help="vggsound: keep only this split (train / test)")


def _records(args: argparse.Namespace) -> list[ClipRecord]:
    """The clips MANIFEST lists; what is wrong with its content is the user's to fix (the
    readers' ValueErrors name the file and line), so it is a ConfigError."""
    from fedmirasol.data.media.adapters import read_class_folders, read_vggsound
    from fedmirasol.data.media.manifest import read_manifest

    if args.format == "vggsound" and args.video_dir is None:
        raise ConfigError("--format vggsound needs --video-dir")
    try:
        if args.format == "folders":
            return read_class_folders(args.manifest)
        if args.format == "vggsound":
            return read_vggsound(args.manifest, args.video_dir, split=args.split)
        return read_manifest(args.manifest)
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from error


def _synth(args: argparse.Namespace) -> int:
    from fedmirasol.data.media.synth import write_synthetic_media
    from fedmirasol.models.config import get_config

    if args.clips < 1:
        raise ConfigError(f"--clips must be positive, got {args.clips}")
    manifest = write_synthetic_media(
        args.out,
        args.clips,
        get_config(model_config_name(args.config, "--config")),
        seed=args.seed,
        sites=args.sites,
        domain_shift=args.domain_shift,
    )
    print(f"wrote {args.clips} clips and {manifest}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from fedmirasol.data.media.report import inspect_records

    totals = inspect_records(_records(args), verify=not args.quick)
    for line in totals.lines():
        print(line)
    return 1 if totals.failed else 0


def _partition(args: argparse.Namespace) -> int:
    from fedmirasol.data.media.partition import partition_records, write_partitions

    records = _records(args)
    partitions = partition_records(
        records,
        args.clients,
        args.by,
        alpha=args.alpha,
        seed=args.seed,
        min_partition_size=args.min_size,
    )
    paths = write_partitions(partitions, args.out)
    for index, (path, part) in enumerate(zip(paths, partitions, strict=True)):
        site = f" (site {part[0].site})" if args.by == "site" and part else ""
        labels = len({r.label for r in part})
        print(f"client {index}{site}: {len(part)} clips, {labels} labels -> {path}")
    return 0


def _leaf_synthetic(args: argparse.Namespace) -> int:
    from fedmirasol.data.leaf.synthetic import SyntheticSpec, write_synthetic

    existing = sorted(args.out.glob("t*/*.json")) if args.out.is_dir() else []
    if existing and not args.force:
        raise FileExistsError(f"{existing[0]} exists; pass --force to overwrite {args.out}")
    try:
        spec = SyntheticSpec(alpha=args.alpha, beta=args.beta, users=args.users, dim=args.dim,
                             classes=args.classes, iid=args.iid,
                             train_fraction=args.train_fraction, seed=args.seed)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    for path in existing:
        path.unlink()
    train, test = write_synthetic(spec, args.out)
    print(f"wrote {spec.users} users of Synthetic({spec.alpha:g}, {spec.beta:g}): {train}, {test}")
    print(f"run it: fedmirasol simulate --config simulations/leaf-synthetic.toml "
          f"--set data.leaf-path='{args.out}'")
    return 0
