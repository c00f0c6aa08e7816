"""`defacegan` command line: a thin layer over the library, one subcommand per job.

Every batch subcommand prints one line per input, carries on past unreadable files, reports
them at the end and exits 2 if any input could not be processed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from defacegan.io import ScanError

EXIT_OK, EXIT_FACE, EXIT_UNREADABLE = 0, 1, 2


def run_batch(paths: Iterable[Path], process: Callable[[Path], str]) -> list[ScanError]:
    """Apply ``process`` to each path, printing its one-line result; collect the failures."""
    failures: list[ScanError] = []
    for path in paths:
        try:
            print(f"{path}: {process(path)}", flush=True)
        except ScanError as error:
            failures.append(error)
            print(f"error: {error}", file=sys.stderr, flush=True)
    return failures


def report_failures(failures: list[ScanError], total: int, started: float) -> int:
    """Print the summary line and return the exit code for a batch run."""
    seconds = time.perf_counter() - started
    print(f"{total - len(failures)} of {total} done, {len(failures)} failed, {seconds:.1f} s")
    return EXIT_UNREADABLE if failures else EXIT_OK


# Each subcommand: `add_<name>(commands)` declares its arguments and sets `run=run_<name>`,
# where `run_<name>(args) -> int` returns the exit code.

SUBCOMMANDS: list[Callable] = []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="defacegan", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `defacegan` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
