"""`vqc models ...` and `vqc update`: the model store from the command line. Parses and prints only;
the work is in vqc.store and vqc.training.update. Registered by vqc.cli."""
from __future__ import annotations

import json


def _store_options(parser, target: bool = False) -> None:
    parser.add_argument("--store", required=True, metavar="DIR", help="the model store's folder (vqc serve --store)")
    parser.add_argument("--db", metavar="URL", help="the store's database (default: DIR/records.sqlite)")
    parser.add_argument("--by", help="who acts, for the audit trail (default: cli:<login name>)")
    if target:
        parser.add_argument("--target", default="serve",
                            help="the service (vqc serve --target) or station the change is for")


def add_parsers(sub) -> None:
    models = sub.add_parser("models", help="the model store: versions, promotion, rollback, shadow, comparison")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    add = models_sub.add_parser("add", help="copy a model file or line bundle into the store as a version")
    add.add_argument("model", help="a model file or line bundle folder")
    add.add_argument("--parent", help="the version it was made from")
    add.add_argument("--note", help="a free-text note stored with the version")
    _store_options(add)
    _store_options(models_sub.add_parser("list", help="every version, and what is live and in shadow per target"))
    show = models_sub.add_parser("show", help="one version: hash, parent, fit data, options, evidence")
    show.add_argument("version", help="a version (the first hex digits are enough)")
    _store_options(show)
    promote = models_sub.add_parser("promote", help="make a version live on a target (a running service takes it "
                                    "within a second, no request dropped)")
    promote.add_argument("version", help="the version to make live")
    _store_options(promote, target=True)
    promote.add_argument("--other-product", action="store_true",
                         help="allow a version whose name (its product) differs from the one live on the target; "
                              "refused otherwise")
    _store_options(models_sub.add_parser("rollback", help="back to the version live before the current one"),
                   target=True)
    shadow = models_sub.add_parser("shadow", help="score a candidate beside the live model, not acted on ('none' "
                                   "empties the slot)")
    shadow.add_argument("version", help="the candidate version, or none")
    _store_options(shadow, target=True)
    compare = models_sub.add_parser("compare", help="two versions on the inspections both scored: agreement, "
                                    "false rejects on confirmed good parts, confirmed defects passed")
    compare.add_argument("live", help="the live version")
    compare.add_argument("candidate", help="the candidate version")
    compare.add_argument("--json", help="also write the comparison to this file")
    _store_options(compare)
    audit = models_sub.add_parser("audit", help="admin actions, newest first")
    audit.add_argument("--limit", type=int, default=50, help="newest actions shown")
    _store_options(audit)

    update = sub.add_parser("update", help="a new version from the operators' reviews: confirmed false rejects "
                            "join the model, the threshold is chosen again, the version goes to shadow")
    update.add_argument("model", help="a version in the store, or 'live' (what is live on --target)")
    update.add_argument("--from-records", required=True, metavar="DIR", help="the model store whose records hold "
                        "the reviews")
    update.add_argument("--db", metavar="URL", help="the store's database (default: DIR/records.sqlite)")
    update.add_argument("--image-store", metavar="DIR", help="where the reviewed images are (default: DIR/images)")
    update.add_argument("--target", default="serve", help="whose shadow slot the new version goes to")
    update.add_argument("--fit-data", help="nf, gmm, mdn, ae: the folder the model was fitted on (refit)")
    update.add_argument("--no-shadow", action="store_true", help="add the version, leave the shadow slot as it is")
    update.add_argument("--by", help="who acts, for the audit trail (default: cli:<login name>)")


def _open(args):
    from .store.versions import ModelStore
    return ModelStore.open(args.store, args.db, create=args.models_command == "add")


def _actor(args) -> str:
    from .store.versions import local_actor
    return args.by or local_actor()


def cmd_models(args) -> None:
    store = _open(args)
    command = args.models_command
    if command == "add":
        row = store.add(args.model, _actor(args), args.parent, args.note)
        print(f"version {row['version']} ({row['name']}, {row['kind']}) in {store.folder}")
    elif command == "list":
        _print_versions(store)
    elif command == "show":
        row = store.get(args.version)
        row["fit_manifest"] = {"images": len(row["fit_manifest"]), "first": row["fit_manifest"][:3]}
        print(json.dumps(row, indent=1, default=str))
    elif command == "promote":
        version = store.promote(args.target, args.version, _actor(args), args.other_product)
        print(f"{version} is live on {args.target}")
    elif command == "rollback":
        version = store.rollback(args.target, _actor(args))
        print(f"rolled back: {version} is live on {args.target}")
    elif command == "shadow":
        version = store.set_shadow(args.target, None if args.version == "none" else args.version, _actor(args))
        print(f"shadow on {args.target}: {version or 'none'}")
    elif command == "compare":
        from .store.shadow import compare
        result = compare(store.database, store.get(args.live)["version"], store.get(args.candidate)["version"])
        print_comparison(result)
        if args.json:
            from .files import write_text_atomic
            write_text_atomic(args.json, json.dumps(result, indent=1) + "\n")
    else:
        for row in store.audit_trail(args.limit):
            print(f"{row['at']:%Y-%m-%d %H:%M:%S} {row['actor']:<20} {row['action']:<10} {row['target'] or '':<12} "
                  f"{row['version'] or '':<12} {json.dumps(row['detail'])}")


def _print_versions(store) -> None:
    deployed = store.deployments()
    for row in store.versions():
        where = [f"{slot} on {target}" for target, slots in deployed.items() for slot, v in slots.items()
                 if v == row["version"]]
        threshold = (row["evidence"].get("threshold") or {}).get("value")
        shown = "none" if threshold is None else f"{threshold:.6g}"
        added = row["added_at"].strftime("%Y-%m-%d %H:%M")
        print(f"{row['version']}  {row['name']:<24} {row['kind']:<6} parent {row['parent'] or '-':<12} "
              f"threshold {shown}  added {added} by {row['added_by']}" + (f"  [{', '.join(where)}]" if where else ""))


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
    from .store.versions import ModelStore
    from .training.update import update_in_store
    store = ModelStore.open(args.from_records, args.db)
    version = store.deployment(args.target)["live"] if args.model == "live" else args.model
    if version is None:
        from .errors import VqcError
        raise VqcError(f"nothing is live on {args.target}: name a version")
    from pathlib import Path
    done = update_in_store(store, version, args.target, _actor(args), Path(args.image_store) if args.image_store
                           else None, args.fit_data, shadow=not args.no_shadow, progress=True)
    print(f"version {done['version']} from {done['parent']}: {done['images_added']} confirmed false rejects added "
          f"({done['method']}); threshold {done['threshold_before']:.6g} -> {done['threshold']:.6g} ({done['policy']})")
    if done["reviewed_without_image"]:
        print(f"  {done['reviewed_without_image']} reviewed false rejects had no stored image and were left out")
    print(f"  in shadow on {args.target}: compare with vqc models compare {done['parent']} {done['version']} "
          f"--store {args.from_records}" if done["shadow"] else "  not in shadow (--no-shadow)")
