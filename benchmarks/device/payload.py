"""Copy the images that some study cells read into ``.gpu/data`` (same relative paths), for a device machine that only
gets the working tree (64 MiB in all): the regime's subset of the training split plus all of validation and test.

    python benchmarks/device/payload.py pbc_blood_cells_96:3 brain_tumor_mri_training:3

Reads ``$MEDMEM_DATA_ROOT``. ``.gpu/`` must be ignored (``echo /.gpu/ >> .git/info/exclude``) and named in the device
call's ``carry``; never commit it (the images are the shared datasets'). A post-hoc model that reads other training
images (``vit_cs_knn`` reads only the regime's) or a pre-trained trunk (every training image) needs more than this.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from medmem.data.readers import NPZ_REF_SEP
from medmem.paths import resolve_data_root

REPO = Path(__file__).resolve().parent.parent.parent


def main() -> None:
    root, dst = resolve_data_root(), REPO / ".gpu" / "data"
    for arg in sys.argv[1:]:
        dataset, regime = arg.split(":")
        manifest = json.loads((REPO / "data_manifests" / f"{dataset}.json").read_text())
        entries = [manifest["training"][i] for i in manifest["regimes"][regime]] + manifest["validation"] + manifest["test"]
        # a MedMNIST entry names an image inside an .npz archive (path#split/index): the archive is the file to copy
        files = sorted({entry["image"].partition(NPZ_REF_SEP)[0] for entry in entries})
        copied = 0
        for name in files:
            out = dst / name
            if not out.exists():
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / name, out)
                copied += 1
        print(f"{dataset} {regime}%: {len(entries)} images in {len(files)} files, {copied} copied to {dst}")


if __name__ == "__main__":
    main()
