"""``make demo``: the main job end to end on the shared data, in a few minutes on a laptop CPU.

1. re-validate the shipped manifests against the data root;
2. train the memory ViT on 10% of the PBC blood-cell training split (MONAI bundle ``train``);
3. evaluate on the test split with the full memory;
4. summarise the memory into prototypes (deployable ``models/model.pt``), evaluate that too;
5. export TorchScript (``ckpt_export``) and check it matches the eager deployable model;
6. run the bundle's ``inference`` on a folder of held-out test images;
7. run ``medmem predict --explain`` on the same folder and print where the evidence report is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "bundles" / "movit_classification"
CONFIGS = BUNDLE / "configs"


def bundle_cmd(verb: str, configs: list[str], overrides: dict) -> list[str]:
    files = json.dumps([str(CONFIGS / c) for c in configs])
    cmd = [sys.executable, "-m", "monai.bundle", verb]
    if verb == "ckpt_export":
        cmd.append("network_def")
    cmd += ["--config_file", files, "--bundle_root", str(BUNDLE)]
    for key, value in overrides.items():
        cmd += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    return cmd


def step(title: str, cmd: list[str]) -> None:
    print(f"\n=== {title}\n$ {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=os.environ.get("MEDMEM_DATA_ROOT"))
    p.add_argument("--output-dir", default=str(REPO / "demo_output"))
    p.add_argument("--regime", type=int, default=10)
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args(argv)
    from medmem.paths import resolve_data_root

    data_root = resolve_data_root(args.data_root)
    os.environ["MEDMEM_DATA_ROOT"] = str(data_root)
    out = Path(args.output_dir).resolve()
    manifests = sorted(str(m) for m in (REPO / "data_manifests").glob("*.json"))
    step("1. check the shipped manifests", [sys.executable, "-m", "medmem.cli", "manifest", "--data-root", str(data_root), "--check", *manifests])

    common = {"dataset": "pbc_blood_cells_96", "regime": args.regime, "epochs": args.epochs, "output_dir": str(out), "data_root": str(data_root)}
    step(f"2. train on {args.regime}% of the PBC training split", bundle_cmd("run", ["train.json"], common))
    step("3. evaluate (full memory) on the test split", bundle_cmd("run", ["train.json", "evaluate.json"], common))
    step("4. summarise the memory into prototypes", bundle_cmd("run", ["train.json", "summarize.json"], common))
    step("4b. evaluate the deployable (prototypes) model", bundle_cmd("run", ["train.json", "evaluate.json"], {**common, "eval_memory_mode": "prototypes"}))
    models = out / "models"
    step(
        "5. export TorchScript",
        bundle_cmd("ckpt_export", ["train.json"], {**common, "memory_mode": "prototypes", "filepath": models / "model.ts", "ckpt_file": models / "model.pt", "meta_file": CONFIGS / "metadata.json"}),
    )
    check_torchscript(models, common)

    inputs = out / "inputs"
    link_test_images(inputs, data_root, count=24)
    step("6. inference on a folder of held-out test images", bundle_cmd("run", ["train.json", "inference.json"], {**common, "input_paths": [str(inputs)]}))
    for mode in ("full", "prototypes"):
        report = json.loads((out / f"eval_test_{mode}" / "test_metrics.json").read_text())
        print(f"test split, {mode:>10} memory: ACC {report['acc']:.3f}  AUC {report['auc']:.3f}  F1 {report['f1']:.3f}  (n={report['n']})")
    step(
        "7. medmem predict --explain (predictions with evidence)",
        [sys.executable, "-m", "medmem.cli", "predict", str(inputs), "--model", str(models / "model.pt"), "--output-dir", str(out / "predict"), "--explain", "--data-root", str(data_root)],
    )
    print(f"bundle inference table: {out / 'inference' / 'predictions.csv'}")
    print(f"evidence report (open in a browser): {out / 'predict' / 'index.html'}")
    return 0


def check_torchscript(models: Path, common: dict) -> None:
    import torch


    scripted = torch.jit.load(str(models / "model.ts"))
    from medmem.engine.batch_predict import load_deployable

    eager, _ = load_deployable(str(models / "model.pt"))  # built from the model card, as deployed
    x = torch.rand(4, 3, 64, 64)
    diff = (scripted(x) - eager.eval()(x)).abs().max().item()
    print(f"TorchScript vs eager deployable model: max |difference| {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit("exported TorchScript does not match the eager model")


def link_test_images(folder: Path, data_root: Path, count: int) -> None:
    """A folder of symlinks to held-out test images (nothing is copied out of the data root)."""
    import medmem

    folder.mkdir(parents=True, exist_ok=True)
    manifest = medmem.data.load_manifest(medmem.engine.resolve_manifest("pbc_blood_cells_96"))
    step_size = max(1, len(manifest["test"]) // count)
    for entry in manifest["test"][::step_size][:count]:
        link = folder / Path(entry["image"]).name
        if not link.exists():
            link.symlink_to(data_root / entry["image"])


if __name__ == "__main__":
    sys.exit(main())
