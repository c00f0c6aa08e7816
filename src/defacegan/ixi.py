"""Fetch the IXI T1 heads: resumable download, MD5 check, safe unpacking.

The IXI dataset (brain-development.org, CC BY-SA 3.0) ships its 581 T1 scans as one ~4.5 GB tar
of NIfTI files. :func:`fetch_ixi` downloads it into ``<out>/download/``, resuming an interrupted
download from its ``.part`` file (HTTP Range), checks the MD5 before the archive gets its final
name, and unpacks it beside it; each step is skipped when its result is already there.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

IXI_T1_URL = "http://biomedic.doc.ic.ac.uk/brain-development/downloads/IXI/IXI-T1.tar"
IXI_T1_MD5 = "34901a0593b41dd19c1a1f746eac2d58"
DOWNLOAD_FOLDER = "download"  # inside a cohort's output folder

ATTEMPTS = 5  # connections per download; each one resumes where the last stopped
TIMEOUT_S = 60.0  # per connect and per read
CHUNK_BYTES = 1 << 20
PROGRESS_STEPS = 20  # progress lines per download


class DownloadError(Exception):
    """A download or unpacking that failed; ``str()`` is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def md5sum(path: str | os.PathLike) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _continue_download(url: str, part: Path) -> bool:
    """One connection: append the rest of ``url`` to ``part``. True when the body arrived whole.

    Asks for the bytes after those already in ``part``; a server that ignores the request
    (status 200 instead of 206) sends everything again, so ``part`` restarts from zero.
    """
    offset = part.stat().st_size if part.exists() else 0
    request = Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urlopen(request, timeout=TIMEOUT_S)
    except HTTPError as error:
        if error.code == 416 and offset:  # nothing after offset: the part already holds it all
            return True
        raise
    with response:
        if offset and response.status != 206:
            print(f"{part.name}: server cannot resume, starting over", flush=True)
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        done, next_report = offset, 0
        with open(part, "ab" if offset else "wb") as handle:
            while chunk := response.read(CHUNK_BYTES):
                handle.write(chunk)
                done += len(chunk)
                if total and done >= next_report:
                    print(f"{part.name}: {done / 1e6:.0f} of {total / 1e6:.0f} MB", flush=True)
                    next_report = done + total // PROGRESS_STEPS
    return total is None or done == total


def download(url: str, path: str | os.PathLike, md5: str | None = None, attempts: int = ATTEMPTS) -> Path:
    """Download ``url`` to ``path`` through ``path.part``; the final name appears only after
    the MD5 (when given) matches. An existing ``path`` is taken as done.

    Up to ``attempts`` connections, each resuming the last; a checksum mismatch removes the
    part file (resuming a corrupt file cannot repair it). Raises :class:`DownloadError`.
    """
    path = Path(path)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    problem = "no attempt made"
    for attempt in range(1, attempts + 1):
        try:
            if _continue_download(url, part):
                break
            problem = "connection closed early"
        except HTTPError as error:
            if error.code < 500:
                raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
            problem = f"HTTP {error.code} {error.reason}"
        except (URLError, OSError, http.client.HTTPException) as error:
            problem = str(getattr(error, "reason", None) or error or type(error).__name__)
        if attempt < attempts:
            print(f"{part.name}: interrupted ({problem}), resuming", flush=True)
    else:
        raise DownloadError(f"{url}: download failed after {attempts} attempts ({problem}); "
                            f"run again to resume from {part}")
    if md5:
        actual = md5sum(part)
        if actual != md5.lower():
            part.unlink()
            raise DownloadError(f"{url}: checksum mismatch (MD5 {actual}, expected {md5}); "
                                "the download was removed, run again to fetch it anew")
    os.replace(part, path)
    return path


def extract(archive: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Unpack a tar into ``folder`` (created whole by a rename, or not at all).

    tarfile's ``data`` filter refuses members that would land outside the folder (``..``,
    links pointing out) and device files, so a hostile archive cannot write elsewhere.
    """
    archive, folder = Path(archive), Path(folder)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        os.replace(staging, folder)
    except tarfile.FilterError as error:
        raise DownloadError(f"{archive}: unsafe member refused ({error})") from None
    except (tarfile.TarError, OSError) as error:
        raise DownloadError(f"{archive}: cannot unpack ({error})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def fetch_ixi(
    out: str | os.PathLike, *, url: str = IXI_T1_URL, md5: str | None = IXI_T1_MD5, keep_tar: bool = False
) -> Path:
    """Download and unpack the IXI T1 archive under ``<out>/download/``; return the folder of
    scans. Skips what is done: an unpacked folder is reused, a finished archive is not fetched
    again. The archive is deleted after unpacking unless ``keep_tar``."""
    folder = Path(out) / DOWNLOAD_FOLDER
    archive = folder / (Path(urlparse(url).path).name or "IXI-T1.tar")
    scans = folder / archive.name.split(".")[0]
    if scans.is_dir():
        print(f"{scans}: already unpacked", flush=True)
        return scans
    download(url, archive, md5)
    print(f"{archive}: unpacking", flush=True)
    extract(archive, scans)
    if not keep_tar:
        archive.unlink()
    return scans
