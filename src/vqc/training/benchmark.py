"""The comparison matrix: backbone x head x layers x data set, one cell at a time, resumable.

Each cell runs in its own process (a crash or an out-of-memory kill costs one cell, and the
process's peak memory is the cell's own) and is stored as soon as it finishes, as
`OUT/cells/<key>.json`; a rerun skips stored cells, so an interrupted run loses nothing.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .backbones import BACKBONES, get_spec, offline_weights
from ..errors import VqcError
from ..files import write_text_atomic

PAPER_MVTEC = ["bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
               "screw", "tile", "toothbrush", "transistor", "wood", "zipper"]
PAPER_BTAD = ["01", "02", "03"]


@dataclass(frozen=True)
class Cell:
    backbone: str
    head: str
    data: str  # one category folder (MVTec AD, BTAD, VisA layout)
    layers: tuple[int, ...] = ()  # empty: the backbone's default
    head_options: str = "{}"  # JSON with sorted keys, so cells stay hashable
    weights: str | None = None
    image_size: int = 224

    @property
    def category(self) -> str:
        return Path(self.data).name

    @property
    def model_name(self) -> str:
        layers = f" [{','.join(map(str, self.layers))}]" if self.layers else ""
        return f"{self.backbone}{layers} + {self.head}"

    @property
    def key(self) -> str:
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]
        layers = "-".join(map(str, self.layers)) or "default"
        return f"{self.category}__{self.backbone}__{self.head}__L{layers}__{digest}"


@dataclass
class Matrix:
    backbones: list[str]
    heads: list[str]
    data: list[str]
    layers: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)  # per backbone; default: [()]
    head_options: dict[str, dict] = field(default_factory=dict)  # per head
    weights: dict[str, str] = field(default_factory=dict)  # per backbone: a weight file
    image_size: int = 224
    pairs: list[tuple] = field(default_factory=list)  # (backbone, head[, layers]); replaces the product

    def cells(self) -> list[Cell]:
        runs = []  # (backbone, head, layers)
        for pair in self.pairs or [(b, h) for b in self.backbones for h in self.heads]:
            backbone, head, *own = pair
            get_spec(backbone)
            runs += [(backbone, head, tuple(layers)) for layers in (own or self.layers.get(backbone, [()]))]
        return [Cell(b, h, str(d), layers, json.dumps(self.head_options.get(h, {}), sort_keys=True),
                     self.weights.get(b), self.image_size)
                for d in categories(self.data) for b, h, layers in runs]


def categories(paths: list[str]) -> list[Path]:
    """Category folders: a path with train/ or test/ is one; otherwise each such subfolder is."""
    found = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise VqcError(f"data folder {path} does not exist")
        if (path / "train").is_dir() or (path / "test").is_dir() or (path / "Data").is_dir():
            found.append(path)
            continue
        inside = sorted(p for p in path.iterdir() if (p / "train").is_dir() or (p / "test").is_dir())
        if not inside:
            raise VqcError(f"{path} holds no data set category (no train/ or test/ folder in it or below it)")
        found += inside
    return found


def load_matrix(path: str | Path) -> Matrix:
    """A YAML matrix: data and either backbones x heads or pairs [backbone, head] or
    [backbone, head, layers] (lists);
    layers, head_options, weights (maps); image_size."""
    import yaml
    try:
        spec = yaml.safe_load(Path(path).read_text()) or {}
        pairs = [tuple(p) for p in spec.get("pairs") or []]
        return Matrix(backbones=list(spec.get("backbones") or [p[0] for p in pairs]),
                      heads=list(spec.get("heads") or [p[1] for p in pairs]), data=list(spec["data"]), pairs=pairs,
                      layers={b: [tuple(x) for x in v] for b, v in (spec.get("layers") or {}).items()},
                      head_options=dict(spec.get("head_options") or {}), weights=dict(spec.get("weights") or {}),
                      image_size=int(spec.get("image_size", 224)))
    except FileNotFoundError:
        raise VqcError(f"matrix file {path} does not exist") from None
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise VqcError(f"matrix file {path}: {type(exc).__name__} {exc} (needs data, and backbones and heads or pairs)") from None


def paper_matrix(data: list[str]) -> tuple[Matrix, list[str]]:
    """The paper's comparison, and what is missing to run all of it."""
    missing = []
    if not data:
        missing.append("data: pass --data with the MVTec AD root (15 categories: "
                       + ", ".join(PAPER_MVTEC) + ") and the BTAD root (products 01, 02, 03)")
    else:
        names = {p.name for p in categories(data)}
        absent = [c for c in PAPER_MVTEC + PAPER_BTAD if c not in names]
        if absent:
            missing.append(f"data: categories {', '.join(absent)} not found under {', '.join(data)}; "
                           "download MVTec AD and BTAD and pass their roots with --data")
    matrix = Matrix(
        backbones=["deit_base_distilled_patch16_224", "efficientformer_l1", "efficientformer_l3",
                   "swin_tiny_patch4_window7_224", "resnet50"],
        heads=["nf", "gmm", "mdn"], data=data,
        layers={"deit_base_distilled_patch16_224": [(7,), (11,)]},
        head_options={"mdn": {"components": 100}})
    return matrix, missing


def hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def weights_problem(backbone: str, weights: str | None, online: bool) -> str | None:
    """Why a backbone cannot get weights here, or None if it can."""
    if weights:
        return None if Path(weights).is_file() else f"weight file {weights} for {backbone} does not exist"
    if offline_weights(BACKBONES[backbone]) or online:
        return None
    return (f"no weights for {backbone}: not available offline and timm's hub is unreachable; download them "
            f"where there is internet and pass weights: {{{backbone}: FILE}} in the matrix YAML")


# ---------------------------------------------------------------- running

def run_matrix(cells: list[Cell], out: Path, costs: dict, progress: bool = True, say=print) -> list[dict]:
    """Run every cell not stored yet (each in a subprocess); return all cells' records."""
    from ..progress import progress_bar
    out.mkdir(parents=True, exist_ok=True)
    stored = {cell: stored_record(cell, out) for cell in cells}
    problems = weights_problems([cell for cell in cells if stored[cell] is None])
    records = []
    for cell in progress_bar(cells, desc="benchmark", unit="cell", shown=progress):
        record = stored[cell]
        if record is None:
            problem = problems.get(cell)
            record = error_record(cell, problem, "missing") if problem else _run_subprocess(cell, out, costs)
            if record["status"] != "ok":  # a cell that finished wrote its own record
                write_text_atomic(out / "cells" / f"{cell.key}.json", json.dumps(record, indent=1))
            say(cell_summary(cell, record))
        records.append(record)
    return records


def stored_record(cell: Cell, out: Path) -> dict | None:
    """The cell's stored record if it finished; None if it must run (failed cells are tried again)."""
    path = out / "cells" / f"{cell.key}.json"
    stored = json.loads(path.read_text()) if path.exists() else None
    return stored if stored and stored["status"] == "ok" else None


def weights_problems(cells: list[Cell]) -> dict[Cell, str]:
    """Cells that cannot get their backbone's weights here, and why (the hub is asked only if needed)."""
    online = any(not offline_weights(BACKBONES[c.backbone]) and not c.weights for c in cells) and hub_reachable()
    problems = {cell: weights_problem(cell.backbone, cell.weights, online) for cell in cells}
    return {cell: problem for cell, problem in problems.items() if problem}


def cell_summary(cell: Cell, record: dict) -> str:
    return f"{cell.model_name} on {cell.category}: " + (
        f"image AUROC {record['image_auroc']:.4f}" if record["status"] == "ok" else record["error"])


