"""Benchmark `defacegan check` from a cold process: one IXI-sized scan, the whole command.

Runs ``python -m defacegan.cli check SCAN --workers 0`` and, interleaved with it,
``python -c "import torch, nibabel"`` (what any tool reading a scan with torch pays before its
first voxel), ``--runs`` times each, and compares their median wall-clock seconds. The scan is
one of bench/check.py's generated IXI-sized heads (256×256×150 int16, gzip). Target: check
takes at most 1 s more than the import baseline. ``--no-anatomy``, as bench/check.py: the network
is unsure of that head, and the anatomy's registration (2-3 s) is a scan's cost, not the start's.

Prints a table and writes JSON (default bench/results/startup.json). Without the shipped
checkpoint an untrained detector of the default architecture and contract is used.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

TARGET_SECONDS = 1.0


def bench_check_module():
    """bench/check.py as a module: its scan writer and checkpoint choice serve both benchmarks."""
    spec = importlib.util.spec_from_file_location("bench_check", Path(__file__).with_name("check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wall_seconds(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):  # 1: the (untrained) detector saw a face, still a complete run
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each command (medians are compared)")
    parser.add_argument("--ckpt", type=Path, help="detector checkpoint (default: the shipped one, else untrained)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "startup.json")
    args = parser.parse_args()
    bench = bench_check_module()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as folder:
        folder = Path(folder)
        [scan] = bench.write_scans(folder, 1)
        ckpt, described = bench.shipped_or_untrained(folder, args.ckpt)
        commands = {
            "import torch, nibabel": [sys.executable, "-c", "import torch, nibabel"],
            "defacegan check (1 scan, --workers 0 --no-anatomy)": [sys.executable, "-m", "defacegan.cli", "check", str(scan),
                                                                   "--workers", "0", "--no-anatomy", "--ckpt", str(ckpt)],
        }
        for command in commands.values():  # warm the page cache and the bytecode caches
            wall_seconds(command)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):  # interleaved, so that a change in machine load hits both alike
            for name, command in commands.items():
                times[name].append(wall_seconds(command))
    baseline, check = (float(np.median(t)) for t in times.values())
    results = {
        "scan": {"shape": bench.IXI_SHAPE, "spacing_mm": bench.IXI_SPACING, "dtype": "int16"},
        "checkpoint": described,
        "machine": {"cpus": len(os.sched_getaffinity(0)), "load_average_1min": os.getloadavg()[0]},
        "runs": args.runs,
        "wall_seconds": {name: [round(t, 3) for t in values] for name, values in times.items()},
        "median_wall_seconds": {name: round(float(np.median(values)), 3) for name, values in times.items()},
        "check_minus_import_seconds": round(check - baseline, 3),
        "check_over_import": round(check / baseline, 2),
        "target_seconds_over_import": TARGET_SECONDS,
    }
    console = Console()
    console.print(f"cold start, one {bench.IXI_SHAPE} scan, {args.runs} interleaved runs each, "
                  f"{results['machine']['cpus']} CPUs, load average {results['machine']['load_average_1min']:.1f}")
    table = Table("command", "median s", "min s", "max s")
    for name, values in times.items():
        table.add_row(name, f"{np.median(values):.2f}", f"{min(values):.2f}", f"{max(values):.2f}")
    console.print(table)
    console.print(f"check − import: {check - baseline:+.2f} s (target ≤ {TARGET_SECONDS:.1f} s), "
                  f"check / import: {check / baseline:.2f}×")
    bench.write_results(results, args.json, console)


if __name__ == "__main__":
    main()
