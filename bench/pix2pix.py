"""Benchmark Pix2Pix: training and generator-inference images/s, and peak GPU memory.

Training runs the real :class:`defacegan.models.pix2pix.Pix2Pix` (D step, then G step with
adversarial + λ·L1) under a Lightning Trainer, on one synthetic batch that already sits on the
device, so the loader is not measured. Each configuration (batch size × fp32/bf16) gets a fresh
model, a warm-up, then timed steps; CUDA is synchronised at the edges of the timed span.

On CUDA the module's speed-ups are on: NHWC memory (``--no-channels-last`` turns it off),
fused Adam (``--no-fused``), bfloat16 autocast for the bf16 rows, and ``--compile MODE`` wraps
both networks in ``torch.compile`` (``reduce-overhead`` = CUDA graphs,
``max-autotune-no-cudagraphs``). fp32 means PyTorch's defaults (cuDNN may use TF32).

Reference pix2pix (junyanz), 256², one H100, training images/s: 94 (b1 fp32), 911 (b16 fp32),
1207 (b16 bf16), 1658 (b64 bf16). Goals: ≥ 3× at b1, ≥ 2× at b16.

``--smoke``: a seconds-long CPU run on tiny images (checks that the benchmark works, no more).
Prints a table and writes JSON (default bench/results/pix2pix.json, pix2pix-smoke.json for --smoke).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning import Trainer
from rich.console import Console
from rich.table import Table
from timing import StepTimer, synchronize
from torch.utils.data import DataLoader

from defacegan.models.pix2pix import Pix2Pix

RESULTS = Path(__file__).resolve().parent / "results"
#: Reference pix2pix training images/s on one H100 at 256², by (batch, precision).
REFERENCE = {(1, "fp32"): 94, (16, "fp32"): 911, (16, "bf16"): 1207, (64, "bf16"): 1658}


def translate_batch(batch_size: int, size: int, device: torch.device) -> dict:
    """One translate batch as the DataModule delivers it (source, target, mask; [-1, 1])."""
    target = torch.rand(batch_size, 1, size, size, device=device) * 2 - 1
    mask = torch.zeros_like(target)
    mask[..., size // 3 : 2 * size // 3, size // 2 :] = 1
    return {"source": torch.where(mask > 0, -1.0, target), "target": target, "mask": mask,
            "subject": [f"sub-{i}" for i in range(batch_size)]}


def build_model(args, precision: str, device: torch.device) -> Pix2Pix:
    adam = partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999), fused=device.type == "cuda" and not args.no_fused)
    return Pix2Pix(
        size=args.size,
        generator={"base_channels": args.base_channels},
        discriminator={"base_channels": args.base_channels},
        optimizer_g=adam,
        optimizer_d=adam,
        bf16=precision == "bf16",
        channels_last=not args.no_channels_last,
        compile_mode=None if args.compile == "none" else args.compile,
    )


def train_throughput(args, batch_size: int, precision: str, device: torch.device) -> tuple[float, Pix2Pix]:
    """Training images/s, and the trained model (its networks compiled and on the device)."""
    model = build_model(args, precision, device)
    batch = translate_batch(batch_size, args.size, device)
    timer = StepTimer(args.warmup, args.steps)
    trainer = Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        max_steps=2 * (args.warmup + args.steps),  # two optimizer steps per batch
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, benchmark=device.type == "cuda", callbacks=[timer],
    )
    trainer.fit(model, train_dataloaders=DataLoader([batch] * (args.warmup + args.steps), batch_size=None))
    return batch_size * args.steps / timer.seconds, model


@torch.inference_mode()
def inference_throughput(model: Pix2Pix, batch_size: int, size: int, steps: int, warmup: int) -> float:
    """Generator images/s in eval mode (the module's autocast and memory format)."""
    model.eval()
    source = model.as_images(translate_batch(batch_size, size, model.device)["source"])
    for _ in range(warmup):
        model(source)
    synchronize(model.device)
    started = time.perf_counter()
    for _ in range(steps):
        model(source)
    synchronize(model.device)
    return batch_size * steps / (time.perf_counter() - started)


def run(args) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    precisions = [p for p in args.precisions if p == "fp32" or device.type == "cuda"]  # bf16: CUDA only
    rows = []
    for batch_size in args.batch_sizes:
        for precision in precisions:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            train, model = train_throughput(args, batch_size, precision, device)
            infer = inference_throughput(model, batch_size, args.size, args.steps, args.warmup)
            comparable = args.size == 256 and args.base_channels == 64
            reference = REFERENCE.get((batch_size, precision)) if comparable else None
            rows.append({
                "batch": batch_size, "precision": precision,
                "train_img_s": train, "infer_img_s": infer,
                "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                "reference_img_s": reference, "speedup": train / reference if reference else None,
            })
            del model
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__, "lightning": pl.__version__,
        "size": args.size, "base_channels": args.base_channels, "steps": args.steps, "warmup": args.warmup,
        "compile": args.compile, "channels_last": device.type == "cuda" and not args.no_channels_last,
        "fused_adam": device.type == "cuda" and not args.no_fused, "smoke": args.smoke,
        "rows": rows,
    }


def print_table(result: dict) -> None:
    table = Table(title=f"Pix2Pix {result['size']}² on {result['device']} (compile: {result['compile']})")
    for column in ("batch", "precision", "train img/s", "infer img/s", "peak GiB", "reference", "speed-up"):
        table.add_column(column, justify="right")
    for row in result["rows"]:
        table.add_row(
            str(row["batch"]), row["precision"], f"{row['train_img_s']:.1f}", f"{row['infer_img_s']:.1f}",
            "" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.2f}",
            "" if row["reference_img_s"] is None else str(row["reference_img_s"]),
            "" if row["speedup"] is None else f"{row['speedup']:.2f}×",
        )
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run: 32² images, narrow networks, few steps")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--base-channels", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50, help="timed training steps (batches) per configuration")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compile", default="none",
                        choices=["none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--no-fused", action="store_true", help="plain (foreach) Adam instead of fused")
    parser.add_argument("--json", type=Path, help="where to write the results")
    args = parser.parse_args()
    if args.smoke:
        args.batch_sizes, args.size, args.base_channels, args.steps, args.warmup = [1, 4], 32, 8, 3, 1
    result = run(args)
    print_table(result)
    path = args.json or RESULTS / ("pix2pix-smoke.json" if args.smoke else "pix2pix.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