def error_record(cell: Cell, message: str, status: str = "error") -> dict:
    return {**asdict(cell), "key": cell.key, "model": cell.model_name, "category": cell.category,
            "status": status, "error": message, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def pending_record(cell: Cell) -> dict:
    return error_record(cell, "not run yet (rerun the benchmark without --report-only)", "pending")


def _run_subprocess(cell: Cell, out: Path, costs: dict) -> dict:
    """One cell in a fresh interpreter; it writes its own record, atomically."""
    args = [sys.executable, "-m", "vqc.training.benchmark", json.dumps(asdict(cell)), str(out), json.dumps(costs)]
    done = subprocess.run(args, capture_output=True, text=True)
    path = out / "cells" / f"{cell.key}.json"
    if path.exists():
        return json.loads(path.read_text())
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return error_record(cell, f"cell process exited with code {done.returncode}: {tail}")


def run_cell(cell: Cell, out: Path, costs: dict) -> dict:
    """Fit, evaluate, measure; write overlays and the record. Runs inside the cell's process."""
    import numpy as np
    import torch

    from ..data import decode_image, load_mask
    from .efficiency import measure, peak_memory_mb
    from .evaluation import evaluate
    from .metrics import cost_threshold, f1_max, false_reject_threshold
    from .model import AnomalyModel
    from ..viz import prediction_overlay, save_png

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    torch.manual_seed(0)
    model = AnomalyModel(backbone=cell.backbone, head=cell.head, layers=cell.layers or None,
                         image_size=cell.image_size, weights=cell.weights, head_options=json.loads(cell.head_options))
    model.fit(cell.data, progress=False)
    result = evaluate(model, cell.data, progress=False, keep_predictions=True)
    predictions = result.pop("predictions")
    labels = np.array([s.label for s, _ in predictions])
    scores = np.array([p.score for _, p in predictions])
    efficiency = measure(model.detector, cell.image_size)
    fp_cost, fn_cost, rate = costs["fp_cost"], costs["fn_cost"], costs.get("defect_rate")

    def cost_at(threshold: float) -> float:
        rejected = scores >= threshold
        fr = rejected[labels == 0].mean() if (labels == 0).any() else 0.0
        miss = (~rejected[labels == 1]).mean() if (labels == 1).any() else 0.0
        share = labels.mean() if rate is None else rate
        return round(1000 * (fp_cost * (1 - share) * fr + fn_cost * share * miss), 3)

    thresholds = {"costs": costs}
    if 0 < labels.sum() < len(labels):
        best = cost_threshold(labels, scores, fp_cost, fn_cost, rate)
        thresholds["cost"] = {"threshold": best["threshold"], "cost_per_1000": best["expected_cost_per_1000"]}
        f1_thr = f1_max(labels, scores)[1]
        thresholds["f1"] = {"threshold": f1_thr, "cost_per_1000": cost_at(f1_thr)}
    frr_thr = false_reject_threshold(model.info["normal_scores"], costs.get("false_reject_rate", 0.01))
    thresholds["false_reject_rate"] = {"threshold": frr_thr, "cost_per_1000": cost_at(frr_thr)}

    overlays = []
    floor, top = model.normal_range()
    picks = [next((sp for sp in predictions if sp[0].label == 0), None)]
    picks += [next(sp for sp in predictions if sp[0].defect == d) for d in result["per_defect"]][:5]
    for sample, pred in filter(None, picks):
        image = decode_image(sample.path)
        mask = load_mask(sample.mask, image.shape[:2]) if sample.mask else None
        picture = prediction_overlay(image, pred, floor, top, mask, max_side=256)
        name = f"{cell.key}/{sample.defect}_{sample.path.stem}.png"
        save_png(out / "cells" / name, picture)
        overlays.append({"file": f"cells/{name}", "defect": sample.defect, "score": round(pred.score, 6)})

    record = {**error_record(cell, "", "ok"), "started_at": started, "device": str(model.device),
              "weights_source": model.info["weights_source"], **_finite(result), **efficiency,
              "fit_seconds": model.info["fit_seconds"], "head_fit": model.info["head_fit"],
              "peak_memory_mb": round(peak_memory_mb(model.device), 1), "thresholds": thresholds,
              "curves": {"labels": labels.tolist(), "scores": [round(float(s), 6) for s in scores]},
              "overlays": overlays}
    record.pop("error")
    write_text_atomic(out / "cells" / f"{cell.key}.json", json.dumps(record, indent=1))
    return record


def _finite(value):
    """JSON has no NaN: undefined metrics become null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


# ---------------------------------------------------------------- outputs

METRICS = [("image_auroc", "image AUROC"), ("image_ap", "image AP (PRAUC)"), ("image_f1_max", "image F1-max"),
           ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO@0.3"), ("pointing", "pointing (map maximum on the defect)")]
COSTS = [("params_backbone", "backbone params"), ("params_head", "head tensors"), ("flops_per_image", "GFLOPs"),
         ("latency_ms", "latency b1 ms"), ("throughput_ips", "img/s b32"), ("fit_seconds", "fit s"),
         ("peak_memory_mb", "peak MB")]
CSV_COLUMNS = ["key", "model", "backbone", "layers", "head", "category", "status", "error", "image_auroc",
               "image_ap", "image_f1_max", "pixel_auroc", "aupro", "pointing", "params_backbone", "params_head",
               "flops_per_image", "latency_ms", "latency_p99_ms", "throughput_ips", "fit_seconds", "peak_memory_mb",
               "device", "weights_source"]


def write_outputs(records: list[dict], out: Path) -> None:
    from .report import write_report
    write_text_atomic(out / "results.json", json.dumps(records, indent=1))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for record in records:
        writer.writerow({**record, "layers": ",".join(map(str, record.get("layers", [])))})
    write_text_atomic(out / "results.csv", buffer.getvalue())
    tables = markdown_tables(records)
    write_text_atomic(out / "results.md", tables)
    write_report(records, tables, out)


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _accuracy_and_fit(record: dict | None) -> str:
    """One cell of the first results table: image AUROC / pixel AUROC / fit seconds."""
    if record is None:
        return "-"
    pixel = record.get("pixel_auroc")
    return f"{record['image_auroc']:.3f} / {'-' if pixel is None else f'{pixel:.3f}'} / {record['fit_seconds']:.0f}"


def markdown_tables(records: list[dict]) -> str:
    """Tables shaped like the paper's: rows backbone + head, columns categories and their mean."""
    ok = [r for r in records if r["status"] == "ok"]
    cats = list(dict.fromkeys(r["category"] for r in records))
    models = list(dict.fromkeys(r["model"] for r in records))
    by = {(r["model"], r["category"]): r for r in ok}
    lines = ["### image AUROC / pixel AUROC / fit seconds", "", "| model | " + " | ".join(cats) + " |",
             "|---|" + "---|" * len(cats)]
    for m in models:
        cells = [_accuracy_and_fit(by.get((m, c))) for c in cats]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    parts = ["\n".join(lines)]
    for key, title in METRICS:
        lines = [f"### {title}", "", "| model | " + " | ".join(cats) + " | mean |",
                 "|---|" + "---|" * (len(cats) + 1)]
        for m in models:
            values = [by.get((m, c), {}).get(key) for c in cats]
            cells = ["-" if v is None else f"{v:.3f}" for v in values]
            mean = _mean(values) if all(v is not None for v in values) else None
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {'-' if mean is None else f'{mean:.3f}'} |")
        parts.append("\n".join(lines))
    lines = ["### cost (mean over categories)", "", "| model | " + " | ".join(t for _, t in COSTS) + " |",
             "|---|" + "---|" * len(COSTS)]
    for m in models:
        rows = [r for r in ok if r["model"] == m]
        values = []
        for key, _ in COSTS:
            v = _mean([r.get(key) for r in rows])
            values.append("-" if v is None else f"{v / 1e9:.2f}" if key == "flops_per_image"
                          else f"{v / 1e6:.2f}M" if key.startswith("params") else f"{v:.1f}")
        lines.append(f"| {m} | " + " | ".join(values) + " |")
    parts.append("\n".join(lines))
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        parts.append("### cells not run\n\n" + "\n".join(f"- {r['model']} on {r['category']}: {r['error']}"
                                                        for r in failed))
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":  # one cell, in its own process: python -m vqc.training.benchmark CELL_JSON OUT COSTS_JSON
    cell_fields = json.loads(sys.argv[1])
    one = Cell(**{**cell_fields, "layers": tuple(cell_fields["layers"])})
    try:
        run_cell(one, Path(sys.argv[2]), json.loads(sys.argv[3]))
    except VqcError as exc:
        write_text_atomic(Path(sys.argv[2]) / "cells" / f"{one.key}.json", json.dumps(error_record(one, str(exc))))
        sys.exit(2)
