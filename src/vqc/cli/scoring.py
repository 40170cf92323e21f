"""`vqc predict`, `vqc evaluate` and `vqc export`: score images, measure a model, write the line bundle."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from ..errors import VqcError
from .options import (add_db, add_engine, add_image_store, add_ray, add_reviewed, add_station, console, ray_options,
                      engine_settings, reviewed_data, scoring_model)

MODEL_HELP = "a model file (.safetensors, from vqc fit) or a line bundle folder (from vqc export)"


def add_parsers(sub) -> None:
    predict = sub.add_parser("predict", help="score images; write scores.csv and heat-map overlays")
    predict.set_defaults(run=cmd_predict)
    predict.add_argument("model", help=MODEL_HELP)
    predict.add_argument("images", nargs="+", help="image files, folders or globs; with --ray also .txt or .parquet "
                         "lists of image paths")
    predict.add_argument("--out", default="predictions", help="output folder (--ray: resumable, a rerun scores "
                         "only the images not stored yet; scores only, no overlays)")
    predict.add_argument("--no-overlays", action="store_true", help="write scores.csv only, no heat-map overlays")
    add_engine(predict)
    predict.add_argument("--watch", action="store_true", help="keep watching the folder for new images")
    predict.add_argument("--interval", type=float, default=1.0, help="seconds between looks at a watched folder")
    add_db(predict)
    add_station(predict)
    add_image_store(predict)
    add_ray(predict, workers=True)
    predict.add_argument("--csv", action="store_true",
                         help="--ray: also write OUT/scores.csv from the Parquet parts in OUT/scores/ "
                         "(local predict's columns, the overlay column empty)")

    evaluate = sub.add_parser("evaluate", help="metrics on a labelled test split")
    evaluate.set_defaults(run=cmd_evaluate)
    evaluate.add_argument("model", help=MODEL_HELP)
    evaluate.add_argument("data", nargs="?", help="a data set folder (its test split); or --from-records")
    add_reviewed(evaluate)
    evaluate.add_argument("--json", help="also write the metrics to this JSON file")
    add_engine(evaluate)
    evaluate.add_argument("--record", action="store_true",
                          help="store the metrics in the model file (shown by the service's /v1/model)")

    export = sub.add_parser("export", help="write the line bundle: the parity-checked ONNX graph and all a "
                            "torch-free runtime needs, in one folder")
    export.set_defaults(run=cmd_export)
    export.add_argument("model", help="the model file to export (.safetensors, from vqc fit)")
    export.add_argument("--format", choices=["onnx"], default="onnx", help="the graph format")
    export.add_argument("--out", required=True, metavar="DIR", help="bundle folder to write (model.onnx, bundle.json); "
                        "vqc predict, serve and watch take it on the runtime install")
    export.add_argument("--check-images", nargs="*", default=[], help="images both engines must agree on")


def cmd_predict(args) -> int | None:
    if ray_options(args):
        if args.db or args.watch:
            raise VqcError("--db and --watch run on the local path; leave out --ray for them")
        return _predict_on_ray(args)
    from ..data import list_images
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise VqcError(f"--out {out} is a file: give a folder for scores.csv and the overlays")
    if args.watch and (len(args.images) != 1 or not Path(args.images[0]).is_dir()):
        raise VqcError("--watch takes one folder to watch")
    images = [] if args.watch else list_images(args.images)
    from ..inspection import inspect_files
    from ..scorefiles import ScoreWriter, common_folder, watch_folder, write_unreadable
    judge = _scoring_judge(args)
    model = judge.model
    base = Path(args.images[0]) if args.watch else common_folder(images)
    writer = ScoreWriter(out / "scores.csv", judge, base, overlays=not args.no_overlays, station=args.station)
    try:
        if args.watch:
            print(f"watching {base} for new images (Ctrl-C to stop); rows go to {writer.path}")
            watch_folder(base, writer, args.interval)
            return None
        unreadable: list[tuple[Path, str]] = []
        start = time.perf_counter()
        scored = writer.write(inspect_files(model, images, progress=True,
                                            on_unreadable=lambda path, exc: unreadable.append((path, str(exc)))))
        seconds = time.perf_counter() - start
    finally:
        writer.close()
        if judge.recorder is not None:
            judge.recorder.records.close()
    if not unreadable:
        print(f"scored {scored} images ({writer.verdict_counts()}) -> {writer.path} in {seconds:.2f} s "
              f"({scored / seconds:.1f} images/s from the first file read to the last row written)")
        return None
    if not scored and len(unreadable) == 1:
        raise VqcError(unreadable[0][1])
    listing = write_unreadable(out / "unreadable.csv", unreadable)
    for path, reason in unreadable:
        print(f"  unreadable: {reason}", file=sys.stderr)
    if not scored:
        raise VqcError(f"none of the {len(unreadable)} images could be read (listed above and in {listing})")
    print(f"scored {scored} of {scored + len(unreadable)} images ({writer.verdict_counts()}) -> {writer.path}; "
          f"{len(unreadable)} could not be read (listed above and in {listing})")
    return 1


def _scoring_judge(args):
    """`predict`: the model judging each image, as `vqc serve` judges them; with --db, each recorded."""
    from ..live import JudgeOptions, open_judge
    from ..records import open_records
    records = open_records(args.db, args.image_store, args.keep_good, beside=args.model) if args.db else None
    return open_judge(Path(args.model), JudgeOptions(engine_settings(args), args.max_pixels), records)


def _predict_on_ray(args) -> int:
    from ..training.ray_predict import predict_on_ray
    result = predict_on_ray(args.model, args.images, args.out, ray_options(args), engine_settings(args),
                            write_csv=args.csv)
    print(f"scored {result.scored} images ({result.already} already scored, {len(result.unreadable)} unreadable) "
          f"-> {Path(args.out) / 'scores'}" + (f" and {Path(args.out) / 'scores.csv'}" if args.csv else "") +
          (f" in {result.seconds:.1f} s, the first after {result.first_row_seconds:.1f} s" if result.scored else ""))
    return 1 if result.unreadable else 0


def _fmt(value: float) -> str:
    return "n/a" if isinstance(value, float) and math.isnan(value) else f"{value:.4f}"


def _pointing_cell(row: dict) -> str:
    """The share and the images it counts: defective images without a mask are not among them."""
    return "n/a" if not row["n_pointing"] else f"{_fmt(row['pointing'])} of {row['n_pointing']}"


def print_metrics(result: dict, title: str) -> None:
    from rich.table import Table
    table = Table(title=title)
    for column in ("set", "images", "defective", "image AUROC", "image AP", "F1-max", "pixel AUROC", "AUPRO@0.3",
                   "pointing", "defect pixels"):
        table.add_column(column, justify="left" if column == "set" else "right")
    table.add_row("all", str(result["n_images"]), str(result["n_defective"]), _fmt(result["image_auroc"]),
                  _fmt(result["image_ap"]), _fmt(result["image_f1_max"]), _fmt(result["pixel_auroc"]),
                  _fmt(result["aupro"]), _pointing_cell(result), "100%")
    for defect, row in result["per_defect"].items():
        table.add_row(f"  {defect}", "", str(row["n_images"]), _fmt(row["image_auroc"]), "", "",
                      _fmt(row["pixel_auroc"]), "", _pointing_cell(row), f"{row['pixel_share']:.1%}")
    console().print(table)
    verdict = result.get("at_threshold")
    if verdict:
        print(f"at the stored threshold {verdict['threshold']:.6g} ({verdict['policy']}): false-reject rate "
              f"{verdict['false_reject_rate']:.1%} on {verdict['n_good']} good test images, miss rate "
              f"{verdict['miss_rate']:.1%} on the defective ones")


def _metrics_json(result: dict) -> str:
    def clean(value):  # NaN (an undefined metric) is null in JSON
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return None if isinstance(value, float) and math.isnan(value) else value
    return json.dumps(clean({k: v for k, v in result.items() if k != "predictions"}), indent=2)


def cmd_evaluate(args) -> None:
    from ..training.evaluation import evaluate
    from ..files import write_text_atomic
    data = reviewed_data(args, args.data)
    if data is None:
        raise VqcError("give a data folder or --from-records STORE")
    model = scoring_model(args)
    result = evaluate(model, data)
    print_metrics(result, f"{model.config.backbone} + {model.config.head} on {data}")
    if args.json:
        write_text_atomic(args.json, _metrics_json(result) + "\n")
    if args.record:
        model.info["evaluation"] = {**json.loads(_metrics_json(result)), "data": str(data)}
        model.save(args.model)


def cmd_export(args) -> None:
    from ..data import list_images
    from ..training.export import export_bundle
    from ..training.model import load
    manifest = export_bundle(load(args.model), args.out, list_images(args.check_images) if args.check_images else [],
                             source=args.model)
    p = manifest["parity"]
    print(f"exported the line bundle {args.out}; parity on {p['images']} images: scores within "
          f"{p['score_max_rel_diff']:.1e} relative, maps within {p['map_max_diff_rel_to_scale']:.1e} of their scale")

