"""`vqc station`: run the line's cameras from STATION.yaml, or check the file."""
from __future__ import annotations

import sys


def add_parsers(sub) -> None:
    station = sub.add_parser("station", help="run cameras on the line: trigger, inspect, record, answer the PLC")
    station_sub = station.add_subparsers(dest="station_command", required=True)
    run_station = station_sub.add_parser("run", help="run every station of STATION.yaml until Ctrl-C or SIGTERM")
    run_station.set_defaults(run=cmd_station_run)
    run_station.add_argument("file", metavar="STATION.yaml",
                             help="the line's station file (see the STATION.yaml reference)")
    check_station = station_sub.add_parser("check", help="check STATION.yaml: one line naming the key of each mistake")
    check_station.set_defaults(run=cmd_station_check)
    check_station.add_argument("file", metavar="STATION.yaml", help="the line's station file")


def cmd_station_check(args) -> None:
    from ..station.run import check_line
    config = check_line(args.file)
    for station in config.stations:
        outputs = ", ".join(station.outputs) or "none"
        print(f"{station.name}: {station.source.kind} camera {station.source.id or station.source.folder or ''}"
              f" ({station.source.trigger}), trigger {station.trigger}, outputs {outputs}, model {station.model or f'live on {station.name} in {config.store}'}")
    print(f"{args.file}: {len(config.stations)} station(s), no mistakes found")


def cmd_station_run(args) -> None:
    from ..station.run import check_line, run_line
    config = check_line(args.file)

    def ready(line):
        where = f"; page http://{config.page[0]}:{config.page[1]}/" if config.page else ""
        print(f"running {len(line.stations)} station(s){where}; Ctrl-C stops", flush=True)
    left = run_line(config, on_ready=ready)
    for name, count in left.items():
        if count:
            print(f"vqc: warning: {name}: {count} results not delivered (they are in the records)", file=sys.stderr)
