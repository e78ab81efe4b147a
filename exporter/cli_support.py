"""argparse wiring for `espmeter templates` and `espmeter collect`: one line each in agent/cli.py.

    add_templates_parser(subparsers); add_collect_parser(subparsers)

Each sets `func` to its handler (`args.func(args) -> int`), so the CLI dispatches without knowing more.
"""

from __future__ import annotations

import argparse
import signal
import sys
from importlib import resources

from .collect import run_collector
from .dictionaries import FORMATS, render
from .infomodel import DOC_PEN

# Installation files shipped in the package (docs/install.md installs from the wheel with these).
INSTALL_FILES = {"systemd": "share/espmeter.service", "config": "share/espmeter.yaml"}
MONITORING = ("prometheus-rules", "grafana")  # generated from the metrics endpoint's names (agent.promrules)


def add_templates_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("templates", help="print collector dictionaries for espmeter's IPFIX IEs",
                              description="Generate collector dictionaries from templates/espmeter.iespec, "
                              "print the systemd unit (systemd) or the example configuration (config), or "
                              "Prometheus rules / a Grafana dashboard for the metrics endpoint.")
    p.add_argument("--format", "-f", choices=(*FORMATS, *INSTALL_FILES, *MONITORING), default="iespec",
                   help="dictionary format, systemd / config, or prometheus-rules / grafana (default %(default)s)")
    p.add_argument("--pen", type=int, default=DOC_PEN, help="private enterprise number (default %(default)s)")
    p.add_argument("--loss-ratio", type=float, default=0.01, metavar="R",
                   help="prometheus-rules: alert above this loss ratio per tunnel direction (default %(default)s)")
    p.add_argument("--for", dest="for_", default="5m", metavar="DURATION",
                   help="prometheus-rules: for how long before an alert fires (default %(default)s)")
    p.add_argument("--output", "-o", help="write to this file instead of stdout")
    p.set_defaults(func=templates_command)
    return p


def templates_command(args: argparse.Namespace) -> int:
    try:
        if args.format in INSTALL_FILES:
            text = resources.files("agent").joinpath(INSTALL_FILES[args.format]).read_text(encoding="utf-8")
        elif args.format in MONITORING:
            text = _monitoring(args)
        else:
            text = render(args.format, args.pen)
    except ValueError as exc:
        print(f"espmeter templates: {exc}", file=sys.stderr)
        return 2
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            print(f"espmeter templates: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
            return 2
    else:
        sys.stdout.write(text)
    return 0


def _monitoring(args: argparse.Namespace) -> str:
    from agent.promrules import grafana_dashboard, prometheus_rules

    return prometheus_rules(args.loss_ratio, args.for_) if args.format == "prometheus-rules" else grafana_dashboard()


def add_collect_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("collect", help="receive IPFIX and print espmeter's records",
                              description="A small IPFIX collector that names espmeter's enterprise IEs. "
                              "On stderr: the address it listens on, every gap in the exporters' sequence "
                              "numbers (records lost on the way) and a summary at the end.")
    p.add_argument("--listen", default="udp://127.0.0.1:4739", metavar="URL",
                   help="udp://ADDR:PORT or tcp://ADDR:PORT (default %(default)s)")
    p.add_argument("--json", action="store_true", help="JSON lines with every field instead of a table")
    p.add_argument("--count", type=int, metavar="N", help="exit after N flow records (options records not counted)")
    p.add_argument("--pen", type=int, default=DOC_PEN, help="private enterprise number (default %(default)s)")
    p.set_defaults(func=collect_command)
    return p


def collect_command(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill`: still print the summary
    try:
        run_collector(args.listen, args.json, sys.stdout, None, args.count, pen=args.pen, log=sys.stderr)
    except KeyboardInterrupt:
        return 0
    except (ValueError, OSError) as exc:
        print(f"espmeter collect: {exc}", file=sys.stderr)
        return 2
    return 0
