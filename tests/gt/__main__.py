"""CLI: `python -m tests.gt SCENARIO OUTFILE` writes the capture and prints its expected JSON."""

from __future__ import annotations

import argparse
import json
import sys

from .scenarios import registry


def main(argv: list[str] | None = None) -> int:
    scenarios = registry()
    parser = argparse.ArgumentParser(prog="python -m tests.gt", description=__doc__)
    parser.add_argument("scenario", choices=sorted(scenarios), nargs="?")
    parser.add_argument("outfile", nargs="?")
    parser.add_argument("--list", action="store_true", help="list scenario names")
    parser.add_argument("--format", choices=("pcap", "pcapng"), help="override the capture format")
    args = parser.parse_args(argv)
    if args.list or args.scenario is None or args.outfile is None:
        print("\n".join(sorted(scenarios)))
        return 0 if args.list else 2
    sc = scenarios[args.scenario]()
    if args.format:
        sc.fmt = args.format
    json.dump(sc.write(args.outfile), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
