"""vqc studio: a web application that takes a quality engineer from images to a promoted model.

Project (upload good and test images), fit (a preset or --auto, as a job in its own process),
check (gallery, histogram, metrics), threshold (a slider with its false-reject and miss rates,
or a policy), ship (export, shadow, promote) and compare, on the model store that `vqc serve
--store` and the stations read. This module is imported by the command line: it stays light.
"""
from __future__ import annotations

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(sub) -> None:
    from ..cli.options import add_api_key_file, add_db, add_listening, add_store
    studio = sub.add_parser("studio", help="the studio: build, check and ship a detector from the browser; "
                            "makes the model store if missing")
    studio.set_defaults(run=cmd_studio)
    add_store(studio, required=True)
    add_db(studio)
    add_listening(studio, port=8010)
    add_api_key_file(studio)


def cmd_studio(args) -> None:
    import uvicorn

    from ..errors import VqcError
    from ..store.versions import ModelStore
    from .app import create_studio_app
    if args.api_key_file is None and args.host not in LOOPBACK:
        raise VqcError(f"--host {args.host} opens the studio to other machines: give --api-key-file (vqc keys add "
                       "FILE --name NAME --role admin)")
    store = ModelStore.open(args.store, args.db, create=True)  # the studio is where a product's store begins
    print(f"vqc studio on http://{args.host}:{args.port}/ (store {store.folder}); Ctrl-C stops", flush=True)
    uvicorn.run(create_studio_app(store, args.api_key_file), host=args.host, port=args.port, log_level="warning")
