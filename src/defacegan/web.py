"""`defacegan serve`: one page, and ``POST /api/check``, that tell whether an uploaded scan is defaced.

The Detector is loaded once, by whoever calls :func:`create_app`. An upload is streamed straight
into a fresh temporary folder, which is deleted as soon as the answer is ready; it is refused as
early as possible when it is too large (413), not a NIfTI file by name or by content (415), or
unreadable as a scan (422). The answer shows the views the model saw, faces included, which is
why the command binds to this machine only unless told otherwise.
"""

from __future__ import annotations

import tempfile
import threading
import zlib
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from defacegan.check import CheckResult, data_uri, html_templates, result_png
from defacegan.inference import Detector, Prediction
from defacegan.io import ScanFile, is_nifti

UPLOAD_FIELD = b"file"
#: Bytes a multipart body may carry beyond the file itself (boundaries, part headers, small fields).
MULTIPART_OVERHEAD = 16 * 1024
#: Bytes of the (compressed) file read before deciding whether it is NIfTI.
HEAD_BYTES = 4096
#: A NIfTI-1 header is 348 bytes with its magic at byte 344; NIfTI-2 has its magic at byte 4.
NIFTI1_MAGIC, NIFTI2_MAGIC = b"n+1\0", b"n+2\0"
GZIP_MAGIC = b"\x1f\x8b"


