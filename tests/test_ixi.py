"""IXI download: resume over HTTP Range, MD5 check, safe unpacking — against a local HTTP server."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import nibabel as nib
import numpy as np
import pytest

from defacegan.cli import EXIT_OK, main
from defacegan.io import load_scan
from defacegan.ixi import DownloadError, download, fetch_ixi
from defacegan.manifest import SPLITS, load_manifest

NAMES = ("IXI002-Guys-0828-T1.nii.gz", "IXI012-HH-1211-T1.nii.gz", "IXI013-HH-1212-T1.nii.gz")


def nifti_bytes(seed: int) -> bytes:
    """A tiny generated head: a noisy bright ellipsoid in a 24 x 28 x 26 volume, 4 mm voxels."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in (24, 28, 26)], indexing="ij"))
    head = ((grid / np.array([0.7, 0.85, 0.8])[:, None, None, None]) ** 2).sum(0) <= 1
    data = (head * 400 + rng.normal(0, 10, head.shape)).clip(0).astype(np.int16)
    return gzip.compress(nib.Nifti1Image(data, np.diag([4.0, 4.0, 4.0, 1.0])).to_bytes(), mtime=0)


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


class ArchiveHandler(BaseHTTPRequestHandler):
    """Serves ``server.payload`` with HTTP Range support; records each request's Range header
    and how many body bytes went out. ``server.drop_after`` cuts the next response short."""

    def do_GET(self):
        server = self.server
        asked = self.headers.get("Range")
        server.ranges.append(asked)
        if not self.path.endswith("/IXI-T1.tar"):
            self.send_error(404)
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1)) if asked and server.honour_range else 0
        if start >= len(server.payload) > 0 and asked:
            self.send_response(416)
            self.end_headers()
            return
        body = server.payload[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.drop_after is not None:
            body, server.drop_after = body[: server.drop_after], None
        server.sent.append(len(body))
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def archive_server():
    """A local HTTP server on 127.0.0.1 serving a tar of three generated heads."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), ArchiveHandler)
    server.payload = tar_bytes({name: nifti_bytes(seed) for seed, name in enumerate(NAMES)})
    server.md5 = hashlib.md5(server.payload).hexdigest()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/IXI-T1.tar"
    server.ranges, server.sent, server.honour_range, server.drop_after = [], [], True, None
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_fetch_downloads_verifies_and_unpacks(archive_server, tmp_path):
    scans = fetch_ixi(tmp_path, url=archive_server.url, md5=archive_server.md5)
    assert scans == tmp_path / "download" / "IXI-T1"
    assert sorted(path.name for path in scans.iterdir()) == sorted(NAMES)
    assert all(load_scan(scans / name).data.shape == (24, 28, 26) for name in NAMES)
    assert sorted(path.name for path in scans.parent.iterdir()) == ["IXI-T1"]  # archive removed
    assert archive_server.ranges == [None]
    assert fetch_ixi(tmp_path, url=archive_server.url, md5=archive_server.md5) == scans
    assert archive_server.ranges == [None], "an unpacked folder is not fetched again"


def test_fetch_can_keep_the_archive(archive_server, tmp_path):
    fetch_ixi(tmp_path, url=archive_server.url, md5=archive_server.md5, keep_tar=True)
    assert (tmp_path / "download" / "IXI-T1.tar").read_bytes() == archive_server.payload


def test_download_resumes_a_partial_file(archive_server, tmp_path):
    already = len(archive_server.payload) // 3
    (tmp_path / "IXI-T1.tar.part").write_bytes(archive_server.payload[:already])
    archive = download(archive_server.url, tmp_path / "IXI-T1.tar", archive_server.md5)
    assert archive.read_bytes() == archive_server.payload
    assert archive_server.ranges == [f"bytes={already}-"]
    assert archive_server.sent == [len(archive_server.payload) - already], "only the remaining bytes"
    assert not (tmp_path / "IXI-T1.tar.part").exists()


def test_download_resumes_after_a_dropped_connection(archive_server, tmp_path, capsys):
    archive_server.drop_after = 5000
    archive = download(archive_server.url, tmp_path / "IXI-T1.tar", archive_server.md5)
    assert archive.read_bytes() == archive_server.payload
    assert archive_server.ranges == [None, "bytes=5000-"]
    assert "resuming" in capsys.readouterr().out


def test_download_restarts_when_the_server_ignores_range(archive_server, tmp_path):
    archive_server.honour_range = False
    (tmp_path / "IXI-T1.tar.part").write_bytes(b"stale bytes from elsewhere")
    archive = download(archive_server.url, tmp_path / "IXI-T1.tar", archive_server.md5)
    assert archive.read_bytes() == archive_server.payload


def test_checksum_mismatch_is_one_clear_line(archive_server, tmp_path):
    with pytest.raises(DownloadError, match="checksum mismatch") as caught:
        fetch_ixi(tmp_path, url=archive_server.url, md5="0" * 32)
    assert "\n" not in str(caught.value)
    assert not any((tmp_path / "download").iterdir()), "neither the archive nor its part is kept"


def test_network_failure_and_missing_file_are_one_clear_line(archive_server, tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match="failed after 2 attempts") as caught:
        download(f"http://127.0.0.1:{closed_port}/IXI-T1.tar", tmp_path / "IXI-T1.tar", attempts=2)
    assert "\n" not in str(caught.value)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(archive_server.url.replace("IXI-T1.tar", "missing.tar"), tmp_path / "missing.tar")
    assert len(archive_server.ranges) == 1, "a missing file is not asked for again"


def test_unpacking_refuses_members_outside_the_folder(archive_server, tmp_path):
    archive_server.payload = tar_bytes({NAMES[0]: nifti_bytes(0), "../escape.nii.gz": nifti_bytes(1)})
    with pytest.raises(DownloadError, match="unsafe member"):
        fetch_ixi(tmp_path, url=archive_server.url, md5=None)
    download_folder = tmp_path / "download"
    assert not (download_folder / "escape.nii.gz").exists() and not (tmp_path / "escape.nii.gz").exists()
    assert sorted(path.name for path in download_folder.iterdir()) == ["IXI-T1.tar"], "no half-unpacked folder"


@pytest.mark.slow
def test_data_ixi_command_downloads_and_builds_the_cohort(archive_server, ixi_scans, tmp_path):
    archive_server.payload = tar_bytes({path.name: path.read_bytes() for path in ixi_scans[:3]})
    md5 = hashlib.md5(archive_server.payload).hexdigest()
    code = main(["data", "ixi", "--out", str(tmp_path), "--url", archive_server.url, "--md5", md5])
    assert code == EXIT_OK
    manifest = load_manifest(tmp_path)
    assert sorted(manifest["subject"]) == sorted(path.name.split("-")[0] for path in ixi_scans[:3])
    assert set(manifest["split"]) == set(SPLITS)
    assert manifest["source"].str.startswith(str(tmp_path / "download" / "IXI-T1")).all()
