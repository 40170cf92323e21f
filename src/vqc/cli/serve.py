"""`vqc serve`: the HTTP inspection service and its operator page."""
from __future__ import annotations

from ..errors import VqcError
from .options import (add_api_key_file, add_db, add_engine, add_image_store, add_listening, add_store, add_target,
                      engine_settings)


def add_parsers(sub) -> None:
    serve = sub.add_parser("serve", help="HTTP inspection service with an operator page at /")
    serve.set_defaults(run=cmd_serve)
    serve.add_argument("model", nargs="?", help="a model file or line bundle; or leave it out and give --store: "
                       "the service then serves what is live on --target there and follows its promotions, "
                       "rollbacks and shadow while running (records in the store's database)")
    add_store(serve)
    add_target(serve)
    add_listening(serve, port=8000)
    add_engine(serve)
    serve.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload, in MiB")
    add_db(serve)
    add_image_store(serve)
    add_api_key_file(serve)
    serve.add_argument("--protect-monitoring", action="store_true", help="ask for a key on /health and /metrics too")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="a browser origin allowed to call the API, e.g. https://dash.plant (repeatable; default none)")
    serve.add_argument("--drift-window", type=int, default=200, metavar="N",
                       help="last N scores compared with the model's validation scores (KS test)")
    serve.add_argument("--max-batch", type=int, default=32, metavar="N",
                       help="images in one request, and in one engine call when requests are batched")
    serve.add_argument("--batch-wait-ms", type=float, default=5.0, metavar="MS",
                       help="requests arriving within MS of the first share one engine call (0: one at a time)")


def cmd_serve(args) -> None:
    from ..serve import ServeConfig, serve
    if (args.model is None) == (args.store is None):
        raise VqcError("give a model file or bundle, or --store DIR (not both)")
    if args.drift_window < 2:
        raise VqcError(f"--drift-window needs at least 2 inspections (got {args.drift_window})")
    if args.max_batch < 1 or args.batch_wait_ms < 0:
        raise VqcError("--max-batch needs at least 1 image and --batch-wait-ms 0 or more")
    store = None
    if args.store:
        from ..store.versions import ModelStore
        store = ModelStore.open(args.store, args.db)
    serve(args.model, args.host, args.port, store=store, target=args.target, config=ServeConfig(
        engine=engine_settings(args),
        max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, db=args.db, image_store=args.image_store, keep_good=args.keep_good,
        api_key_file=args.api_key_file, protect_monitoring=args.protect_monitoring,
        cors_origins=tuple(args.cors_origin), drift_window=args.drift_window, max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms))