class UploadRejected(Exception):
    """An upload that gets no verdict: ``status`` is the HTTP status, ``message`` says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def too_large(max_bytes: int) -> UploadRejected:
    return UploadRejected(413, f"upload larger than the limit of {max_bytes / 1e6:g} MB")


def nifti_problem(head: bytes, name: str) -> str | None:
    """Why the first bytes of a file named ``name`` are not a single-file NIfTI, or None if they are."""
    compressed = name.lower().endswith(".gz")
    if compressed and not head.startswith(GZIP_MAGIC):
        return f"{name}: named .nii.gz but not gzip-compressed"
    if not compressed and head.startswith(GZIP_MAGIC):
        return f"{name}: named .nii but gzip-compressed (a .nii.gz file?)"
    if compressed:
        try:
            head = zlib.decompressobj(wbits=31).decompress(head, 348)
        except zlib.error as error:
            return f"{name}: corrupt gzip data ({error})"
    if head[344:348] != NIFTI1_MAGIC and head[4:8] != NIFTI2_MAGIC:
        return f"{name}: not a NIfTI file (no NIfTI-1 or NIfTI-2 header)"
    return None


class UploadWriter:
    """Multipart callbacks that write the part named ``file`` into ``folder`` as it arrives.

    The file is named ``upload.nii[.gz]`` after the uploaded name's suffix (nibabel goes by the
    suffix); its type is checked on the first :data:`HEAD_BYTES`, before the rest arrives, and
    its size as it grows.
    """

    def __init__(self, folder: Path, max_bytes: int):
        self.folder = folder
        self.max_bytes = max_bytes
        self.size = 0
        self.name: str | None = None
        self.path: Path | None = None
        self._handle = None
        self._head = b""
        self._header = [b"", b""]
        self._disposition = b""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda data, start, end: self._extend_header(0, data[start:end]),
            "on_header_value": lambda data, start, end: self._extend_header(1, data[start:end]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def _extend_header(self, which: int, data: bytes) -> None:
        self._header[which] += data

    def on_part_begin(self) -> None:
        self._disposition = b""

    def on_header_end(self) -> None:
        if self._header[0].lower() == b"content-disposition":
            self._disposition = self._header[1]
        self._header = [b"", b""]

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") != UPLOAD_FIELD or b"filename" not in options or self.path is not None:
            return
        self.name = Path(options[b"filename"].decode("utf-8", "replace").replace("\\", "/")).name
        if not is_nifti(self.name):
            raise UploadRejected(415, f"{self.name or 'the file'}: not a NIfTI file (expected .nii or .nii.gz)")
        self.path = self.folder / ("upload.nii.gz" if self.name.lower().endswith(".gz") else "upload.nii")
        self._handle = self.path.open("xb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._handle is None:
            return
        chunk = data[start:end]
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise too_large(self.max_bytes)
        self._handle.write(chunk)
        if len(self._head) < HEAD_BYTES:
            self._head += chunk[: HEAD_BYTES - len(self._head)]
            if len(self._head) == HEAD_BYTES:
                self._check_head()

    def on_part_end(self) -> None:
        if self._handle is not None:
            self.close()
            if len(self._head) < HEAD_BYTES:
                self._check_head()

    def _check_head(self) -> None:
        problem = nifti_problem(self._head, self.name)
        if problem:
            raise UploadRejected(415, problem)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


async def receive_upload(request: Request, folder: Path, max_bytes: int) -> tuple[str, Path]:
    """Stream the request's multipart field ``file`` into ``folder``; return (uploaded name, path)."""
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise UploadRejected(415, "send the scan as a multipart/form-data upload in the field 'file'")
    limit = max_bytes + MULTIPART_OVERHEAD
    if int(request.headers.get("content-length") or 0) > limit:
        raise too_large(max_bytes)
    writer = UploadWriter(folder, max_bytes)
    parser = MultipartParser(options[b"boundary"], writer.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise too_large(max_bytes)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as error:
        raise UploadRejected(400, f"malformed multipart upload ({error})") from None
    finally:
        writer.close()
    if writer.path is None:
        raise UploadRejected(422, "no file in the upload (expected the field 'file')")
    return writer.name, writer.path


def create_app(detector: Detector, max_mb: float = 512, upload_root: str | Path | None = None) -> FastAPI:
    """The web app around a loaded ``detector``; uploads go to temporary folders in ``upload_root``
    (default: the system's temporary folder) and are deleted once answered."""
    app = FastAPI(title="defacegan check", description="Is this head MRI defaced?")
    max_bytes = int(max_mb * 1e6)
    if upload_root is not None:
        Path(upload_root).mkdir(parents=True, exist_ok=True)
    one_at_a_time = threading.Lock()  # one scan in memory at a time, whatever the number of clients

    def classify(path: Path) -> list[Prediction]:
        with one_at_a_time:
            return detector.predict([path], keep_views=True)

    async def check_upload(request: Request) -> CheckResult:
        with tempfile.TemporaryDirectory(prefix="upload-", dir=upload_root) as folder:
            name, path = await receive_upload(request, Path(folder), max_bytes)
            (prediction,) = await run_in_threadpool(classify, path)
        result = CheckResult.from_prediction(prediction, ScanFile.from_path(name))
        if result.error:  # said of the uploaded name, not of this server's temporary file
            raise UploadRejected(422, f"{name}: {result.error.replace(str(path), name)}")
        return result

    def views_url(result: CheckResult) -> str:
        return data_uri(result_png(result, detector.view_names))

    def page(status: int = 200, **context) -> HTMLResponse:
        html = html_templates().get_template("serve.html").render(max_mb=f"{max_mb:g}", max_bytes=max_bytes, **context)
        return HTMLResponse(html, status_code=status)

    @app.get("/", response_class=HTMLResponse)
    async def upload_page() -> HTMLResponse:
        return page()

    @app.post("/", response_class=HTMLResponse)
    async def verdict_page(request: Request) -> HTMLResponse:
        try:
            result = await check_upload(request)
        except UploadRejected as rejected:
            return page(rejected.status, problem=rejected.message)
        return page(result=result, views_png=views_url(result))

    @app.post("/api/check")
    async def check_api(request: Request) -> JSONResponse:
        """p(face), p(removed), p(replaced), verdict and the views (a PNG data URL) of the scan uploaded as field ``file``."""
        try:
            result = await check_upload(request)
        except UploadRejected as rejected:
            return JSONResponse({"detail": rejected.message}, status_code=rejected.status)
        answer = result.record() | {"views_png": views_url(result)}
        return JSONResponse(answer | {"threshold": detector.threshold, "view_names": detector.view_names})

    return app
