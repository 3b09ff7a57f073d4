"""The summarise step scores the memory ViT's weights with the memory off too, and names the best mode on validation."""

import copy
import json

import numpy as np
import torch

from medmem.engine.metrics import classification_metrics
from medmem.engine.summarize import best_deployment_mode, summarize_checkpoint
from medmem.networks import MemoryViT


def scores(acc: float, auc: float) -> dict:
    return {"acc": acc, "auc": auc, "f1": acc}


def test_best_mode_by_accuracy_then_auc_and_ties_keep_the_prototypes():
    assert best_deployment_mode({"full": scores(0.8, 0.9), "prototypes": scores(0.8, 0.9), "off": scores(0.8, 0.9)}) == "prototypes"
    assert best_deployment_mode({"full": scores(0.8, 0.9), "prototypes": scores(0.79, 0.99), "off": scores(0.8, 0.9)}) == "full"
    assert best_deployment_mode({"full": scores(0.8, 0.9), "prototypes": scores(0.8, 0.9), "off": scores(0.8, 0.91)}) == "off"
    assert best_deployment_mode({"full": scores(0.7, 0.9), "prototypes": scores(0.7, 0.9), "off": scores(0.75, 0.5)}) == "off"


def test_report_and_card_give_the_memory_off_scores(tmp_path):
    torch.manual_seed(0)
    net = MemoryViT(1, 16, 4, 3, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2, memory_k=4, num_prototypes=4,
                    memory_match="same_token", memory_retrieval="key", memory_vote=0.5)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    x, y, ids = torch.randn(12, 1, 16, 16, generator=g), torch.arange(12) % 3, torch.arange(12)
    net.eval().write_memory(x, ids, y)
    torch.save(net.state_dict(), tmp_path / "model_full.pt")
    train = [{"image": x, "label": y, "sample_id": ids}]
    val = [{"image": torch.randn(9, 1, 16, 16, generator=g), "label": torch.arange(9) % 3}]

    # what the weights score on validation with every memorising layer as plain self-attention
    plain = copy.deepcopy(net)
    plain.set_memory_mode("off")
    with torch.no_grad():
        probs = plain(val[0]["image"]).softmax(-1).numpy()
    expected = classification_metrics(probs, np.asarray(val[0]["label"]), 3)

    report = summarize_checkpoint(net, str(tmp_path / "model_full.pt"), train, val, str(tmp_path / "model.pt"), str(tmp_path / "report.json"), 4, epochs=1)
    off = report["validation_memory_off"]
    assert off == {k: expected[k] for k in ("acc", "auc", "f1")}
    by_mode = {"full": report["validation_full_memory"], "prototypes": report["validation_prototypes"], "off": off}
    assert report["best_on_validation"] == best_deployment_mode(by_mode)
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["validation"] == {**by_mode, "best": report["best_on_validation"]}
    # scoring the memory off leaves the deployable network (and its card) in prototype mode
    assert card["network"]["memory_mode"] == "prototypes" and net.config["memory_mode"] == "prototypes"
    assert json.loads((tmp_path / "report.json").read_text())["validation_memory_off"] == off
