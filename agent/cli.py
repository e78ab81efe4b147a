"""The `espmeter` command line: read, run, check-config, templates, collect, top, demo."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import sys
from dataclasses import replace
from typing import Any

from agent.capture import CaptureError
from agent.logsetup import flush_suppressed, setup_logging

DEFAULT_CONFIG = "/etc/espmeter/espmeter.yaml"

EXIT_USAGE = 2  # bad arguments, unreadable capture, bad configuration
EXIT_DAMAGED = 3  # the capture was damaged part-way: the frames before the damage were counted
EXIT_UNDELIVERED = 4  # read: some IPFIX messages could not be delivered to a collector


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (and exit 2), like every other error of espmeter."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _count(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text}")
    return value


def _seconds(text: str) -> float:
    """argparse type: a bin size in seconds, > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0 and round(value * 1e6) >= 1):
        raise argparse.ArgumentTypeError(f"must be more than 0 (at least a microsecond): {text}")
    return value


def _spi(text: str) -> int:
    """argparse type: an SPI, decimal or 0x hex."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an SPI (decimal or 0x hex): {text!r}") from None
    if not 0 <= value < 1 << 32:
        raise argparse.ArgumentTypeError(f"an SPI has 32 bits: {text}")
    return value


def _sa_spec(text: str) -> tuple[str, str, int]:
    """argparse type: SRC,DST,SPI."""
    import ipaddress

    parts = text.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected SRC,DST,SPI: {text!r}")
    try:
        src, dst = (str(ipaddress.ip_address(p.strip())) for p in parts[:2])
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return src, dst, _spi(parts[2].strip())


def _usage(message: str) -> int:
    print(f"espmeter read: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _read(args: argparse.Namespace) -> int:
    """A read keeps every SA to its end, so the cyclic collector has nothing to free: it would only walk
    the growing table again and again (100 000 SAs: 7.7 -> 6.1 s CPU without it). When the process ends
    with the command, its objects are then frozen: back on, the collector would first walk all of them
    once more, only to free the paired SAs (0.45 s at 100 000 SAs); a caller of main() gets them back."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _read_capture(args)
    finally:
        if args.exiting:
            gc.freeze()
        if enabled:
            gc.enable()


