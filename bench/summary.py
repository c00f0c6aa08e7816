"""One table from the benchmarks' JSON results (pipeline.py, throughput.py, pix2pix.py).

    python bench/summary.py bench/results/pipeline-gpu.json bench/results/throughput-gpu.json ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SETTING_SKIP = {"bench", "volumes_per_s", "samples_per_s", "of_pure", "data_path_samples_per_s", "train_img_s", "infer_img_s", "reference_img_s", "speedup"}


def rows_of(path: Path) -> list[tuple[str, str, str, str]]:
    """(benchmark, setting, figure, unit) rows of one result file, whichever benchmark wrote it."""
    result = json.loads(path.read_text())
    rows = []
    for row in result.get("rows") or result.get("results") or []:
        setting = ", ".join(f"{k}={v}" for k, v in row.items() if k not in SETTING_SKIP and v is not None and not isinstance(v, float))
        if "volumes_per_s" in row:
            rows.append((row["bench"], setting, f"{row['volumes_per_s']:.1f}", "volumes/s"))
        elif "samples_per_s" in row:
            alone = f", data path alone {row['data_path_samples_per_s']:.1f}" if row.get("data_path_samples_per_s") else ""
            rows.append(("train throughput", setting, f"{row['samples_per_s']:.1f} ({100 * row['of_pure']:.0f} % of pure{alone})", "samples/s"))
        elif "train_img_s" in row:
            rows.append(("pix2pix", setting, f"train {row['train_img_s']:.1f}, infer {row['infer_img_s']:.1f}", "images/s"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+")
    args = parser.parse_args()
    rows = [("benchmark", "setting", "figure", "unit")]
    rows += [row for path in args.results if path.exists() for row in rows_of(path)]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:  # plain text: this runs where only torch is installed
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


if __name__ == "__main__":
    main()
