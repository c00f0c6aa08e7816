"""`defacegan` command line: a thin layer over the library, one subcommand per job.

Every batch subcommand prints one line per input, carries on past unreadable files, reports
them at the end and exits 2 if any input could not be processed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from defacegan.io import ScanError, find_scans, head_threshold, load_scan, save_nifti, stem
from defacegan.manifest import METHODS, load_manifest

EXIT_OK, EXIT_FACE, EXIT_UNREADABLE = 0, 1, 2
ANALYSIS_LEVEL = "participant"  # the BIDS-App form's third positional; there is no group level


def run_batch(items: Iterable, process: Callable[[object], str], nprocs: int = 1) -> list[ScanError]:
    """Apply ``process`` to each item (a path, or anything with a ``path``), printing its one-line
    result; collect the failures. ``nprocs > 1`` runs that many worker processes (``process``
    must then be picklable: a module-level function or a ``functools.partial`` of one)."""
    items = list(items)
    failures: list[ScanError] = []

    def report(item, outcome: Callable[[], str]) -> None:
        try:
            print(f"{getattr(item, 'path', item)}: {outcome()}", flush=True)
        except ScanError as error:
            failures.append(error)
            print(f"error: {error}", file=sys.stderr, flush=True)

    if nprocs > 1 and len(items) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(nprocs, len(items))) as pool:
            futures = [pool.submit(process, item) for item in items]
            for item, future in zip(items, futures):
                report(item, future.result)
    else:
        for item in items:
            report(item, lambda: process(item))
    return failures


def report_failures(failures: list[ScanError], total: int, started: float) -> int:
    """Print the summary line and return the exit code for a batch run."""
    seconds = time.perf_counter() - started
    print(f"{total - len(failures)} of {total} done, {len(failures)} failed, {seconds:.1f} s")
    return EXIT_UNREADABLE if failures else EXIT_OK


def bids_app_paths(paths: list[Path]) -> tuple[Path, Path] | None:
    """(BIDS_DIR, OUTPUT_DIR) when the positionals are the BIDS-App form `BIDS_DIR OUTPUT_DIR participant`."""
    if len(paths) == 3 and str(paths[2]) == ANALYSIS_LEVEL:
        return paths[0], paths[1]
    return None


def add_selection_options(parser: argparse.ArgumentParser):
    """--participant-label and --session-label, as BIDS Apps name them; returns their group."""
    group = parser.add_argument_group("selection (subjects and sessions named as in BIDS: sub-<label>, ses-<label>)")
    group.add_argument("--participant-label", nargs="+", default=(), metavar="LABEL",
                       help="only these subjects (with or without 'sub-')")
    group.add_argument("--session-label", nargs="+", default=(), metavar="LABEL",
                       help="only these sessions (with or without 'ses-')")
    return group


# Each subcommand: `add_<name>(commands)` declares its arguments and sets `run=run_<name>`,
# where `run_<name>(args) -> int` returns the exit code.


def add_reface(commands) -> None:
    parser = commands.add_parser(
        "reface",
        help="fill a defaced scan's face region with a trained Pix2Pix or CycleGAN face (privacy audit)",
        description="Re-face a defaced scan slice by slice with a Pix2Pix or CycleGAN checkpoint; every voxel "
        "outside the removed region is copied unchanged. Output: float32, the input's space and header.",
    )
    parser.add_argument("input", type=Path, help="defaced NIfTI scan")
    parser.add_argument("-o", "--output", type=Path, required=True, help="re-faced NIfTI to write")
    parser.add_argument("--ckpt", type=Path, required=True, help="Pix2Pix or CycleGAN checkpoint (direction reface)")
    parser.add_argument(
        "--mask", type=Path,
        help="removed-region mask on the input's grid (nonzero = re-face); default: the face region "
        "found by registering pydeface's template, which must be empty in the input",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.set_defaults(run=run_reface)


def run_reface(args) -> int:
    from defacegan.reface import load_refacer, reface_file  # torch loads only when needed

    started = time.perf_counter()
    try:
        model = load_refacer(args.ckpt)
    except Exception as error:  # a missing, foreign or corrupt checkpoint fails in many ways
        print(f"error: {args.ckpt}: not a usable Pix2Pix or CycleGAN checkpoint ({type(error).__name__}: {error})", file=sys.stderr)
        return EXIT_UNREADABLE
    failures = run_batch(
        [args.input], lambda path: reface_file(path, args.output, model, args.mask, overwrite=args.overwrite)
    )
    return report_failures(failures, 1, started)


def load_detector(ckpt: Path | None, **options):
    """The classifier for `check` and `serve`, or None after saying why it cannot be loaded."""
    from defacegan.inference import Detector  # torch loads only when needed

    try:
        return Detector(ckpt, **options)
    except Exception as error:  # a missing, foreign or corrupt checkpoint fails in many ways
        print(f"error: {ckpt or 'shipped checkpoint'}: not a usable detector ({type(error).__name__}: {error})",
              file=sys.stderr)
        return None


def add_detector_options(parser) -> None:
    """The options `check` and `serve` share: which detector, its threshold, the anatomy's second opinion,
    the pose check."""
    parser.add_argument("--ckpt", type=Path, help="detector checkpoint (default: the shipped one)")
    parser.add_argument("--threshold", type=float, default=0.5, help="p(face) at or above which a scan is called 'face' (default 0.5)")
    from defacegan.anatomy import NETWORK_SURE, NETWORK_UNSURE, NOD_BEYOND

    parser.add_argument("--anatomy", dest="anatomy", action="store_const", const="always", default="unsure",
                        help="the anatomy's second opinion on every scan, its shares reported for all (by default it is "
                        "measured only where it can change the answer: a scan the network is unsure of, "
                        f"{NETWORK_UNSURE} <= p(face) < {NETWORK_SURE}, whose head is nodded more than {NOD_BEYOND:g} degrees "
                        "from the training heads' pose is judged again with the nod taken off; a 'removed' verdict at "
                        f"p(face) >= {NETWORK_UNSURE} becomes 'face' when the eye, nose or chin region still holds tissue, and so does any "
                        "'replaced' one whose face also has the fine texture of the rest of the head; "
                        "a template registration, 2-3 s a scan; and every scan called 'removed' or 'replaced' is "
                        "judged again with its bias field taken off, N4, about a second)")
    parser.add_argument("--no-anatomy", dest="anatomy", action="store_const", const="never",
                        help="the network alone: no registration, no second opinion, no second look with the bias field taken off")
    parser.add_argument("--no-pose-check", dest="pose_check", action="store_false",
                        help="trust the header's axes: by default a head that a template head matches better turned a "
                             "quarter or half way (axes misstated, or a head lying far from upright) is called 'face' "
                             "with a note; for phantoms and other objects that no human head resembles")


def add_check(commands) -> None:
    parser = commands.add_parser(
        "check",
        help="is each scan defaced? (files, folders or a BIDS dataset)",
        description="Say of every scan whether it still shows a face, or whether the face was removed or "
        "replaced (p_face, p_removed, p_replaced). Prints one row per scan and a summary; exits 0 when "
        "every face was removed or replaced, 1 when any scan still shows a face, 2 when any is unreadable. "
        "Inputs are only read, never modified.",
        epilog="Privacy: with --out, the PNG views of every scan, including any face still present, "
        "are written to that folder and nowhere else; keep it as private as the scans.",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="NIfTI file, DICOM series folder, folder (searched recursively) or BIDS root "
                        "(T1w/T2w/PD/FLAIR in anat/); "
                        "or BIDS_DIR OUTPUT_DIR participant (BIDS App: the report goes to OUTPUT_DIR)")
    parser.add_argument("--out", type=Path, help="write results.tsv, results.json, views/*.png and index.html here")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    add_detector_options(parser)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes decoding scans in parallel (default: one per CPU, at most 4; 0: none)")
    parser.add_argument("--batch-size", type=int, default=8, help="scans classified together")
    add_selection_options(parser)
    parser.set_defaults(run=run_check)


def run_check(args) -> int:
    import json

    from defacegan import bids, check

    started = time.perf_counter()
    if (bids_app := bids_app_paths(args.paths)) is not None:
        if not bids.is_bids_root(bids_app[0]):
            print(f"error: {bids_app[0]}: not a BIDS dataset (no dataset_description.json)", file=sys.stderr)
            return EXIT_UNREADABLE
        args.paths, args.out = [bids_app[0]], bids_app[1]
    try:
        scans = check.gather_scans(args.paths, args.participant_label, args.session_label)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNREADABLE
    if not scans:
        print(f"error: no NIfTI scans or DICOM series found in {' '.join(map(str, args.paths))}", file=sys.stderr)
        return EXIT_UNREADABLE
    detector = load_detector(args.ckpt, threshold=args.threshold, anatomy=args.anatomy, pose_check=args.pose_check,
                             batch_size=args.batch_size, workers=args.workers)
    if detector is None:
        return EXIT_UNREADABLE
    results = check.check_scans(scans, detector, keep_views=args.out is not None)
    summary = check.Summary.of(results, time.perf_counter() - started)
    if args.out:
        index = check.write_report(results, summary, detector, args.out)
    if args.json:
        print(json.dumps(check.results_document(results, summary, detector), indent=2))
    else:
        check.print_results(results, summary)
    if args.out:
        print(f"report: {index}", file=sys.stderr if args.json else sys.stdout)
    return EXIT_UNREADABLE if summary.unreadable else EXIT_FACE if summary.faces else EXIT_OK


def add_serve(commands) -> None:
    parser = commands.add_parser(
        "serve",
        help="web page: upload one scan, see whether it is defaced",
        description="Serve a page (and POST /api/check) that classifies an uploaded NIfTI scan. "
        "Uploads are kept in a temporary folder only until the answer is sent.",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: this machine only; uploads may show faces)")
    parser.add_argument("--port", type=int, default=8000)
    add_detector_options(parser)
    parser.add_argument("--max-mb", type=float, default=512, help="largest upload accepted, in MB")
    parser.set_defaults(run=run_serve)


def run_serve(args) -> int:
    import uvicorn

    from defacegan.web import create_app

    detector = load_detector(args.ckpt, threshold=args.threshold, anatomy=args.anatomy, pose_check=args.pose_check)
    if detector is None:
        return EXIT_UNREADABLE
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who can reach it can upload scans", file=sys.stderr)
    uvicorn.run(create_app(detector, max_mb=args.max_mb), host=args.host, port=args.port)
    return EXIT_OK


def add_data(commands) -> None:
    parser = commands.add_parser(
        "data",
        help="build a paired cohort: faces, defaced versions, removed-region masks, splits",
        description="Write each head's face volume, its mask- and plane-defaced versions and their "
        "removed-region masks (NIfTI, RAS+) and manifest.csv with train/val/test splits by subject. "
        "Inputs are only read; scans already built are kept; an unusable scan is reported and skipped.",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--out", type=Path, required=True, help="cohort folder (an unfinished one is finished)")
    options.add_argument("--subjects", type=int, help="demo: how many subjects to make; folders: only the first N")
    options.add_argument("--seed", type=int, help="seeds the splits, the demo deformations and the registrations")
    options.add_argument("--fractions", type=float, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                         help="split fractions (default 0.7 0.15 0.15)")
    options.add_argument("--workers", type=int, help="processes building scans in parallel")
    build = actions.add_parser("build", parents=[options], help="from the demo heads, IXI or a folder")
    build.add_argument("--source", default="demo",
                       help="'demo' (heads installed with the project; default), 'ixi' (download) "
                       "or a folder of NIfTI T1 heads, flat or BIDS")
    build.set_defaults(run=run_data)
    ixi = actions.add_parser("ixi", parents=[options], help="download IXI's T1 heads (4.5 GB) and build them")
    ixi.add_argument("--url", help="where to download IXI-T1.tar (default: brain-development.org)")
    ixi.add_argument("--md5", help="expected MD5 of the archive ('' skips the check)")
    ixi.add_argument("--keep-tar", action="store_true", help="keep the archive after unpacking")
    ixi.set_defaults(run=run_data, source="ixi")


def run_data(args) -> int:
    from defacegan.cohort import build_cohort  # torch loads only when needed
    from defacegan.ixi import IXI_T1_MD5, IXI_T1_URL, DownloadError, fetch_ixi

    started = time.perf_counter()
    failures: list[ScanError] = []
    options = {name: value for name in ("subjects", "seed", "workers") if (value := getattr(args, name)) is not None}
    if args.fractions:
        options["fractions"] = tuple(args.fractions)
    try:
        if args.action == "ixi":
            md5 = IXI_T1_MD5 if args.md5 is None else args.md5 or None
            fetch_ixi(args.out, url=args.url or IXI_T1_URL, md5=md5, keep_tar=args.keep_tar)
        manifest = build_cohort(args.source, args.out, failures=failures, **options)
    except (DownloadError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNREADABLE
    print(f"manifest: {manifest}")
    return report_failures(failures, len(load_manifest(manifest)) + len(failures), started)


def add_deface(commands) -> None:
    parser = commands.add_parser(
        "deface",
        help="remove the face from head scans (pydeface's face mask or a quickshear plane; no FSL)",
        description="Register pydeface's template onto each scan and zero its face. Writes "
        "<stem>_defaced.nii.gz in the input's orientation and header and its sidecar <stem>_defaced.json "
        "(the share of the head and of the brain removed, the brain measured on a BET brain mask of the input); inputs are never modified. Exits 0 when all "
        "went well, 1 when a scan needs a look (more brain removed than the flag allows, or --verify "
        "still finds a face), 2 when any scan failed.",
    )
    parser.add_argument("inputs", nargs="+", type=Path, metavar="IN",
                        help="NIfTI files, DICOM series folders or folders (with -o; DICOM is written as NIfTI); "
                        "or BIDS_DIR OUTPUT_DIR participant: write "
                        "OUTPUT_DIR as a BIDS-Derivatives dataset (defaced images, sidecars, masks, figures/)")
    parser.add_argument("-o", "--out", type=Path, help="output folder (files and folders form)")
    parser.add_argument("--method", choices=METHODS, default="mask",
                        help="mask: pydeface's face mask (default); plane: quickshear-style cut below the brain")
    parser.add_argument("--save-mask", action="store_true",
                        help="also write <stem>_defacemask.nii.gz (uint8, 1 = removed)")
    parser.add_argument("--qc", action="store_true",
                        help="also write <stem>_qc.png: sagittal slice and frontal rendering, before and after")
    parser.add_argument("--no-brain-check", action="store_true",
                        help="skip measuring the brain removed (BET on the input, about 30 s per scan)")
    parser.add_argument("--verify", action="store_true",
                        help="run the shipped detector on every output and report any still called 'face'")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--nprocs", type=int, default=1, help="BIDS App form: scans processed in parallel (default 1)")
    add_selection_options(parser)
    parser.set_defaults(run=run_deface)


def verify_defaced(outputs: list[Path]) -> int | None:
    """`deface --verify`: the shipped detector's answer for each defaced output, printed as `check`
    prints it; returns how many are still called `face` or could not be read (None when the
    detector cannot load)."""
    from defacegan import check
    from defacegan.io import ScanFile

    started = time.perf_counter()
    detector = load_detector(None)
    if detector is None:
        return None
    results = check.check_scans([ScanFile.from_path(path) for path in outputs], detector)
    summary = check.Summary.of(results, time.perf_counter() - started)
    check.print_results(results, summary)
    return summary.faces + summary.unreadable


def deface_exit_code(code: int, outputs: list[Path], flagged: int, verify: bool) -> int:
    """A batch's exit code: 2 when a scan failed, else 1 when a scan needs a look (more brain
    removed than the flag allows, or --verify still finds a face), else 0."""
    faces = verify_defaced(outputs) if verify and outputs else 0
    if code != EXIT_OK or faces is None:
        return EXIT_UNREADABLE
    if flagged or faces:
        print(f"needs a look: {flagged} scan(s) lost more brain than allowed, {faces} still show a face", file=sys.stderr)
        return EXIT_FACE
    return EXIT_OK


def run_deface_bids(args, bids_dir: Path, output_dir: Path) -> int:
    import json
    from functools import partial

    from defacegan import bids

    started = time.perf_counter()
    try:
        scans = bids.find_scans(bids_dir, args.participant_label, args.session_label)
        if not scans:
            raise ValueError(f"{bids_dir}: no {', '.join(bids.FACE_SUFFIXES)} images in sub-*/[ses-*/]anat/")
        bids.prepare_output(bids_dir, output_dir, args.method)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNREADABLE
    process = partial(bids.deface_scan, out=output_dir, method=args.method, brain_check=not args.no_brain_check)
    failures = run_batch(scans, process, nprocs=args.nprocs)
    failed = {error.path for error in failures}
    done = [bids.outputs_for(scan, output_dir) for scan in scans if str(scan.path) not in failed]
    flagged = sum(bool(json.loads(outputs.sidecar.read_text()).get("BrainRemovedFlagged")) for outputs in done)
    return deface_exit_code(report_failures(failures, len(scans), started), [outputs.image for outputs in done], flagged, args.verify)


def run_deface(args) -> int:
    import json

    from defacegan.brain import brain_removed
    from defacegan.deface import deface  # SimpleITK, matplotlib load only when needed
    from defacegan.io import atomic_write_text
    from defacegan.report import deface_qc_figure, save_figure

    if (bids_app := bids_app_paths(args.inputs)) is not None:
        return run_deface_bids(args, *bids_app)
    if args.out is None:
        print("error: deface needs -o OUT (or the BIDS App form: BIDS_DIR OUTPUT_DIR participant)", file=sys.stderr)
        return EXIT_UNREADABLE
    started = time.perf_counter()
    paths = find_scans(args.inputs)
    if not paths:
        print(f"error: no NIfTI scans or DICOM series found in {' '.join(map(str, args.inputs))}", file=sys.stderr)
        return EXIT_UNREADABLE
    written: set[Path] = set()
    flagged: list[Path] = []

    def process(path: Path) -> str:
        begun = time.perf_counter()
        output = args.out / f"{stem(path)}_defaced.nii.gz"
        if output in written:
            raise ScanError(path, f"an earlier input was also written to {output} (same file name)")
        if output.exists() and not args.overwrite:
            raise ScanError(path, f"{output} exists (pass --overwrite to replace it)")
        scan = load_scan(path)
        result = deface(scan, methods=(args.method,))[args.method]
        brain = None if args.no_brain_check else brain_removed(scan, result.removed)
        save_nifti(scan.to_original(result.defaced), output, overwrite=args.overwrite, protect=paths)
        written.add(output)
        if args.save_mask:
            mask = scan.to_original(result.removed, dtype=np.uint8)
            save_nifti(mask, args.out / f"{stem(path)}_defacemask.nii.gz", overwrite=args.overwrite, protect=paths)
        if args.qc:
            save_figure(deface_qc_figure(scan, result, brain), args.out / f"{stem(path)}_qc.png")
        head = scan.data > head_threshold(scan.data)
        removed = 100 * np.count_nonzero(result.removed & head) / max(np.count_nonzero(head), 1)
        record = {"Sources": [str(path)], "DeidentificationMethod": [f"defacegan ({args.method})"],
                  "HeadRemovedPercent": round(removed, 2), **(brain.sidecar() if brain else {})}
        atomic_write_text(output.with_name(f"{stem(path)}_defaced.json"), json.dumps(record, indent=2) + "\n")
        if brain and brain.flagged:
            flagged.append(path)
        seconds = time.perf_counter() - begun
        brain_text = f", {brain.line()}" if brain else ""
        written_as = " (NIfTI, from the DICOM series converted by dcm2niix)" if path.is_dir() else ""
        return f"defaced ({args.method}), {removed:.1f}% of head removed{brain_text}, {seconds:.1f} s -> {output}{written_as}"

    failures = run_batch(paths, process)
    code = report_failures(failures, len(paths), started)
    return deface_exit_code(code, sorted(written), len(flagged), args.verify)


SUBCOMMANDS: list[Callable] = [add_reface, add_check, add_serve, add_data, add_deface]


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
