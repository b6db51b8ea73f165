"""`autoseg serve`: real server processes on 127.0.0.1, compared byte for byte with `autoseg predict`."""
from __future__ import annotations

import base64
import gzip
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import REPO, run_autoseg, train_tiny

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
nib = pytest.importorskip("nibabel")

HOST = "127.0.0.1"
BOUNDARY = "autoseg-test-boundary"
READY_S = 120  # bounded wait for a server to answer /health


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """`python -m autoseg serve` in its own process; logs under `logs`."""

    def __init__(self, package: Path, temp_dir: Path, logs: Path, *extra, port: int | None = None):
        self.package, self.temp_dir, self.logs, self.extra = package, temp_dir, logs, [str(e) for e in extra]
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        self.logs.mkdir(parents=True, exist_ok=True)
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        n = len(list(self.logs.glob("stdout-*")))
        self.stdout, self.stderr = self.logs / f"stdout-{n}.log", self.logs / f"stderr-{n}.log"
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "autoseg", "serve", str(self.package), "--port", str(self.port),
                 "--device", "cpu", "--no-tta", "--temp-dir", str(self.temp_dir), *self.extra],
                stdout=out, stderr=err, cwd=REPO)
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}: {self.stderr.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"server not answering /health after {READY_S} s: {self.stderr.read_text()[-2000:]}")

    @property
    def own_temp(self) -> Path:
        return self.temp_dir / f"autoseg-serve-{self.proc.pid}"

    def health(self) -> dict:
        r = httpx.get(f"{self.url}/health", timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_queue(self, n: int, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while self.health()["queue"] != n:
            assert time.monotonic() < deadline, f"queue never reached {n}: {self.health()}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------------------- data

def _write_bad_inputs(folder: Path, scan: Path) -> dict[str, bytes]:
    """Uploads that must be refused, by file name."""
    image = nib.load(str(scan))
    data = np.asanyarray(image.dataobj).astype(np.float32)
    nan = data.copy()
    nan[2, 3, 4] = np.nan
    nan_path = folder / "nan_0000.nii.gz"
    nib.save(nib.Nifti1Image(nan, image.affine), str(nan_path))
    two_path = folder / "twochan.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), image.affine), str(two_path))
    good = scan.read_bytes()
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../evil_0000.nii.gz", good)
    return {"trunc_0000.nii.gz": good[:len(good) // 2], "nan_0000.nii.gz": nan_path.read_bytes(),
            "twochan.nii.gz": two_path.read_bytes(),
            "random.nii.gz": np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
            "empty.nii.gz": b"", "evil.zip": evil.getvalue()}


BAD = {  # upload name -> (status, words the one-line error must contain)
    "trunc_0000.nii.gz": (400, "trunc_0000.nii.gz: unreadable or truncated"),
    "nan_0000.nii.gz": (400, "nan_0000.nii.gz: 1 NaN/Inf voxel"),
    "twochan.nii.gz": (400, "twochan.nii.gz: has 2 channels but the model expects 1"),
    "random.nii.gz": (400, "random.nii.gz: not a NIfTI image"),
    "empty.nii.gz": (400, "empty.nii.gz: empty upload"),
    "evil.zip": (400, "evil.zip: member '../evil_0000.nii.gz' would escape"),
}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny exported model, good scans (the training images, an oblique int16 one, a plain .nii, a zip of
    channel files) with `autoseg predict`'s label map bytes for each, and bad uploads."""
    root = tmp_path_factory.mktemp("serve")
    out = train_tiny(root)
    package = root / "model.autoseg"
    run_autoseg("export", out, "-o", package)
    images = root / "Dataset001_Syn" / "imagesTr"
    scans = root / "scans"
    scans.mkdir()
    good = {}
    for path in sorted(images.glob("*_0000.nii.gz"))[:4]:
        (scans / path.name).write_bytes(path.read_bytes())
        good[path.name] = path.name.replace("_0000", "")
    first = nib.load(str(images / "case_000_0000.nii.gz"))
    angle = np.deg2rad(20)
    affine = np.array([[np.cos(angle), -np.sin(angle), 0, 10.5], [np.sin(angle), np.cos(angle), 0, -20.0],
                       [0, 0, 1.0, 5.0], [0, 0, 0, 1]])
    oblique = nib.Nifti1Image(np.round(np.asanyarray(first.dataobj)).astype(np.int16), affine)
    oblique.set_qform(affine, code=1)
    oblique.set_sform(affine, code=2)
    oblique.header["descrip"] = b"autoseg serve test"
    nib.save(oblique, str(scans / "oblique_0000.nii.gz"))
    nib.save(nib.load(str(images / "case_001_0000.nii.gz")), str(scans / "plain_0000.nii"))
    good.update({"oblique_0000.nii.gz": "oblique.nii.gz", "plain_0000.nii": "plain.nii"})
    reference = root / "cli"
    run_autoseg("predict", "-i", scans, "-o", reference, "-m", package, "--no-tta", "--device", "cpu", "-q")
    uploads = {name: (scans / name).read_bytes() for name in good}
    expected = {name: (reference / label).read_bytes() for name, label in good.items()}
    labels = {name: label for name, label in good.items()}
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("case_002/case_002_0000.nii.gz", uploads["case_002_0000.nii.gz"])
        z.writestr("__MACOSX/._case_002_0000.nii.gz", b"junk")
    uploads["case_002.zip"] = archive.getvalue()
    expected["case_002.zip"] = expected["case_002_0000.nii.gz"]
    labels["case_002.zip"] = "case_002.nii.gz"
    bad_dir = root / "bad"
    bad_dir.mkdir()
    return SimpleNamespace(root=root, package=package, uploads=uploads, expected=expected, labels=labels,
                           bad=_write_bad_inputs(bad_dir, images / "case_000_0000.nii.gz"))


@pytest.fixture(scope="module")
def server(model):
    s = Server(model.package, model.root / "tmp-main", model.root / "logs-main", "--max-queue", "64").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def limited(model):
    """One request at a time, 0.1 MB bodies, 5 s per request."""
    s = Server(model.package, model.root / "tmp-limited", model.root / "logs-limited", "--max-queue", "1",
               "--max-request-mb", "0.1", "--timeout", "5", "--workers", "1").start()
    yield s
    s.stop()


def post(url: str, name: str, data: bytes, **params) -> httpx.Response:
    return httpx.post(f"{url}/predict", files={"file": (name, data)}, params=params, timeout=120)


def check_error(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert "Traceback" not in response.text
    error = response.json()["error"]
    assert "\n" not in error and words in error, error


def slow_body(name: str, data: bytes, release: threading.Event):
    """A multipart body sent in two parts, the second only once `release` is set (chunked, no Content-Length)."""
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode()

    def body():
        yield head + data[:16]
        release.wait(60)
        yield data[16:] + f"\r\n--{BOUNDARY}--\r\n".encode()
    return body()


def post_slowly(url: str, name: str, data: bytes, release: threading.Event, results: list) -> threading.Thread:
    def send():
        try:
            results.append(httpx.post(f"{url}/predict", content=slow_body(name, data, release), timeout=120,
                                      headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}))
        except httpx.TransportError as e:
            results.append(e)
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def request_folders(server: Server) -> list[Path]:
    return list(server.own_temp.iterdir()) if server.own_temp.is_dir() else []


# ---------------------------------------------------------------------------------------------- tests

def test_binds_loopback_by_default(server):
    from autoseg.serve import ServeOptions

    options = ServeOptions()
    assert (options.host, options.port, options.workers, options.max_queue, options.max_request_mb,
            options.timeout_s, options.device, options.mirror) == ("127.0.0.1", 8000, 2, 8, 512, 600, "auto", True)
    line = server.stdout.read_text().strip()
    assert line == f"serving {server.package} on http://127.0.0.1:{server.port}", line
    assert server.health() == {"status": "ok", "queue": 0, "max_queue": 64, "workers": 2, "device": "cpu",
                               "mirroring": False}


def test_label_map_is_the_cli_output(server, model):
    for name, data in model.uploads.items():
        r = post(server.url, name, data)
        assert r.status_code == 200, (name, r.text)
        assert r.content == model.expected[name], f"{name}: not the bytes autoseg predict wrote"
        assert r.headers["content-disposition"] == f'attachment; filename="{model.labels[name]}"'
        assert r.headers["content-type"] == ("application/gzip" if model.labels[name].endswith(".gz")
                                             else "application/octet-stream")
    # decoded too: same voxels and the oblique scan's own header (codes, matrices, description)
    got = nib.Nifti1Image.from_bytes(gzip.decompress(post(server.url, "oblique_0000.nii.gz",
                                                                        model.uploads["oblique_0000.nii.gz"]).content))
    scan = nib.Nifti1Image.from_bytes(gzip.decompress(model.uploads["oblique_0000.nii.gz"]))
    assert got.header["descrip"] == scan.header["descrip"]
    assert (int(got.header["qform_code"]), int(got.header["sform_code"])) == (1, 2)
    np.testing.assert_array_equal(got.header.get_sform(), scan.header.get_sform())
    assert np.asanyarray(got.dataobj).shape == np.asanyarray(scan.dataobj).shape


def test_report_json(server, model):
    r = post(server.url, "case_001_0000.nii.gz", model.uploads["case_001_0000.nii.gz"], report="true")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    document = r.json()
    assert document["case_id"] == "case_001" and document["filename"] == "case_001.nii.gz"
    label_map = base64.b64decode(document["label_map"])
    assert label_map == model.expected["case_001_0000.nii.gz"]
    report = document["report"]
    assert report["inputs"][0]["path"] == "case_001_0000.nii.gz"
    assert str(server.temp_dir) not in r.text
    array = np.asanyarray(nib.Nifti1Image.from_bytes(gzip.decompress(label_map)).dataobj)
    assert report["shape"] == list(array.shape[::-1])
    counts = {label["value"]: label["voxels"] for label in report["labels"]}
    assert counts == {1: int((array == 1).sum()), 2: int((array == 2).sum())}


def test_model_card(server):
    card = httpx.get(f"{server.url}/model", timeout=10).json()
    assert card["labels"] == {"background": 0, "a": 1, "b": 2} and len(card["package_sha256"]) == 64
    text = httpx.get(f"{server.url}/model", params={"format": "md"}, timeout=10).text
    assert text.startswith("# autoseg model") and card["package_sha256"] in text


def test_concurrent_good_and_bad(server, model):
    """20 requests at once: good ones identical to the CLI's output, bad ones one-line 4xx; /health answers
    meanwhile and afterwards, every request folder is gone."""
    good = list(model.uploads)
    jobs = [("good", good[i % len(good)]) for i in range(12)] + [("bad", name) for name in BAD]
    jobs += [("missing", "scan.nii.gz"), ("bad", "trunc_0000.nii.gz")]
    assert len(jobs) == 20

    def send(job):
        kind, name = job
        if kind == "good":
            return job, post(server.url, name, model.uploads[name])
        if kind == "bad":
            return job, post(server.url, name, model.bad[name])
        return job, httpx.post(f"{server.url}/predict", files={"scan": (name, b"x")}, timeout=120)

    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(send, job) for job in jobs]
        health_s = []
        while not all(f.done() for f in futures):
            start = time.monotonic()
            assert server.health()["status"] == "ok"
            health_s.append(time.monotonic() - start)
            time.sleep(0.05)
        answers = [f.result() for f in futures]
    assert max(health_s, default=0) < 5, f"/health took {max(health_s):.1f} s during predictions"
    for (kind, name), r in answers:
        if kind == "good":
            assert r.status_code == 200, (name, r.text)
            assert r.content == model.expected[name], name
        elif kind == "bad":
            check_error(r, *BAD[name])
        else:
            check_error(r, 422, "missing multipart field 'file'")
    server.wait_queue(0, timeout_s=10)
    assert request_folders(server) == []
    log = server.stderr.read_text()
    assert "Traceback" not in log and log.count("POST /predict") >= 20


def test_queue_full_gets_503(limited, model):
    release, results = threading.Event(), []
    thread = post_slowly(limited.url, "case_000_0000.nii.gz", model.uploads["case_000_0000.nii.gz"], release, results)
    limited.wait_queue(1)
    try:
        r = post(limited.url, "case_001_0000.nii.gz", model.uploads["case_001_0000.nii.gz"])
        check_error(r, 503, "busy")
        assert int(r.headers["retry-after"]) >= 1
    finally:
        release.set()
        thread.join(60)
    assert isinstance(results[0], httpx.Response) and results[0].status_code == 200, results
    assert results[0].content == model.expected["case_000_0000.nii.gz"]
    limited.wait_queue(0)


def test_request_size_limit_413(limited, model):
    # declared too large: answered before any body is read
    with socket.create_connection((HOST, limited.port), timeout=30) as s:
        s.sendall(f"POST /predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                  f"Content-Length: 1000000000\r\n\r\n".encode())
        answer = b""
        while not answer.endswith(b"}") and (chunk := s.recv(65536)):
            answer += chunk
        answer = answer.decode("latin-1")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert "--max-request-mb" in answer
    # no Content-Length (chunked): counted while streaming
    release = threading.Event()
    release.set()
    r = httpx.post(f"{limited.url}/predict", content=slow_body("big.nii.gz", bytes(300_000), release), timeout=60,
                   headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    check_error(r, 413, "larger than this server's limit of 0.1 MB")
    limited.wait_queue(0)
    assert request_folders(limited) == []
    r = post(limited.url, "case_003_0000.nii.gz", model.uploads["case_003_0000.nii.gz"])
    assert r.status_code == 200 and r.content == model.expected["case_003_0000.nii.gz"]


def test_timeout_504_removes_the_request_folder(limited, model):
    release, results = threading.Event(), []
    start = time.monotonic()
    thread = post_slowly(limited.url, "case_000_0000.nii.gz", model.uploads["case_000_0000.nii.gz"], release, results)
    limited.wait_queue(1)
    assert len(request_folders(limited)) == 1
    limited.wait_queue(0, timeout_s=30)  # the server gave up on it
    release.set()
    thread.join(60)
    assert time.monotonic() - start >= 5
    assert isinstance(results[0], httpx.Response), results
    check_error(results[0], 504, "timeout of 5 s")
    assert request_folders(limited) == []


def test_sigkill_mid_request_then_restart_cleans_up(limited, model):
    release, results = threading.Event(), []
    thread = post_slowly(limited.url, "case_000_0000.nii.gz", model.uploads["case_000_0000.nii.gz"], release, results)
    limited.wait_queue(1)
    dead = limited.own_temp
    assert len(request_folders(limited)) == 1  # the half-received upload is on disk
    os.kill(limited.proc.pid, signal.SIGKILL)
    limited.proc.wait(30)
    release.set()
    thread.join(60)
    assert dead.is_dir()  # SIGKILL left it behind
    limited.start()  # same port, same temp dir
    try:
        assert not dead.exists(), f"{dead} left by the killed server"
        assert [p.name for p in limited.temp_dir.iterdir()] == [limited.own_temp.name]
        r = post(limited.url, "case_001_0000.nii.gz", model.uploads["case_001_0000.nii.gz"])
        assert r.status_code == 200 and r.content == model.expected["case_001_0000.nii.gz"]
    finally:
        limited.stop()
    assert list(limited.temp_dir.iterdir()) == []  # a stopped server removes its own folder


def test_port_in_use_is_one_line(server, model):
    proc = run_autoseg("serve", model.package, "--port", server.port, "--device", "cpu", check=False, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"autoseg: error: 127.0.0.1:{server.port}: address already in use "
                                   f"(is another server running there? choose another --port)"), proc.stderr


def test_zip_and_gzip_bombs_refused_before_decoding(tmp_path):
    from autoseg.serve.uploads import Problem, Upload, open_upload

    def opened(name: str, data: bytes, limit: int):
        work = tmp_path / name.replace(".", "-")
        work.mkdir()
        (work / name).write_bytes(data)
        try:
            open_upload(Upload(work / name, name, len(data)), work, 1, limit)
        except Problem as e:
            return e
        pytest.fail(f"{name} accepted")

    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("case_0000.nii", bytes(50_000_000))  # 50 MB of zeros, ~50 kB zipped
    e = opened("bomb.zip", bomb.getvalue(), 10_000_000)
    assert (e.status, e.message) == (413, "bomb.zip: unpacks to more than this server's limit of 0.01 GiB")
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as z:
        for i in range(5000):
            z.writestr(f"case_{i:04d}.nii.gz", b"x")
    assert opened("many.zip", many.getvalue(), 10_000_000).message.startswith(
        "many.zip: 5000 files; at most 4096 (one case's channels or one DICOM series)")
    huge = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    huge.header.set_data_shape((4000, 4000, 4000))  # 256 GB declared, a few bytes of data
    e = opened("huge.nii.gz", gzip.compress(huge.header.binaryblock + bytes(4) + bytes(32)), 10_000_000)
    assert e.status == 413 and e.message.startswith("huge.nii.gz: its header declares 4000x4000x4000 voxels")


def test_a_zip_of_a_dicom_series_is_answered_with_the_seg_predict_writes(model, server, tmp_path):
    pytest.importorskip("highdicom", reason="DICOM needs the dicom extra (pip install 'autoseg[dicom]')")
    import SimpleITK as sitk

    from autoseg.dataset.geometry import Geometry
    from autoseg.dicom.seg import read_seg_labels
    from autoseg.dicom.series import find_series
    from autoseg.dicom.series_writer import representable, write_series

    image = sitk.ReadImage(str(model.root / "Dataset001_Syn" / "imagesTr" / "case_000_0000.nii.gz"))
    geometry = Geometry(image.GetSpacing()[::-1], image.GetOrigin(), image.GetDirection())
    files = write_series(representable(sitk.GetArrayFromImage(image)), geometry, tmp_path / "series")
    run_autoseg("predict", "-i", tmp_path / "series", "-o", tmp_path / "cli", "-m", model.package, "--no-tta",
                "--device", "cpu", "-q")
    [series] = find_series(tmp_path / "series").series
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for path in files:
            z.write(path, f"study/series/{path.name}")
    response = post(server.url, "series.zip", archive.getvalue())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    assert f'filename="{series.name}.seg.dcm"' in response.headers["content-disposition"]
    (tmp_path / "served.seg.dcm").write_bytes(response.content)
    labels = {"background": 0, "a": 1, "b": 2}
    assert np.array_equal(read_seg_labels(tmp_path / "served.seg.dcm", series, labels),
                          read_seg_labels(tmp_path / "cli" / f"{series.name}.seg.dcm", series, labels))
    gap = io.BytesIO()
    with zipfile.ZipFile(gap, "w") as z:
        for path in files[:5] + files[6:]:
            z.write(path, path.name)
    check_error(post(server.url, "gap.zip", gap.getvalue()), 400, "gap.zip): 1 slice(s) missing")
