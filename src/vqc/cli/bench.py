"""`vqc demo`, `vqc backbones` and `vqc benchmark`: try vqc, list backbones, compare configurations."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import VqcError
from .options import add_costs, add_layers, add_precision, add_ray, console, integers, ray_options
from .scoring import print_metrics


def add_parsers(sub) -> None:
    demo = sub.add_parser("demo", help="fit, evaluate and draw heat maps on the shipped demo data")
    demo.set_defaults(run=cmd_demo)
    demo.add_argument("--out", default="vqc-demo", help="output folder")

    sub.add_parser("backbones", help="list backbones, their feature layers and offline weights").set_defaults(
        run=cmd_backbones)

    bench = sub.add_parser("benchmark", help="compare backbone x head x layers over data sets; resumable")
    bench.set_defaults(run=cmd_benchmark)
    bench.add_argument("--config", help="YAML matrix: backbones, heads, data, [layers, head_options, weights, image_size]")
    bench.add_argument("--preset", choices=["paper"], help="the paper's matrix (DeiT blocks 7/11, EfficientFormer, "
                       "Swin, ResNet-50 x nf/gmm/mdn on MVTec AD and BTAD)")
    bench.add_argument("--backbones", default="efficientnet_lite0", help="comma-separated")
    bench.add_argument("--heads", default="knn,nf,gmm", help="comma-separated")
    add_layers(bench)
    bench.add_argument("--data", nargs="*", default=[], help="category folders, or roots that hold categories")
    bench.add_argument("--out", default="benchmark", help="output folder (rerun with the same folder to resume)")
    add_costs(bench)
    bench.add_argument("--false-reject-rate", type=float, default=0.01, help="target for the false-reject policy")
    bench.add_argument("--report-only", action="store_true", help="write the outputs from stored cells; run none")
    bench.add_argument("--speed", action="store_true",
                       help="time each backbone x head instead (latency, throughput, end to end) on one --data root")
    bench.add_argument("--engines", default="auto", help="--speed: comma-separated auto, torch, onnx, openvino")
    add_precision(bench)
    bench.add_argument("--batches", type=integers("--batches", "32,128"), default=(32, 128, 256),
                       help="--speed: throughput batch sizes")
    bench.add_argument("--end-to-end-images", type=int, default=256,
                       help="--speed: images per end-to-end pass (the test split, repeated to this many)")
    bench.add_argument("--json", help="--speed: also write the records to this JSON file")
    add_ray(bench)


def cmd_demo(args) -> None:
    from ..training.demo import run_demo
    run_demo(Path(args.out), print_metrics)


def cmd_backbones(args) -> None:
    from rich.table import Table
    from ..training.backbones import BACKBONES, describe
    table = Table(title="backbones (vqc fit --backbone NAME --layers ...)")
    for column in ("name", "params (M)", "layers: index/channels/stride", "default", "weights offline", "note"):
        table.add_column(column)
    for spec in BACKBONES.values():
        d = describe(spec)
        if d["layer_kind"] == "block":
            _, channels, stride = d["levels"][0]
            levels = f"blocks 0-{d['blocks'] - 1}: {channels} ch, /{stride}"
        else:
            levels = ", ".join(f"{i}:{c}/{r}" for i, c, r in d["levels"])
        default = ",".join(map(str, d["default_layers"]))
        if d["flow_layers"]:
            default += f" (nf: {','.join(map(str, d['flow_layers']))})"
        table.add_row(d["name"], f"{d['params_m']:.1f}", levels, default,
                      d["offline"] or "no (hub download or --weights FILE)", d["note"])
    console().print(table)


def cmd_benchmark(args) -> int:
    from ..training.benchmark import Matrix, load_matrix, paper_matrix, run_matrix, write_outputs
    if args.speed:
        if ray_options(args):
            raise VqcError("--speed times models on this machine; it does not take --ray")
        return _speed(args)
    missing = []
    if args.config:
        matrix = load_matrix(args.config)
    elif args.preset == "paper":
        matrix, missing = paper_matrix(args.data)
        for line in missing:
            print(f"paper preset, missing {line}")
        if not args.data:
            return 2
    else:
        if not args.data:
            raise VqcError("benchmark needs --data (category folders or roots), --config FILE or --preset paper")
        backbones = args.backbones.split(",")
        matrix = Matrix(backbones=backbones, heads=args.heads.split(","), data=args.data,
                        layers={b: [args.layers] for b in backbones} if args.layers else {})
    costs = {"fp_cost": args.fp_cost, "fn_cost": args.fn_cost, "defect_rate": args.defect_rate,
             "false_reject_rate": args.false_reject_rate}
    out = Path(args.out)
    cells = matrix.cells()
    print(f"{len(cells)} cells -> {out}")
    if args.report_only:
        from ..training.benchmark import pending_record
        stored = {cell: out / "cells" / f"{cell.key}.json" for cell in cells}
        if not any(p.exists() for p in stored.values()):
            raise VqcError(f"no stored cells of this matrix in {out}")
        records = [json.loads(p.read_text()) if p.exists() else pending_record(cell) for cell, p in stored.items()]
    elif ray_options(args):
        from ..training.ray_benchmark import run_matrix_on_ray
        records = run_matrix_on_ray(cells, out, costs, ray_options(args))
    else:
        records = run_matrix(cells, out, costs)
    write_outputs(records, out)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.csv'}, results.json, results.md, report.html")
    return 0 if all(r["status"] == "ok" for r in records) and not missing else 1


def _speed(args) -> int:
    from ..files import write_text_atomic
    from ..training.speed import machine, run_speed, speed_cases, speed_table
    if len(args.data) != 1:
        raise VqcError("--speed times on one data set root: pass --data ROOT")
    cases = speed_cases(args.backbones.split(","), args.heads.split(","), args.data[0], args.engines.split(","),
                        batches=args.batches, precision=args.precision, end_to_end_images=args.end_to_end_images)
    about = machine()
    print(f"{len(cases)} cases on {args.data[0]}; " + ", ".join(f"{k} {v}" for k, v in about.items()))
    records = run_speed(cases)
    print(speed_table(records))
    if args.json:
        write_text_atomic(args.json, json.dumps({"machine": about, "records": records}, indent=1) + "\n")
    return 0 if all(r["status"] == "ok" for r in records) else 1

