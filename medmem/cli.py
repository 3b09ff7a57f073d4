"""The ``medmem`` command: thin subcommands over the library."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _cmd_manifest(args: argparse.Namespace) -> int:
    from medmem.data.manifest import ManifestError, check_manifest, load_manifest, write_json_atomic
    from medmem.data.recipes import build_generic, build_recipe
    from medmem.paths import resolve_data_root

    root = resolve_data_root(args.data_root)
    if args.check:
        failed = 0
        for path in args.check:
            try:
                problems = check_manifest(load_manifest(path), root, verify_hashes=not args.no_hash)
            except ManifestError as exc:
                problems = [str(exc)]
            if problems:
                failed += 1
                print(f"FAIL {path}: {len(problems)} problem(s)")
                for line in problems[:50]:
                    print(f"  - {line}")
                if len(problems) > 50:
                    print(f"  ... and {len(problems) - 50} more")
            else:
                print(f"OK   {path} (files present, hashes match, no leakage, regimes nested)")
        return 1 if failed else 0
    try:
        if args.dataset:
            manifest, report = build_recipe(args.dataset, root, seed=args.seed)
        else:
            fractions = dict(zip(("training", "validation", "test"), [float(x) / 100 for x in args.split.split(",")]))
            manifest, report = build_generic(
                root,
                name=args.name or Path(args.folder or args.npz or args.csv).stem,
                folder=args.folder,
                npz=args.npz,
                csv_path=Path(args.csv) if args.csv else None,
                fractions=fractions,
                seed=args.seed,
                skip_unreadable=args.skip_unreadable,
            )
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or f"data_manifests/{manifest['name']}.json")
    write_json_atomic(manifest, out)
    counts = ", ".join(f"{s} {len(manifest[s])}" for s in ("training", "validation", "test"))
    print(f"wrote {out}: {counts}; {len(manifest['removed'])} removed ({manifest['split_policy']})")
    for e in report.errors:
        print(f"  unreadable, skipped: {e['image']}: {e['reason']}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from medmem.engine.batch_predict import run_prediction

    window = tuple(args.window) if args.window else None
    result = run_prediction(
        args.inputs, args.model, args.output_dir, card_path=args.card, resume=args.resume,
        slice_policy=args.slice_policy, window=window, batch_size=args.batch_size, top_cases=args.top_cases,
        explain=args.explain, data_root=args.data_root or os.environ.get("MEDMEM_DATA_ROOT"), workers=args.workers,
    )  # fmt: skip
    if not result:  # a torchrun rank other than 0: rank 0 reports
        return 0
    return 0 if result["predicted"] or not result["errors"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medmem", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("manifest", help="build or check a manifest (MONAI datalist with leakage-free splits)")
    p.add_argument("--data-root", help="folder holding the datasets (default: $MEDMEM_DATA_ROOT)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="build a shipped dataset's manifest by its recipe")
    src.add_argument("--folder", help="class-per-folder tree, relative to the data root")
    src.add_argument("--npz", help="MedMNIST-style npz, relative to the data root")
    src.add_argument("--csv", help="CSV with columns path,label[,group][,split]")
    src.add_argument("--check", nargs="+", metavar="MANIFEST", help="re-validate manifest(s) against the data root")
    p.add_argument("--name", help="dataset name (default: from the source)")
    p.add_argument("--out", help="output path (default: data_manifests/<name>.json)")
    p.add_argument("--split", default="70,10,20", help="training,validation,test percent when no official split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-unreadable", action="store_true", help="list unreadable files instead of failing")
    p.add_argument("--no-hash", action="store_true", help="with --check: skip re-hashing file contents")
    p.set_defaults(func=_cmd_manifest)

    p = sub.add_parser("predict", help="predict a folder tree of scans with a deployable checkpoint, with evidence")
    p.add_argument("inputs", nargs="+", help="files or folders (DICOM, NIfTI, PNG/JPEG/TIFF)")
    p.add_argument("--model", required=True, help="deployable checkpoint (models/model.pt from the bundle's summarize step)")
    p.add_argument("--card", help="model card JSON (default: the checkpoint's path with .json)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--resume", action="store_true", help="skip inputs already in the output folder")
    p.add_argument("--slice-policy", default="middle", choices=["middle", "max_area"], help="volume given to a 2D model: which slice")
    p.add_argument("--window", nargs=2, type=float, metavar=("CENTRE", "WIDTH"), help="intensity window (e.g. CT)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for decoding")
    p.add_argument("--top-cases", type=int, default=5, help="similar training cases per prediction")
    p.add_argument("--explain", action="store_true", help="write evidence PNGs and index.html")
    p.add_argument("--data-root", help="where the training images are, to show recalled cases (default: $MEDMEM_DATA_ROOT)")
    p.set_defaults(func=_cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
