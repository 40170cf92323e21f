"""report.html: one self-contained page (figures embedded as PNG) for a benchmark run."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from ..files import write_text_atomic


def _figure_tag(fig) -> str:
    import matplotlib.pyplot as plt
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _curves(ok: list[dict], cats: list[str], kind: str) -> str:
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve
    fig, axes = plt.subplots(1, len(cats), figsize=(4.2 * len(cats), 4), squeeze=False)
    for ax, cat in zip(axes[0], cats):
        for r in (r for r in ok if r["category"] == cat):
            labels, scores = np.array(r["curves"]["labels"]), np.array(r["curves"]["scores"])
            if not 0 < labels.sum() < len(labels):
                continue
            if kind == "roc":
                x, y, _ = roc_curve(labels, scores)
                ax.plot(x, y, label=f"{r['model']} ({r['image_auroc']:.3f})")
            else:
                precision, recall, _ = precision_recall_curve(labels, scores)
                ax.plot(recall, precision, label=f"{r['model']} ({r['image_ap']:.3f})")
        ax.set_title(cat)
        ax.set_xlabel("false-positive rate" if kind == "roc" else "recall")
        ax.set_ylabel("true-positive rate" if kind == "roc" else "precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
    return _figure_tag(fig)


def _bars(ok: list[dict], cats: list[str], models: list[str]) -> str:
    import matplotlib.pyplot as plt
    metrics = [("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO@0.3")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), squeeze=False)
    width = 0.8 / max(len(models), 1)
    by = {(r["model"], r["category"]): r for r in ok}
    for ax, (key, title) in zip(axes[0], metrics):
        for i, m in enumerate(models):
            values = [by.get((m, c), {}).get(key) or 0 for c in cats]
            ax.bar(np.arange(len(cats)) + i * width, values, width, label=m)
        ax.set_xticks(np.arange(len(cats)) + width * (len(models) - 1) / 2, cats, rotation=30, ha="right")
        ax.set_ylim(0.5, 1.0)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _figure_tag(fig)


def _pareto(ok: list[dict], models: list[str]) -> str:
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m in models:
        rows = [r for r in ok if r["model"] == m]
        auroc = np.mean([r["image_auroc"] for r in rows])
        for ax, key, scale in ((axes[0], "latency_ms", 1), (axes[1], "params_backbone", 1e6)):
            x = np.mean([r[key] for r in rows]) / scale
            ax.scatter(x, auroc, s=40)
            ax.annotate(m, (x, auroc), fontsize=7, xytext=(4, 4), textcoords="offset points")
    axes[0].set_xlabel("batch-1 latency, ms (log)")
    axes[1].set_xlabel("backbone parameters, millions (log)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_ylabel("mean image AUROC")
        ax.grid(alpha=0.3)
    return _figure_tag(fig)


def _overlays(ok: list[dict], out: Path) -> str:
    rows = []
    for r in ok:
        tiles = []
        for item in r.get("overlays", []):
            path = out / item["file"]
            if path.exists():
                data = base64.b64encode(path.read_bytes()).decode()
                tiles.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(item["defect"])}">'
                             f'<figcaption>{html.escape(item["defect"])} · {item["score"]:.3g}</figcaption></figure>')
        rows.append(f"<h3>{html.escape(r['model'])} · {html.escape(r['category'])}</h3>"
                    f"<div class='tiles'>{''.join(tiles)}</div>")
    return "\n".join(rows)


def _threshold_table(ok: list[dict]) -> str:
    head = ("<tr><th>model</th><th>category</th><th>policy</th><th>threshold</th>"
            "<th>expected cost / 1000 parts</th></tr>")
    body = []
    for r in ok:
        for policy, value in r.get("thresholds", {}).items():
            if policy == "costs":
                continue
            body.append(f"<tr><td>{html.escape(r['model'])}</td><td>{html.escape(r['category'])}</td>"
                        f"<td>{policy}</td><td>{value['threshold']:.4g}</td><td>{value['cost_per_1000']:.1f}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def write_report(records: list[dict], tables_markdown: str, out: Path) -> Path:
    """report.html for the benchmark's records; `tables_markdown` is its results.md, shown first."""
    import markdown_it
    ok = [r for r in records if r["status"] == "ok"]
    cats = list(dict.fromkeys(r["category"] for r in ok))
    models = list(dict.fromkeys(r["model"] for r in ok))
    costs = next((r["thresholds"]["costs"] for r in ok if "thresholds" in r), {})
    sections = [f"<h1>vqc benchmark</h1><p>{len(ok)} of {len(records)} cells ran.</p>",
                "<h2>Results</h2>" + markdown_it.MarkdownIt().enable("table").render(tables_markdown)]
    if ok:
        sections += [
            "<h2>Image ROC curves</h2>" + _curves(ok, cats, "roc"),
            "<h2>Image precision-recall curves</h2>" + _curves(ok, cats, "pr"),
            "<h2>Per category</h2>" + _bars(ok, cats, models),
            "<h2>Accuracy against cost</h2>" + _pareto(ok, models),
            f"<h2>Thresholds for the line</h2><p>Costs: false reject {costs.get('fp_cost')}, escaped defect "
            f"{costs.get('fn_cost')}, defect rate {costs.get('defect_rate') or 'as in the test set'}. "
            "The cost and F1 thresholds are chosen on the test split itself, so their costs are optimistic; "
            "the false-reject-rate threshold comes from held-out good training images only.</p>"
            + _threshold_table(ok),
            "<h2>Heat maps</h2><p>Green outlines are the ground truth; colours are on each model's "
            "fixed normal scale.</p>" + _overlays(ok, out),
        ]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>vqc benchmark</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
            "text-align:right}th:first-child,td:first-child{text-align:left}img{max-width:100%}"
            ".tiles{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0}figcaption{font-size:12px}"
            "</style></head><body>" + "\n".join(sections) + "</body></html>")
    path = out / "report.html"
    write_text_atomic(path, page)
    return path
