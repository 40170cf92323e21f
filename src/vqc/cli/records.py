"""`vqc records` and `vqc keys`: export recorded inspections, manage the service's API keys."""
from __future__ import annotations

from .options import add_db, add_station


def add_parsers(sub) -> None:
    records = sub.add_parser("records", help="inspection records: export")
    records_sub = records.add_subparsers(dest="records_command", required=True)
    export_records = records_sub.add_parser("export", help="write recorded inspections to CSV or Parquet")
    export_records.set_defaults(run=cmd_records_export)
    add_db(export_records, required=True)
    export_records.add_argument("--since", help="from this time on (ISO 8601; UTC unless it names a zone)")
    export_records.add_argument("--until", help="before this time")
    add_station(export_records)
    export_records.add_argument("--verdict", choices=["ok", "defective"], help="only inspections with this verdict")
    export_records.add_argument("--format", choices=["csv", "parquet"], default="csv", help="file format "
                                "(parquet needs the parquet extra)")
    export_records.add_argument("--out", help="file to write (default: inspections.csv or .parquet)")
    _add_keys(sub)


def _add_keys(sub) -> None:
    keys = sub.add_parser("keys", help="API keys for vqc serve --api-key-file")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    add_key = keys_sub.add_parser("add", help="make a key, store its hash in FILE and print the key once")
    add_key.set_defaults(run=cmd_keys_add)
    add_key.add_argument("file", help="the key file (created if missing); vqc serve --api-key-file FILE")
    _add_key_name(add_key)
    add_key.add_argument("--role", choices=["operator", "admin"], default="operator",
                         help="operator: inspect, read records, review verdicts; admin: also promote, roll back and "
                              "change thresholds")
    list_keys = keys_sub.add_parser("list", help="the names of the keys in FILE (the keys themselves are not kept)")
    list_keys.set_defaults(run=cmd_keys_list)
    list_keys.add_argument("file", help="the key file")
    revoke_key = keys_sub.add_parser("revoke", help="remove a key from FILE; a running service re-reads FILE "
                                     "when it changes")
    revoke_key.set_defaults(run=cmd_keys_revoke)
    revoke_key.add_argument("file", help="the key file")
    _add_key_name(revoke_key)


def _add_key_name(parser) -> None:
    parser.add_argument("--name", required=True, help="the key's name: who or what uses it, e.g. line3-camera "
                        "(vqc keys list shows them)")


def cmd_records_export(args) -> None:
    from ..records import Filters, Records, parse_time
    records = Records(args.db, create=False)
    filters = Filters(since=parse_time(args.since) if args.since else None,
                      until=parse_time(args.until) if args.until else None,
                      station=args.station, verdict=args.verdict)
    out = args.out or f"inspections.{args.format}"
    count = records.export(out, args.format, filters)
    print(f"exported {count} inspections from {records.url} -> {out}")


def cmd_keys_add(args) -> None:
    from ..access import add_key
    key = add_key(args.file, args.name, args.role)
    print(f"{args.role} key {args.name} (only its hash is kept in {args.file}; this is the one time it is shown):")
    print(key)


def cmd_keys_list(args) -> None:
    from ..access import ApiKeys
    keys = ApiKeys.from_file(args.file)
    print(f"{len(keys.hashes)} keys in {args.file}:")
    for name in keys.hashes:
        print(f"  {name} ({keys.role(name)})")


def cmd_keys_revoke(args) -> None:
    from ..access import revoke_key
    left = revoke_key(args.file, args.name)
    print(f"revoked key {args.name} in {args.file} ({left} left); a running vqc serve refuses it from its next request")
