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
        case_vote=args.case_vote, dihedral=args.dihedral, memory_mode=args.memory_mode,
    )  # fmt: skip
    if not result:  # a torchrun rank other than 0: rank 0 reports
        return 0
    return 0 if result["predicted"] or not result["errors"] else 1


def _folder_items(folder: Path, class_names: list[str]) -> list[dict]:
    """``[{image, label, case_id}]`` of a folder with one subfolder per class name."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder (expected one subfolder per class: {', '.join(class_names)})")
    items = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name not in class_names:
            raise ValueError(f"{sub}: folder name is not a class of this model ({', '.join(class_names)})")
        for f in sorted(p for p in sub.rglob("*") if p.is_file() and not p.name.startswith(".")):
            items.append({"image": str(f), "label": class_names.index(sub.name), "case_id": f"{folder.name}/{f.relative_to(folder)}"})
    return items


def _cmd_memory(args: argparse.Namespace) -> int:
    import json

    from medmem.memory.editing import MemoryEditError, ModelDirectory, add_from_datalist, add_manifest_split, load_cases

    try:
        md = ModelDirectory(args.model_dir, user=args.user)
        if args.action == "list":
            listing = md.listing()
            if args.json:
                print(json.dumps(listing, indent=1))
                return 0
            print(f"{listing['samples']} cases in memory (checksum {listing['checksum'][:12]})")
            for name in md.class_names:
                print(f"  {name}: {listing['per_class'].get(name, 0)}")
            sources: dict[str, int] = {}
            for case in listing["cases"]:
                sources[case["source"]] = sources.get(case["source"], 0) + 1
            print("sources: " + ", ".join(f"{k} {v}" for k, v in sorted(sources.items())))
            if listing["pseudo_labelled"]:
                print(f"pseudo-labelled (class given by a teacher network, not a person): {listing['pseudo_labelled']}")
            return 0
        if args.action == "add":
            if args.manifest:
                report = add_manifest_split(args.model_dir, args.manifest, args.split, args.regime, args.exclude_regime, args.data_root, args.refresh, args.user)
            else:
                report = add_from_datalist(md, _folder_items(Path(args.folder), md.class_names), f"folder:{Path(args.folder).name}", args.refresh)
                report["memory_samples"] = md.memory.num_written
            print(f"added {report['added']} cases ({report['skipped']} already held) in {report['seconds']:.1f} s; memory holds {report['memory_samples']}")
            for case_id, reason in report["failed"]:
                print(f"  not added: {case_id}: {reason}", file=sys.stderr)
            return 1 if report["failed"] else 0
        if args.action == "tune-vote":
            if args.manifest:
                from medmem.data import load_datalist, load_manifest

                manifest = load_manifest(args.manifest)
                if list(manifest["classes"]) != md.class_names:
                    raise MemoryEditError(f"{args.manifest}: classes {manifest['classes']} differ from the model's {md.class_names}")
                items = load_datalist(manifest, args.split, args.data_root)
            else:
                items = _folder_items(Path(args.folder), md.class_names)
            ready, failed = load_cases(md, items)
            for case_id, reason in failed:
                print(f"  not used: {case_id}: {reason}", file=sys.stderr)
            report = md.tune_vote_weight(ready)
            md.save(refresh=args.refresh)
            print(f"memory vote weight {report['previous']:g} -> {report['weight']:g}, chosen on {report['cases']} held-out cases")
            for w, score in report["scores"].items():
                print(f"  w={w:.1f}: accuracy {score['acc']:.4f}, log loss {score['nll']:.4f}")
            return 1 if failed else 0
        if args.action == "relabel":
            n = md.relabel(args.case_ids, args.to)
        else:
            n = md.forget(args.case_ids)
        md.save(refresh=args.refresh)
        print(f"{args.action}: {n} case(s); memory holds {md.memory.num_written}; checksum {md.checksum()[:12]}")
        return 0
    except (MemoryEditError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


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
    p.add_argument("--case-vote", help="fuse the pixel-space case vote (models/case_vote.pt from the bundle's case_vote.json, experimental) at its validated weight")
    p.add_argument("--dihedral", action="store_true", help="average the class probabilities over each image's 8 flips and right-angle turns "
                   "(8 forward passes; 2D square models; the evidence stays that of the image itself)")  # fmt: skip
    p.add_argument("--memory-mode", default="prototypes", choices=["prototypes", "off"],
                   help="off: predict with every memorising layer as plain self-attention, as the summarise step's "
                   "validation_memory_off scored it (similar cases still come from the prototypes, as evidence only)")  # fmt: skip
    p.add_argument("--explain", action="store_true", help="write evidence PNGs and index.html")
    p.add_argument("--data-root", help="where the training images are, to show recalled cases (default: $MEDMEM_DATA_ROOT)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("memory", help="list or edit a trained model's memory (add, relabel, forget) without training")
    msub = p.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("model_dir", help="the bundle's models/ folder (model_full.pt, model.pt, model.json)")
    common.add_argument("--user", help="who edits, for the audit log (default: $MEDMEM_USER or the login name)")
    common.add_argument("--refresh", default="kmeans", choices=["kmeans", "assign"], help="how the deployable prototypes are refreshed")
    m = msub.add_parser("list", parents=[common], help="cases held, per class, with their sources")
    m.add_argument("--json", action="store_true", help="every case as JSON")
    m = msub.add_parser("add", parents=[common], help="write labelled cases into the memory (no gradient step)")
    src = m.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="a medmem manifest: its --split entries are added")
    src.add_argument("--folder", help="one subfolder per class name, images inside")
    m.add_argument("--split", default="training")
    m.add_argument("--regime", type=int, help="with --manifest: only this regime's subset")
    m.add_argument("--exclude-regime", type=int, help="with --manifest: skip the cases of this regime (e.g. those trained on)")
    m.add_argument("--data-root", help="where the manifest's images are (default: $MEDMEM_DATA_ROOT)")
    m = msub.add_parser("tune-vote", parents=[common], help="re-choose how much the memory votes, on labelled held-out cases")
    src = m.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="a medmem manifest: its --split entries are the held-out cases")
    src.add_argument("--folder", help="one subfolder per class name, images inside")
    m.add_argument("--split", default="validation")
    m.add_argument("--data-root", help="where the manifest's images are (default: $MEDMEM_DATA_ROOT)")
    m = msub.add_parser("relabel", parents=[common], help="give cases another class")
    m.add_argument("case_ids", nargs="+")
    m.add_argument("--to", required=True, help="class name")
    m = msub.add_parser("forget", parents=[common], help="remove cases from the memory and the prototypes")
    m.add_argument("case_ids", nargs="+")
    p.set_defaults(func=_cmd_memory)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
