"""The options more than one command takes, each declared here once with one help text; the
argument types they parse with; and what they become once parsed (engine settings, Ray
options, a reviewed pool). Imported by every command module: it stays light."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import choices
from ..errors import VqcError


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default in its help line, unless the line already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" not in text and action.default not in (None, False, [], argparse.SUPPRESS)
                and action.option_strings):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def integers(what: str, example: str):
    """An argument type: comma-separated integers, refused with `what` and an example."""
    def parse(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be comma-separated integers, e.g. {example} "
                                             f"(got {text!r})") from None
    return parse


def port_number(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535 (got {text!r})")
    return int(text)


def pixel_count(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--max-pixels is a positive number of pixels, e.g. 5e7 (got {text!r})")
    return int(value)


def head_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"head options are KEY=VALUE (got {text!r})")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_layers(parser) -> None:
    parser.add_argument("--layers", type=integers("layers", "2,3"), help="feature layers, e.g. 2,3 (stages) or "
                        "7,11 (ViT blocks); default: the backbone's own (vqc backbones)")


def add_precision(parser) -> None:
    parser.add_argument("--precision", choices=choices.PRECISIONS, default="fp32",
                        help="bf16: the whole graph in bfloat16 (openvino, CPUs with bf16 units) or the backbone "
                        "under autocast (torch); fp16: torch only (GPU). Check AUROC with evaluate first")


def add_engine(parser) -> None:
    parser.add_argument("--engine", choices=choices.ENGINES, default="auto",
                        help="auto (default): on a CPU ONNX Runtime (fp32) or OpenVINO (bf16), on a GPU PyTorch; or force one")
    parser.add_argument("--threads", type=int, help="CPU threads for the model (default: one per core)")
    add_precision(parser)
    parser.add_argument("--compile", action="store_true", help="torch engine: torch.compile the Detector")
    parser.add_argument("--max-pixels", type=pixel_count, metavar="N",
                        help="refuse images of more pixels, by name, before decoding them (default: 1000 x the "
                             "network input, held between 16 and 64 megapixels: 50.2 MP at 224)")


def add_costs(parser) -> None:
    """The cost policy's weights: `fit`, `threshold` and `benchmark`."""
    parser.add_argument("--fp-cost", type=float, default=1.0, help="cost policy: cost of rejecting a good part")
    parser.add_argument("--fn-cost", type=float, default=10.0, help="cost policy: cost of an escaped defect")
    parser.add_argument("--defect-rate", type=float, help="cost policy: your line's share of defective parts "
                        "(default: the labelled data's own share; needed when that is over 20 %% defective)")


def add_db(parser, required: bool = False) -> None:
    parser.add_argument("--db", required=required, metavar="URL", help="the records database: a SQLite path or a URL "
                        "such as postgresql://user@host/db (default: records.sqlite in the model store; serve MODEL: "
                        "MODEL.records.sqlite beside it, 'none' keeps no records; predict records only when given)")


def add_store(parser, required: bool = False) -> None:
    parser.add_argument("--store", required=required, metavar="DIR", help="the model store's folder: the model "
                        "versions, what is live and in shadow on each target, and the records")


def add_target(parser) -> None:
    parser.add_argument("--target", default="serve", help="the name a service (vqc serve --target) or station has "
                        "in the model store: the one whose live and shadow versions are served or changed")


def add_image_store(parser, keep_good: bool = True) -> None:
    parser.add_argument("--image-store", metavar="DIR", help="the image store: the folder of the inspected images "
                        "of defective parts and their overlays (default: images/ in the model store, or "
                        "MODEL-images/ beside the model)")
    if keep_good:
        parser.add_argument("--keep-good", type=float, default=0.01, metavar="FRACTION",
                            help="share of good images kept in the image store too (default 0.01)")


def add_station(parser) -> None:
    parser.add_argument("--station", help="a station / camera id: predict records it with each inspection, "
                        "records export keeps only its inspections")


def add_listening(parser, port: int) -> None:
    """Where a web service listens: `serve` and `studio`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on: 127.0.0.1 is this PC only; "
                        "0.0.0.0 (or this PC's address) makes it and its pages reachable on the plant network")
    parser.add_argument("--port", type=port_number, default=port, help="TCP port to listen on")


def add_api_key_file(parser) -> None:
    parser.add_argument("--api-key-file", metavar="FILE", help="ask for one of the keys in this file (vqc keys add): "
                        "serve on /v1, the studio on every page; without it the studio listens on this PC only "
                        "and whoever uses it is an admin")


def add_ray(parser, workers: bool = False) -> None:
    parser.add_argument("--ray", action="store_true",
                        help="run on Ray: a local instance started for the run, or the cluster at --ray-address")
    parser.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (HOST:PORT); implies --ray")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0,
                        help="--ray: CPUs each worker declares and uses as threads (default 1; for predict, "
                             "--threads overrides the threads)")
    if workers:
        parser.add_argument("--workers", type=int, default=0,
                            help="--ray: scoring workers (default: one per GPU, else one per --cpus-per-worker CPUs)")


def add_reviewed(parser) -> None:
    parser.add_argument("--from-records", metavar="STORE", help="the operators' reviewed inspections in this model "
                        "store (or records database, with --image-store) as the labelled data")
    add_image_store(parser, keep_good=False)


def reviewed_data(args, data):
    """The data argument, or the reviewed pool of --from-records."""
    if not args.from_records:
        return data
    if data:
        raise VqcError("give a data folder or --from-records, not both")
    from ..records import Records
    from ..store.reviews import reviewed_pool
    from ..store.versions import ModelStore
    if Path(args.from_records).is_dir():
        store = ModelStore.open(args.from_records)
        database, images = store.database, store.images_folder
    else:  # a records database of its own: its images, if any, in --image-store
        database, images = Records(args.from_records, create=False).database, None
    pool = reviewed_pool(database, Path(args.image_store) if args.image_store else images,
                         f"reviewed records in {args.from_records}")
    if not pool.samples:
        raise VqcError(f"no reviewed inspections with a stored image in {args.from_records}")
    print(f"{len(pool.samples)} reviewed images ({sum(s.label for s in pool.samples)} defective) from "
          f"{args.from_records}" + (f"; {pool.unavailable} reviewed without a stored image" if pool.unavailable else ""))
    return pool


def engine_settings(args):
    from ..engines import EngineSettings
    return EngineSettings(args.engine, args.threads, args.precision, args.compile)


def scoring_model(args):
    """The model file or line bundle, on the engine and with the image limit the options ask for."""
    from ..loading import open_model
    return open_model(args.model, engine_settings(args), args.max_pixels)


def ray_options(args):
    if not (args.ray or args.ray_address):
        return None
    from ..training.ray_session import RayOptions
    if args.cpus_per_worker <= 0 or getattr(args, "workers", 0) < 0:
        raise VqcError("--cpus-per-worker must be above 0 and --workers at least 0")
    return RayOptions(address=args.ray_address, workers=getattr(args, "workers", 0),
                      cpus_per_worker=args.cpus_per_worker)


def console():
    from rich.console import Console
    return Console() if sys.stdout.isatty() else Console(width=200)  # logs and pipes: no truncation