def _read_capture(args: argparse.Namespace) -> int:
    from agent.meter import MeterSettings
    from agent.offline import meter_file
    from agent.report import write_table

    if args.plot:
        from agent.plot import PlotError, check_target

        try:
            check_target(args.plot)
        except PlotError as e:
            return _usage(str(e))
        if args.bins is None:  # a round bin size for about 300 bins over the capture
            from agent.offline import time_span
            from agent.plot import auto_bin

            try:
                args.bins = auto_bin(time_span(args.capture, args.bpf))
            except CaptureError as e:
                print(f"espmeter: {e}", file=sys.stderr)
                return EXIT_USAGE
        args.events = True
    drill = args.bins is not None or args.trace is not None or args.sa is not None
    if args.csv and args.bins is None:
        return _usage("--csv writes bins: give --bins SECONDS")
    if args.csv and args.json:
        return _usage("choose one of --json and --csv")
    if (args.start or args.end) and not (args.trace is not None or args.sa is not None):
        return _usage("--from/--to select the lines of --trace or --sa")
    if args.trace is not None and args.sa is not None:
        return _usage("choose one of --trace SPI and --sa SRC,DST,SPI")
    if args.sort is not None:
        from agent.drill_report import SORT_KEYS

        if args.sort not in SORT_KEYS:
            return _usage(f"unknown --sort key {args.sort!r} (one of {', '.join(SORT_KEYS)})")
    observer = None
    start = end = None
    if drill:
        from agent.drill import Observer
        from agent.drill_report import DrillError, parse_time

        try:
            start = parse_time(args.start) if args.start else None
            end = parse_time(args.end) if args.end else None
        except DrillError as e:
            return _usage(str(e))
        if start is not None and end is not None and start > end:
            return _usage(f"--from {args.start} is after --to {args.end}")
        if args.trace is not None:
            spi = args.trace
            traced = lambda sa: sa.spi == spi  # noqa: E731
        elif args.sa is not None:
            want = args.sa
            traced = lambda sa: (str(sa.src), str(sa.dst), sa.spi) == want  # noqa: E731
        else:
            traced = None
        observer = Observer(round(args.bins * 1e6) if args.bins is not None else None, traced)


    settings, export = MeterSettings(), None
    if args.config:  # the configuration machinery (pydantic) is loaded only when asked for
        from agent.config import ConfigError
        from agent.settings import load_runtime

        try:
            rt = load_runtime(args.config)
        except ConfigError as e:
            print(f"espmeter: {e}", file=sys.stderr)
            return EXIT_USAGE
        settings, export = rt.meter, rt.export
    exporter = None
    collectors = args.collector or (export.collectors if export else [])
    if collectors:  # --collector replaces the file's `collectors:`, as for `run`
        from exporter import Exporter, ExportSettings
        from exporter.transport import check_resolvable

        try:
            for url in collectors:  # a one-shot read cannot wait for DNS: an unknown name is an error
                check_resolvable(url)
            exporter = Exporter(replace(export or ExportSettings(), collectors=list(collectors)))
        except ValueError as e:
            print(f"espmeter: {e}", file=sys.stderr)
            return EXIT_USAGE
    try:
        if drill:  # verdicts per datagram: the per-frame reference path (same totals, tests/test_drill.py)
            settings = replace(settings, fast_path=False)
        result = meter_file(args.capture, settings, exporter, args.bpf, events=args.events, observer=observer)
    except CaptureError as e:
        print(f"espmeter: {e}", file=sys.stderr)
        return EXIT_USAGE
    undelivered = None
    if exporter is not None:
        exporter.export_stats(result.meter.stats(exporter.settings.observation_domain))
        exporter.close()
        flush_suppressed(final=True)
        undelivered = exporter.undelivered()
    if args.plot:
        from agent.plot import PlotError, render

        try:
            render(result.doc, args.plot, args.top if args.top is not None else 4, args.bins)
        except PlotError as e:
            return _usage(str(e))
    if observer is not None and observer.traced is not None:
        status = _trace(args, result, observer, start, end)
        if status:
            return status
    elif args.json:
        result.write_json(sys.stdout)
    elif args.csv:
        from agent.drill_report import write_csv

        write_csv(result.doc, sys.stdout)
    else:
        # the table alone reads each entry once; sorting and bins need the document itself
        doc = result.doc if args.sort or args.top is not None or args.bins is not None else result.view()
        if args.sort or args.top is not None:
            from agent.drill_report import sort_top

            doc = sort_top(doc, args.sort, args.top)
        write_table(doc, sys.stdout, args.max_events)
        if args.bins is not None:
            from agent.drill_report import write_bins_table

            write_bins_table(doc, sys.stdout)
    sys.stdout.flush()
    if args.bpf and not result.meter.frames:
        print(f"espmeter: {args.capture}: no frame matches --bpf {args.bpf!r}", file=sys.stderr)
    if undelivered:
        print(f"espmeter: not delivered: {undelivered}", file=sys.stderr)
    if result.error:
        print(f"espmeter: {args.capture}: damaged capture, stopped after {result.meter.frames} frames: "
              f"{result.error}", file=sys.stderr)
        return EXIT_DAMAGED
    return EXIT_UNDELIVERED if undelivered else 0


def _log_format(config: str | None) -> str:
    """`log.format` of the configuration, read leniently so that even its errors come in that format."""
    import yaml

    try:
        with open(config or "", encoding="utf-8") as f:
            fmt = yaml.safe_load(f)["log"]["format"]
    except Exception:  # no file, not YAML, no such key: the configuration's own check reports it
        return "text"
    return "json" if fmt == "json" else "text"


