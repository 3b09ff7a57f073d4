"""Evidence pictures for predictions: the image, where the class token looked, the recalled cases."""

from __future__ import annotations

import html
import math
import os
import re
from pathlib import Path

import torch

from medmem.atomic import atomic_path, write_text_atomic


def safe_name(key: str) -> str:
    """A file name for an input key (relative path, maybe with ``#series``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")[:150] or "input"


def attention_grid(cls_attention: torch.Tensor, image_size: list[int]) -> torch.Tensor | None:
    """(H, n_patches) attention of the class token -> (rows, cols) map over the image, or None for 3D."""
    n = cls_attention.shape[-1]
    side = int(math.isqrt(n))
    if len(image_size) != 2 or side * side != n:
        return None
    grid = cls_attention.mean(0).reshape(1, 1, side, side)
    return torch.nn.functional.interpolate(grid, size=list(image_size), mode="nearest")[0, 0]


def _display(image: torch.Tensor):
    """(C, H, W) in [0, 1] -> an array matplotlib shows (grey or RGB)."""
    x = image.detach().float().clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x[:3].permute(1, 2, 0).numpy()


def render_evidence(path: Path, image: torch.Tensor, attention: torch.Tensor | None, title: str, cases: list[dict], case_images: list[torch.Tensor | None]) -> None:
    """One PNG: input, attention overlay, up to four recalled training cases (atomic write)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(zip(cases, case_images))[:4]
    fig, axes = plt.subplots(1, 2 + len(shown), figsize=(2.4 * (2 + len(shown)), 2.9))
    cmap = "gray" if image.shape[0] == 1 else None
    axes[0].imshow(_display(image), cmap=cmap)
    axes[0].set_title("input", fontsize=8)
    axes[1].imshow(_display(image), cmap=cmap)
    if attention is not None:
        axes[1].imshow(attention.numpy(), cmap="jet", alpha=0.45)
    axes[1].set_title("class-token attention", fontsize=8)
    for ax, (case, img) in zip(axes[2:], shown):
        if img is not None:
            ax.imshow(_display(img), cmap="gray" if img.shape[0] == 1 else None)
        pseudo = ", pseudo-label" if case.get("pseudo_label") else ""  # the class came from a teacher network, not a person
        ax.set_title(f"{case['class']} ({case['weight']:.2f}{pseudo})\n{os.path.basename(case['case'])[:24]}", fontsize=7)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def write_index(out_dir: Path, rows: list[dict], classes: list[str]) -> Path:
    """``index.html``: every input with its prediction, memory reliance, flags and evidence picture."""
    body = []
    for r in sorted(rows, key=lambda r: r["input"]):
        p = max(r["probabilities"].values())
        flag = ' <b class="ood">out of distribution</b>' if r.get("out_of_distribution") else ""
        img = f'explain/{safe_name(r["input"])}.png'
        similar = ", ".join(html.escape(c["class"]) + (" <i>(pseudo-label)</i>" if c.get("pseudo_label") else "") for c in r.get("similar_cases", [])[:4])
        reliance = "memory off" if r.get("memory_mode") == "off" else r.get("memory_reliance")  # off: cases recalled, not read
        body.append(
            f"<tr><td>{html.escape(r['input'])}</td><td>{html.escape(r['predicted'])} ({p:.2f}){flag}</td>"
            f"<td>{reliance}</td><td>{similar}</td><td><a href=\"{img}\"><img src=\"{img}\" height=\"110\"></a></td></tr>"
        )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>medmem predictions</title>
<style>body{{font-family:sans-serif;margin:1em}} td,th{{border-bottom:1px solid #ddd;padding:4px;text-align:left;vertical-align:top}} .ood{{color:#b00}}</style>
</head><body>
<h1>medmem predictions</h1>
<p>{len(rows)} input(s); classes: {html.escape(", ".join(classes))}. Evidence: the input, where the class token
looked, and the training cases the memory recalled (class and attention weight). Research use only.</p>
<table><tr><th>input</th><th>prediction</th><th>memory reliance</th><th>similar training cases</th><th>evidence</th></tr>
{chr(10).join(body)}
</table></body></html>
"""
    path = out_dir / "index.html"
    write_text_atomic(page, path)
    return path
