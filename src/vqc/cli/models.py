"""`vqc models ...` and `vqc update`: the model store from the command line. Parses and prints only;
the work is in vqc.store and vqc.training.update."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import VqcError
from .options import add_db, add_image_store, add_store, add_target


def _store_options(parser, target: bool = False) -> None:
    add_store(parser, required=True)
    add_db(parser)
    parser.add_argument("--by", help="who acts, for the audit trail (default: cli:<login name>)")
    if target:
        add_target(parser)


def add_parsers(sub) -> None:
    models = sub.add_parser("models", help="the model store: versions, promotion, rollback, shadow, comparison")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    add = models_sub.add_parser("add", help="copy a model file or line bundle into the store as a version")
    add.set_defaults(run=cmd_models_add)
    add.add_argument("model", help="a model file or line bundle folder")
    add.add_argument("--parent", help="the version it was made from")
    add.add_argument("--note", help="a free-text note stored with the version")
    _store_options(add)
    listing = models_sub.add_parser("list", help="every version, and what is live and in shadow per target")
    listing.set_defaults(run=cmd_models_list)
    _store_options(listing)
    show = models_sub.add_parser("show", help="one version: hash, parent, fit data, options, evidence")
    show.set_defaults(run=cmd_models_show)
    show.add_argument("version", help="a version (the first hex digits are enough)")
    _store_options(show)
    _add_deployment_changes(models_sub)
    compare = models_sub.add_parser("compare", help="two versions on the inspections both scored: agreement, "
                                    "false rejects on confirmed good parts, confirmed defects passed")
    compare.set_defaults(run=cmd_models_compare)
    compare.add_argument("live", help="the live version")
    compare.add_argument("candidate", help="the candidate version")
    compare.add_argument("--json", help="also write the comparison to this file")
    _store_options(compare)
    audit = models_sub.add_parser("audit", help="admin actions, newest first")
    audit.set_defaults(run=cmd_models_audit)
    audit.add_argument("--limit", type=int, default=50, help="newest actions shown")
    _store_options(audit)
    _add_update(sub)


def _add_deployment_changes(models_sub) -> None:
    """`vqc models promote`, `rollback` and `shadow`: what a target serves."""
    promote = models_sub.add_parser("promote", help="make a version live on a target (a running service takes it "
                                    "within a second, no request dropped)")
    promote.set_defaults(run=cmd_models_promote)
    promote.add_argument("version", help="the version to make live")
    _store_options(promote, target=True)
    promote.add_argument("--other-product", action="store_true",
                         help="allow a version whose name (its product) differs from the one live on the target; "
                              "refused otherwise")
    rollback = models_sub.add_parser("rollback", help="back to the version live before the current one")
    rollback.set_defaults(run=cmd_models_rollback)
    _store_options(rollback, target=True)
    shadow = models_sub.add_parser("shadow", help="score a candidate beside the live model, not acted on ('none' "
                                   "empties the slot)")
    shadow.set_defaults(run=cmd_models_shadow)
    shadow.add_argument("version", help="the candidate version, or none")
    _store_options(shadow, target=True)


def _add_update(sub) -> None:
    update = sub.add_parser("update", help="a new version from the operators' reviews: confirmed false rejects "
                            "join the model, the threshold is chosen again, the version goes to shadow")
    update.set_defaults(run=cmd_update)
    update.add_argument("model", help="a version in the store, or 'live' (what is live on --target)")
    _store_options(update, target=True)
    add_image_store(update, keep_good=False)
    update.add_argument("--fit-data", help="nf, gmm, mdn, ae: the folder the model was fitted on (refit)")
    update.add_argument("--no-shadow", action="store_true", help="add the version, leave the shadow slot as it is")


def _open(args, create: bool = False):
    from ..store.versions import ModelStore
    return ModelStore.open(args.store, args.db, create=create)


def _actor(args) -> str:
    from ..store.versions import local_actor
    return args.by or local_actor()


def cmd_models_add(args) -> None:
    store = _open(args, create=True)
    row = store.add(args.model, _actor(args), args.parent, args.note)
    print(f"version {row['version']} ({row['name']}, {row['kind']}) in {store.folder}")


def cmd_models_list(args) -> None:
    store = _open(args)
    deployed = store.deployments()
    for row in store.versions():
        where = [f"{slot} on {target}" for target, slots in deployed.items() for slot, v in slots.items()
                 if v == row["version"]]
        from ..threshold import Threshold
        threshold = Threshold.of(row["evidence"].get("threshold"))
        shown = "none" if threshold is None else f"{threshold.value:.6g}"
        added = row["added_at"].strftime("%Y-%m-%d %H:%M")
        print(f"{row['version']}  {row['name']:<24} {row['kind']:<6} parent {row['parent'] or '-':<12} "
              f"threshold {shown}  added {added} by {row['added_by']}" + (f"  [{', '.join(where)}]" if where else ""))


def cmd_models_show(args) -> None:
    row = _open(args).get(args.version)
    row["fit_manifest"] = {"images": len(row["fit_manifest"]), "first": row["fit_manifest"][:3]}
    print(json.dumps(row, indent=1, default=str))


def cmd_models_promote(args) -> None:
    version = _open(args).promote(args.target, args.version, _actor(args), args.other_product)
    print(f"{version} is live on {args.target}")


def cmd_models_rollback(args) -> None:
    version = _open(args).rollback(args.target, _actor(args))
    print(f"rolled back: {version} is live on {args.target}")


def cmd_models_shadow(args) -> None:
    version = _open(args).set_shadow(args.target, None if args.version == "none" else args.version, _actor(args))
    print(f"shadow on {args.target}: {version or 'none'}")


def cmd_models_compare(args) -> None:
    from ..store.shadow import compare
    store = _open(args)
    result = compare(store.database, store.get(args.live)["version"], store.get(args.candidate)["version"])
    print_comparison(result)
    if args.json:
        from ..files import write_text_atomic
        write_text_atomic(args.json, json.dumps(result, indent=1) + "\n")


def cmd_models_audit(args) -> None:
    for row in _open(args).audit_trail(args.limit):
        print(f"{row['at']:%Y-%m-%d %H:%M:%S} {row['actor']:<20} {row['action']:<10} {row['target'] or '':<12} "
              f"{row['version'] or '':<12} {json.dumps(row['detail'])}")


def print_comparison(result: dict) -> None:
    def rate(value):
        return "n/a" if value is None else f"{value:.1%}"
    print(f"{result['live']} (live) vs {result['candidate']} (candidate) on {result['inspections']} inspections both "
          f"scored; verdicts agree on {rate(result['agreement'])}")
    print(f"operator-confirmed: {result['confirmed_good']} good, {result['confirmed_defective']} defective")
    for name, side in (("live", result["live_side"]), ("candidate", result["candidate_side"])):
        print(f"  {name:<9} rejects {side['rejected']}; false-reject rate on confirmed good "
              f"{rate(side['false_reject_rate'])} ({side['false_rejects']}); confirmed defects passed "
              f"{side['confirmed_defects_passed']}")
    passed = result["candidate_would_pass"]
    print(f"confirmed defects the candidate would pass that the live model rejects: {len(passed)}"
          + (f" (inspections {', '.join(map(str, passed[:20]))})" if passed else ""))


def cmd_update(args) -> None:
    from ..training.update import update_in_store
    store = _open(args)
    version = store.deployment(args.target)["live"] if args.model == "live" else args.model
    if version is None:
        raise VqcError(f"nothing is live on {args.target}: name a version")
    done = update_in_store(store, version, args.target, _actor(args), Path(args.image_store) if args.image_store
                           else None, args.fit_data, shadow=not args.no_shadow, progress=True)
    print(f"version {done['version']} from {done['parent']}: {done['images_added']} confirmed false rejects added "
          f"({done['method']}); threshold {done['threshold_before']:.6g} -> {done['threshold']:.6g} ({done['policy']})")
    if done["reviewed_without_image"]:
        print(f"  {done['reviewed_without_image']} reviewed false rejects had no stored image and were left out")
    print(f"  in shadow on {args.target}: compare with vqc models compare {done['parent']} {done['version']} "
          f"--store {args.store}" if done["shadow"] else "  not in shadow (--no-shadow)")
