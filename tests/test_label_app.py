"""The MONAI Label app, end to end on loopback: the real server in its own environment (``make label-env``),
real brain MRI images, a tiny memory model; info, datastore, infer, a saved label growing the memory and
being read by the next inference, the strategies, fine-tuning, the audit log, and shutdown."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
LABEL_PY = REPO / ".venv-label" / "bin" / "python"
CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base: str, method: str, path: str, files: dict | None = None, timeout: float = 120, fields: dict | None = None) -> dict:
    """HTTP request; ``files`` {field: (filename, bytes)} and ``fields`` {field: text} as multipart/form-data."""
    data, headers = None, {}
    if files or fields:
        boundary = uuid.uuid4().hex
        parts = []
        for field, (name, blob) in (files or {}).items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode() + blob + b"\r\n")
        for field, text in (fields or {}).items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{text}\r\n'.encode())
        data = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_root):
    if not LABEL_PY.exists():
        pytest.skip("the MONAI Label environment is not built (make label-env)")
    from medmem.data import eval_transforms
    from medmem.engine.summarize import write_model_card
    from medmem.networks import MemoryViT

    tmp = tmp_path_factory.mktemp("label")
    source = data_root / "brain_tumor_mri" / "Training"
    chain = eval_transforms(32, 1)
    torch.manual_seed(0)
    net = MemoryViT(1, 32, 8, len(CLASSES), hidden_size=48, mlp_dim=96, num_layers=2, num_heads=2, memory_k=4, num_prototypes=4, memory_match="same_token", memory_retrieval="key", memory_labels=True)
    memory_images = [(i, sorted((source / c).iterdir())[j]) for i, c in enumerate(CLASSES) for j in range(2)]
    x = torch.stack([chain({"image": str(p)})["image"] for _, p in memory_images])
    net.write_memory(x, torch.arange(len(memory_images)), torch.tensor([c for c, _ in memory_images]))
    models = tmp / "models"
    models.mkdir()
    torch.save(net.state_dict(), models / "model_full.pt")
    write_model_card(net, str(models / "model.json"), CLASSES, {}, None)
    # a case vote over the same images (as the bundle's case_vote.json writes it), fused at half weight
    from medmem.engine.case_vote import save_case_vote
    from medmem.engine.summarize import memory_case_table
    from medmem.memory.pixel_vote import PixelCaseVote

    ids = list(range(len(memory_images)))
    vote = PixelCaseVote(len(CLASSES), 1, size=8, k=3).fit(x, torch.tensor([c for c, _ in memory_images]), torch.tensor(ids))
    vote.weight.fill_(0.5)
    # the no_tumor cases came from a self-training manifest: a teacher network labelled them, not a person
    items = [{"sample_id": i, "label": c, "case_id": f"Training/{CLASSES[c]}/{p.name}", "pseudo_label": CLASSES[c] == "no_tumor"} for i, (c, p) in enumerate(memory_images)]
    (models / "memory_cases.json").write_text(json.dumps({"cases": memory_case_table(ids, items, CLASSES)}))
    save_case_vote(vote, memory_case_table(ids, items, CLASSES), models / "case_vote.pt")
    studies = tmp / "studies"
    studies.mkdir()
    for i, c in enumerate(CLASSES):  # unlabelled images the annotators will see
        shutil.copy(sorted((source / c).iterdir())[10], studies / f"case{i}.jpg")
    # case0's probabilities by hand, from one view and averaged over its 8 flips and turns, fused with the vote
    from medmem.engine.dihedral import dihedral_probabilities

    with torch.no_grad():
        x0 = chain({"image": str(studies / "case0.jpg")})["image"].float()[None]
        by_hand = {1: vote(net.eval()(x0).softmax(-1), x0)[0].tolist(), 8: vote(dihedral_probabilities(net.eval(), x0), x0)[0].tolist()}
    port = free_port()
    env = {**os.environ, "MONAI_LABEL_SESSION_PATH": str(tmp / "sessions"), "MONAI_LABEL_TRACKING_ENABLED": "false", "MEDMEM_USER": "annotator"}
    cmd = [str(LABEL_PY), "-m", "monailabel.main", "start_server", "--app", str(REPO / "apps" / "medmem_label"), "--studies", str(studies),
           "--conf", "model_dir", str(models), "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            call(base, "GET", "/info/", timeout=5)
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("MONAI Label server did not start:\n" + (tmp / "server.log").read_text()[-4000:])
            time.sleep(1)
    yield {"base": base, "models": models, "proc": proc, "log": tmp / "server.log", "memory_images": memory_images, "case0_by_hand": by_hand}
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=30)


def test_annotation_loop(server):
    base, models = server["base"], server["models"]
    info = call(base, "GET", "/info/")
    assert "medmem" in info["models"] and info["models"]["medmem"]["type"] == "classification"
    assert {"least_familiar", "most_uncertain"} <= set(info["strategies"])
    assert "medmem_finetune" in info["trainers"]
    store = call(base, "GET", "/datastore/?output=all")
    assert sorted(store["objects"]) == ["case0", "case1", "case2", "case3"]

    first = call(base, "POST", "/infer/medmem?image=case0&output=json")
    assert first["memory_samples"] == 8 and len(first["prediction"]) == 4
    assert abs(sum(p["score"] for p in first["prediction"]) - 1.0) < 1e-4
    assert all(not c["case_id"].startswith("monailabel:") for c in first["similar_cases"])
    assert len(first["pixel_similar_cases"]) == 3 and all(c["case_id"].startswith("Training/") for c in first["pixel_similar_cases"])
    # one view by default; a request may ask for the mean over the 8 flips and turns, with the same evidence
    assert first["views"] == 1 and [p["score"] for p in first["prediction"]] == pytest.approx(server["case0_by_hand"][1], abs=1e-5)
    eight = call(base, "POST", "/infer/medmem?image=case0&output=json", fields={"params": json.dumps({"dihedral": True})})
    assert eight["views"] == 8 and [p["score"] for p in eight["prediction"]] == pytest.approx(server["case0_by_hand"][8], abs=1e-5)
    assert server["case0_by_hand"][8] != pytest.approx(server["case0_by_hand"][1], abs=1e-4)
    assert {k: eight[k] for k in ("similar_cases", "pixel_similar_cases", "familiarity", "memory_reliance")} == {
        k: first[k] for k in ("similar_cases", "pixel_similar_cases", "familiarity", "memory_reliance")}  # fmt: skip

    proposal = call(base, "POST", "/activelearning/least_familiar")
    assert proposal["id"] in {"case0", "case1", "case2", "case3"}

    saved = call(base, "PUT", "/datastore/label?image=case0&tag=final", files={"label": ("label.json", json.dumps({"class": "glioma_tumor"}).encode())})
    assert saved["memory"] == "add" and saved["memory_samples"] == 9
    after = call(base, "POST", "/infer/medmem?image=case0&output=json")
    assert after["memory_samples"] == 9
    recalled = {c["case_id"]: c["class"] for c in after["similar_cases"]}
    assert recalled.get("monailabel:case0") == "glioma_tumor"  # the next inference reads the new case
    assert after["familiarity"] > first["familiarity"]
    # the case vote took the label too: the image's nearest case in pixels is now itself, with its class
    # (an annotator's label: not a pseudo-label)
    assert after["pixel_similar_cases"][0] == {"case_id": "monailabel:case0", "class": "glioma_tumor", "pseudo_label": False, "cosine": pytest.approx(1.0, abs=1e-4)}
    pseudo = {f"Training/no_tumor/{p.name}" for c, p in server["memory_images"] if CLASSES[c] == "no_tumor"}
    shown = [c for row in (first, after) for key in ("similar_cases", "pixel_similar_cases") for c in row[key]]
    assert all(c["pseudo_label"] == (c["case_id"] in pseudo) for c in shown) and any(c["pseudo_label"] for c in shown)

    proposal = call(base, "POST", "/activelearning/most_uncertain")
    assert proposal["id"] in {"case1", "case2", "case3"}  # labelled images are not proposed again

    bad = call(base, "PUT", "/datastore/label?image=case1&tag=final", files={"label": ("label.json", b'{"class": "zebra"}')})
    assert bad["memory"] == "not written" and "zebra" in bad["reason"]

    relabel = call(base, "PUT", "/datastore/label?image=case0&tag=final", files={"label": ("label.json", json.dumps({"class": "no_tumor"}).encode())})
    assert relabel["memory"] == "relabel" and relabel["memory_samples"] == 9
    audit = [json.loads(line) for line in (models / "memory_audit.jsonl").read_text().splitlines()]
    assert [e["action"] for e in audit] == ["add", "relabel"] and audit[0]["user"] == "monailabel"
    relabelled = call(base, "POST", "/infer/medmem?image=case0&output=json")
    assert relabelled["pixel_similar_cases"][0]["class"] == "no_tumor"

    call(base, "PUT", "/datastore/label?image=case2&tag=final", files={"label": ("label.json", json.dumps({"class": "no_tumor"}).encode())})
    before = (models / "model_full.pt").stat().st_mtime_ns
    trained = call(base, "POST", "/train/medmem_finetune?run_sync=true", files=None, timeout=300)
    assert trained, server["log"].read_text()[-3000:]
    assert (models / "model_full.pt").stat().st_mtime_ns != before
    again = call(base, "POST", "/infer/medmem?image=case0&output=json")
    assert again["memory_samples"] == 10  # fine-tuning kept the memory (and the labels saved before it)


def test_shutdown(server):
    proc = server["proc"]
    proc.terminate()
    assert proc.wait(timeout=30) is not None
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        call(server["base"], "GET", "/info/", timeout=5)
