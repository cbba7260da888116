"""Command line: ``sessions demo`` (and ``python -m sessions demo``)."""

from __future__ import annotations

import argparse
import sys

import sessions
from sessions._demo import run_demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sessions", description=sessions.__doc__)
    parser.add_argument("--version", action="version", version=sessions.__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a supervised system healing injected faults")
    demo.add_argument("--duration", type=float, default=10.0, help="seconds to run")
    demo.add_argument("--fault-every", type=float, default=3.0,
                      help="seconds between injected faults")
    args = parser.parse_args(argv)
    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
