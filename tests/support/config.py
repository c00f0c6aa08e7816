"""The overrides that make a `train` config tiny: one source for in-process and subprocess runs."""

from __future__ import annotations

from pathlib import Path


def tiny_overrides(cohort: Path) -> list[str]:
    """Point `train` at a generated cohort (support.cohort_fixture) on its 4 mm grid, without loader processes."""
    return [f"data.root={cohort}", "data.num_workers=0", "data.spacing=4.0", "data.shape=[40,48,44]"]