def _trace(args: argparse.Namespace, result: Any, observer: Any, start: float | None, end: float | None) -> int:
    from agent.drill_report import trace_lines, write_trace

    sas = result.meter.table.all_sas()
    blocks = [(doc, trace_lines(observer.sa_lines(sa), start, end))
              for sa, doc in zip(sas, result.doc["sas"], strict=True) if observer.traced(sa)]
    if not blocks:
        what = f"SPI 0x{args.trace:08x}" if args.trace is not None else "SA " + ",".join(map(str, args.sa))
        return _usage(f"no {what} in {args.capture}")
    if args.json:
        keys = ("src", "dst", "spi", "sport", "dport", "vlan", "inner_vlan", "interface", "generation")
        out = {"trace": [{**{k: doc[k] for k in keys}, "lines": [x.json() for x in lines]} for doc, lines in blocks]}
        json.dump(out, sys.stdout, separators=(",", ":"))
        sys.stdout.write("\n")
    else:
        write_trace(blocks, sys.stdout)
    return 0


def _run(args: argparse.Namespace) -> int:
    from agent.daemon import RunOptions, run
    from agent.runtime import ConfigError  # not agent.config: the daemon does not import pydantic

    config = args.config
    if config is None and os.path.exists(DEFAULT_CONFIG) and not (args.interface and args.collector):
        config = DEFAULT_CONFIG
    fmt = _log_format(config)
    setup_logging(fmt=fmt)  # the lines before the configuration is loaded have its format too
    try:
        return run(RunOptions(config, args.interface, args.collector))
    except ConfigError as e:
        for line in str(e).splitlines():  # every problem, one line each
            if fmt == "json":
                logging.getLogger("espmeter").error("%s", line)
            else:
                print(f"espmeter: {line}", file=sys.stderr)
        return EXIT_USAGE


def _check_config(args: argparse.Namespace) -> int:
    from agent.config import check_config

    return check_config(args.file)


def _top(args: argparse.Namespace) -> int:
    from agent.top import endpoint_url, run

    url = args.url
    if url is None:
        config = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
        if config is None:
            print("espmeter top: no endpoint: give --url URL, or --config FILE with metrics.listen", file=sys.stderr)
            return EXIT_USAGE
        from agent.config import ConfigError, load_config

        try:
            listen = load_config(config).metrics.listen
        except ConfigError as e:
            print(f"espmeter: {e}", file=sys.stderr)
            return EXIT_USAGE
        if listen is None:
            print(f"espmeter top: {config}: metrics.listen is not set (the agent serves no metrics)", file=sys.stderr)
            return EXIT_USAGE
        url = endpoint_url(listen)
    elif not url.startswith(("http://", "https://")):
        print(f"espmeter top: {url!r} is not an http:// or https:// URL", file=sys.stderr)
        return EXIT_USAGE
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("espmeter top: needs a terminal", file=sys.stderr)
        return EXIT_USAGE
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C quits as q does
        run(url, args.interval)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from agent.demo import demo

    try:
        return demo(args.capture)
    except CaptureError as e:
        print(f"espmeter demo: {e}", file=sys.stderr)
        return EXIT_USAGE


class _Version(argparse.Action):
    """`--version`; the package metadata is looked up only when asked (it costs start-up time)."""

    def __init__(self, option_strings: list[str], dest: str, **_: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"espmeter {version('espmeter')}")
        except PackageNotFoundError:  # a source tree that was never installed
            print("espmeter (not installed)")
        parser.exit()


