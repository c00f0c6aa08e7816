"""`defacegan serve`: the JSON API and its refusals, and the page in a real headless browser."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from support.browser import chromium_page
from support.detector_fixture import write_head
from fastapi.testclient import TestClient

from defacegan.inference import Detector
from defacegan.web import create_app


@pytest.fixture(scope="module")
def detector(detector_ckpt: Path) -> Detector:
    return Detector(detector_ckpt, pose_check=False)  # generated heads: no anatomy for the pose guard (test_pose.py)


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("uploads-src")
    return {
        "face": write_head(folder / "face.nii.gz", "face", 21),
        "defaced": write_head(folder / "defaced.nii", "plane", 22, axcodes="PSR"),
    }


@pytest.fixture
def uploads(tmp_path) -> Path:
    return tmp_path / "uploads"


@pytest.fixture
def client(detector, uploads) -> TestClient:
    with TestClient(create_app(detector, max_mb=2, upload_root=uploads)) as client:
        yield client


def post(client: TestClient, name: str, payload: bytes, url: str = "/api/check"):
    return client.post(url, files={"file": (name, payload, "application/octet-stream")})


def test_upload_gets_verdict_probability_and_views(client, scans, uploads):
    face = post(client, "face.nii.gz", scans["face"].read_bytes())
    defaced = post(client, "sub-01_T1w.nii", scans["defaced"].read_bytes())
    assert face.status_code == defaced.status_code == 200
    assert face.json()["file"] == "face.nii.gz"
    assert face.json()["verdict"] == "face" and face.json()["p_face"] >= 0.5
    assert defaced.json()["verdict"] == "removed" and defaced.json()["p_face"] < 0.5
    assert defaced.json()["views_png"].startswith("data:image/png;base64,")
    assert list(uploads.iterdir()) == []


def test_refusals(client, detector, scans, uploads, tmp_path):
    scan = scans["face"].read_bytes()
    refusals = {
        "notes.txt": (post(client, "notes.txt", b"hello"), 415),
        "text named .nii.gz": (post(client, "x.nii.gz", b"plain text, not gzip"), 415),
        "gzip text": (post(client, "x.nii.gz", gzip.compress(b"no header here" * 100)), 415),
        "gzip named .nii": (post(client, "x.nii", scan), 415),
        "truncated": (post(client, "cut.nii.gz", scan[: len(scan) // 2]), 422),
        "no file": (client.post("/api/check", data={"other": "field"}, files={"x": ("a", b"b")}), 422),
        "not multipart": (client.post("/api/check", content=scan), 415),
    }
    for case, (response, status) in refusals.items():
        assert response.status_code == status, case
        assert response.json()["detail"], case
    assert "not a NIfTI file" in refusals["notes.txt"][0].json()["detail"]
    assert refusals["truncated"][0].json()["detail"].startswith("cut.nii.gz: ")
    assert "upload" not in refusals["truncated"][0].json()["detail"]  # no temporary path of the server
    assert list(uploads.iterdir()) == []
    with TestClient(create_app(detector, max_mb=0.01, upload_root=uploads)) as small:
        too_big = post(small, "face.nii.gz", scan)
        page = post(small, "face.nii.gz", scan, url="/")
    assert too_big.status_code == page.status_code == 413
    assert "0.01 MB" in too_big.json()["detail"] and "0.01 MB" in page.text
    assert list(uploads.iterdir()) == []


def test_page_form_and_verdict(client, scans):
    form = client.get("/")
    assert form.status_code == 200 and 'type="file"' in form.text and 'enctype="multipart/form-data"' in form.text
    answer = post(client, "face.nii.gz", scans["face"].read_bytes(), url="/")
    assert answer.status_code == 200
    assert 'id="verdict" class="face">FACE PRESENT<' in answer.text and "data:image/png;base64," in answer.text


@pytest.fixture
def server(detector, uploads):
    """The app served by uvicorn on a free loopback port, in a thread; its base URL."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(detector, max_mb=2, upload_root=uploads), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{listening.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)
    listening.close()


def test_page_in_headless_chromium(server, scans, uploads, tmp_path):
    with chromium_page(tmp_path / "profile") as page:
        page.goto(server)
        page.set_input_files("#file", str(scans["face"]))
        page.click("#check")
        verdict = page.wait_for_selector("#verdict").inner_text()
        probability = float(page.inner_text("#probability"))
        views_loaded = page.eval_on_selector("#views", "image => image.complete && image.naturalWidth > 0")
        page.set_input_files("#file", str(scans["defaced"]))
        page.click("#check")
        page.wait_for_selector("text=defaced.nii")
        second = page.inner_text("#verdict")
        notes = tmp_path / "notes.txt"
        notes.write_text("not a scan")
        page.set_input_files("#file", str(notes))
        page.click("#check")
        problem = page.wait_for_selector("#problem:has-text('notes.txt')").inner_text()
        result_shown = page.query_selector("#verdict") is not None
    assert verdict == "FACE PRESENT" and probability >= 0.5 and views_loaded
    assert second == "face removed"
    assert "not a NIfTI file" in problem and not result_shown
    assert list(uploads.iterdir()) == []
