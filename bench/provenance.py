"""Which code a bench result came from, stored in the result itself.

A figure is only as fresh as the run behind it, and the benches run at different times (the k-fold
takes 100 min, the anatomy 45): bench/trust.py prints each row's run beside it, so a table that
splices runs says so instead of passing them all off as today's.
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: What the figures depend on; a change elsewhere (the README, a note) does not make a run stale.
CODE = ("src", "bench", "conf", "train.py", "pyproject.toml")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.rstrip("\n") if done.returncode == 0 else None


def provenance() -> dict:
    """{"commit": the checkout's short commit (None outside a git checkout), "changed": code files
    that differ from it (uncommitted edits, new files), "date": now, UTC}."""
    status = _git("status", "--porcelain", "--", *CODE)  # one line a file: "XY path"
    return {"commit": _git("rev-parse", "--short", "HEAD"),
            "changed": [line[3:] for line in status.splitlines()] if status else [],
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def run_text(run: dict | None) -> str:
    """A run as the trust table prints it: ``553c415, 2026-12-04`` (``+ changes`` when the code
    differed from the commit), or ``not recorded`` for results written before runs were."""
    if not run or not run.get("commit"):
        return "not recorded"
    return f"{run['commit']}{' + changes' if run['changed'] else ''}, {run['date'][:10]}"
