"""Plots for the Results pages, drawn from the numbers in their own tables (so a plot never
shows a number its page does not): the few-shot curve from docs/results/few-shot.md.

    python docs/plot_results.py     # writes docs/images/few-shot.png (needs matplotlib)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def few_shot_rows(page: Path = DOCS / "results" / "few-shot.md") -> list[tuple[str, int, float, float, float]]:
    """(set, good images, image AUROC mean, min, max) per row of the few-shot table."""
    rows = []
    for line in page.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| (\w+) \| (\d+) \| ([\d.]+) \((?:([\d.]+) - ([\d.]+)|all images, one fit)\) \|", line)
        if match:
            name, n, mean, low, high = match.groups()
            rows.append((name, int(n), float(mean), float(low or mean), float(high or mean)))
    return rows


def plot_few_shot(out: Path = DOCS / "images" / "few-shot.png") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    rows = few_shot_rows()
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=100)
    for name in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == name]
        n = [r[1] for r in mine]
        ax.plot(n, [r[2] for r in mine], marker="o", label=name)
        ax.fill_between(n, [r[3] for r in mine], [r[4] for r in mine], alpha=0.2)
    ax.set_xscale("log")
    ax.set_xticks([5, 10, 20, 50, 200])
    ax.set_xticklabels(["5", "10", "20", "50", "200"])
    ax.set_xlabel("good images fitted (log scale; last point: all)")
    ax.set_ylabel("image AUROC")
    ax.set_ylim(0.6, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Few-shot: mean over 3 draws, band from min to max", fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    Image.open(out).convert("RGB").quantize(colors=64).save(out, optimize=True)
    print(f"{out} {out.stat().st_size // 1024} KB")
    return out


if __name__ == "__main__":
    plot_few_shot()
    sys.exit(0)