EXPORTER_COMMANDS = ("templates", "collect")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """All subcommands; `templates` and `collect` are wired in full only when one of them (or
    help) is asked for, because their module loads the whole IPFIX stack (a fifth of read's start-up)."""
    parser = _Parser(prog="espmeter", description=__doc__)
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True)

    read = sub.add_parser("read", help="meter a pcap/pcapng capture and print the tunnel table or JSON")
    read.add_argument("capture", help="pcap or pcapng file, - for standard input")
    read.add_argument("--json", action="store_true", help="one JSON object on stdout (docs/read-json.md)")
    read.add_argument("--bpf", metavar="EXPR", help="BPF expression to pre-filter the capture")
    read.add_argument("--collector", action="append", metavar="URL",
                      help="also export IPFIX: udp://HOST:PORT, tcp://HOST:PORT or file://PATH (repeatable)")
    read.add_argument("--config", metavar="FILE", help="YAML configuration (tracker, timers, export settings)")
    read.add_argument("--events", action="store_true",
                      help="loss events per SA: each run of lost numbers with the times around it")
    read.add_argument("--max-events", type=_count, default=20, metavar="N",
                      help="loss events shown per SA in the table, longest first when more (default 20)")
    read.add_argument("--bins", type=_seconds, metavar="SECONDS",
                      help="time series per SA in bins of SECONDS (aligned to epoch multiples)")
    read.add_argument("--csv", action="store_true", help="the bins as CSV on stdout (one row per SA and bin)")
    read.add_argument("--trace", type=_spi, metavar="SPI",
                      help="every datagram of the SAs with this SPI and the tracker's verdict on it")
    read.add_argument("--sa", type=_sa_spec, metavar="SRC,DST,SPI", help="like --trace, for one SA")
    read.add_argument("--from", dest="start", metavar="T", help="trace from T (epoch seconds or ISO 8601)")
    read.add_argument("--to", dest="end", metavar="T", help="trace up to T (epoch seconds or ISO 8601)")
    read.add_argument("--sort", metavar="KEY",
                      help="order the table's tunnels by loss (ratio), lost, packets or reordered, largest first")
    read.add_argument("--top", type=_count, metavar="N",
                      help="only the first N tunnels or SAs of the table; of the plot (default 4)")
    read.add_argument("--plot", metavar="FILE",
                      help="chart (.png or .svg) of the tunnels with most loss: loss %% and packet rate over time")
    read.set_defaults(func=_read)

    run = sub.add_parser("run", help="the agent: capture live, meter, export IPFIX (foreground, for systemd)")
    run.add_argument("--config", metavar="FILE", help=f"YAML configuration (default {DEFAULT_CONFIG} if present)")
    run.add_argument("--interface", "-i", action="append", metavar="IF", help="capture on IF (repeatable)")
    run.add_argument("--collector", "-c", action="append", metavar="URL",
                     help="udp://HOST:PORT, tcp://HOST:PORT or file://PATH (repeatable)")
    run.set_defaults(func=_run)

    check = sub.add_parser("check-config", help="validate a configuration file and print the effective settings")
    check.add_argument("file", help="YAML configuration file")
    check.set_defaults(func=_check_config)

    if command is None or command in EXPORTER_COMMANDS or command.startswith("-"):
        from exporter.cli_support import add_collect_parser, add_templates_parser

        add_templates_parser(sub)
        add_collect_parser(sub)
    else:
        sub.add_parser("templates", help="print collector dictionaries for espmeter's IPFIX IEs")
        sub.add_parser("collect", help="receive IPFIX and print espmeter's records")

    top = sub.add_parser("top", help="live view of a running agent's tunnels (from its metrics endpoint)")
    top.add_argument("--url", help="metrics endpoint, e.g. http://127.0.0.1:9108/metrics")
    top.add_argument("--config", metavar="FILE",
                     help=f"the agent's configuration: its metrics.listen (default {DEFAULT_CONFIG} if present)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default %(default)s)")
    top.set_defaults(func=_top)

    demo = sub.add_parser("demo", help="meter a bundled capture, export it to a collector started here, show both")
    demo.add_argument("capture", nargs="?", help="capture to use instead of the bundled one")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None, exiting: bool = False) -> int:
    """Run one command; `exiting`: the process ends with it (`console`)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    args.exiting = exiting
    if args.command != "run":  # run sets up logging from its configuration
        setup_logging()
    try:
        code = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:  # `espmeter read X | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    return code


def console() -> None:
    """The `espmeter` command."""
    sys.exit(main(exiting=True))


if __name__ == "__main__":
    console()
