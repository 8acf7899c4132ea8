"""`curate serve` and `curate check` end to end on a tiny untrained model: the API's answers,
its bad-input handling, batching, nothing on disk per request, the upload form in headless
Chromium, and the two commands."""
from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import uvicorn
from click.testing import CliRunner
from PIL import Image, ImageOps

from curation.dedupe.hashing import DECODE_MIN_SIDE, gray_hashes
from curation.images import load_gray
from curation.review.fiftyone_db import free_port, port_in_use
from curation.review.step import wait_for_http
from training.bad_inputs import probe, slow_client
from training.catalogue import build_catalogue
from training.check import VERDICTS, Checker
from training.serve import BODY_TIMEOUT, create_app, server_config
from tests.conftest import killed_on_exit, synthetic_photo

CLASSES = ["red_box", "blue_disc"]
REPO = Path(__file__).resolve().parents[1]
MAX_BYTES = 3_000_000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random-init MobileNet 0.25 at 32 px with hand-set calibration: answers, not wisdom."""
    import keras

    from training.model import build_classifier, feature_model, save_classifier
    from training.predict import class_means, write_calibration

    folder = tmp_path_factory.mktemp("model")
    keras.utils.set_random_seed(0)
    model = build_classifier(2, backbone="mobilenet_v1_025", weights="none", image_size=32,
                             augment=False)
    save_classifier(model, folder / "model.keras")
    pixels = np.stack([np.asarray(synthetic_photo(i).resize((32, 32))) for i in range(6)])
    features, _ = feature_model(model).predict(pixels.astype("float32"), verbose=0)
    write_calibration(folder, class_means(features, np.arange(6) % 2, 2), {
        "distance_threshold": 2.0, "min_confidence": 0.0,
        "wrong_model": {"score": "claimed_probability", "threshold": 0.5}})
    (folder / "labels.json").write_text(json.dumps({
        "classes": CLASSES, "image_size": 32, "backbone": "mobilenet_v1_025", "weights": "none",
        "dataset": "tiny"}))
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i in range(4):
        synthetic_photo(50 + i, (240, 180)).save(folder / f"{i}.jpg", quality=90)
    return folder


def _catalogue(photos: Path):
    rows = [{"path": p.name, "label": CLASSES[i % 2],
             **gray_hashes(load_gray(p, min_side=DECODE_MIN_SIDE), ("phash", "dhash"))}
            for i, p in enumerate(sorted(photos.glob("*.jpg")))]
    return build_catalogue(pd.DataFrame(rows), "listings")


@contextlib.contextmanager
def running(app, timeout: float = BODY_TIMEOUT):
    """The app served as `curate serve` serves it, on a free 127.0.0.1 port in a thread;
    stopped on exit."""
    port = free_port()
    server = uvicorn.Server(server_config(app, port=port, timeout=timeout))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 120
        while not server.started and thread.is_alive() and time.time() < deadline:
            time.sleep(0.05)
        assert server.started, "the server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
    assert not port_in_use(port)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def test_api_answers_batches_and_survives_every_bad_input(model_dir, photos, monkeypatch):
    checker = Checker(model_dir, catalogue=_catalogue(photos))
    photo = (photos / "0.jpg").read_bytes()
    spilled = []
    real = tempfile.TemporaryFile
    monkeypatch.setattr(tempfile, "TemporaryFile",
                        lambda *a, **k: spilled.append(1) or real(*a, **k))
    with running(create_app(checker, max_bytes=MAX_BYTES, timeout=1.0, max_batch=8),
                 timeout=1.0) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/classes").json() == {"classes": CLASSES}
        assert client.get("/health").json()["catalogue"] == {"name": "listings", "photos": 4}
        paths = client.get("/openapi.json").json()["paths"]
        assert {"/check", "/check/batch", "/health", "/classes"} <= set(paths)
        assert "swagger" in client.get("/docs").text.lower()

        fresh = _jpeg(synthetic_photo(999, (240, 180)))
        answer = client.post("/check", files={"image": ("new.jpg", fresh)},
                             data={"claimed_label": "blue_disc"}).json()
        assert answer["verdict"] in VERDICTS[1:] and answer["verdict"] != "duplicate"
        assert {t["label"] for t in answer["top_k"]} == set(CLASSES)
        mirrored = _jpeg(ImageOps.mirror(Image.open(photos / "1.jpg")))
        answer = client.post("/check", files={"image": ("copy.jpg", mirrored)},
                             data={"claimed_label": "blue_disc"}).json()
        assert answer["verdict"] == "duplicate", answer
        match = answer["duplicate_of"]
        assert (match["path"], match["label"], match["how"]) == ("1.jpg", "blue_disc", "mirrored")

        noise = np.random.default_rng(0).integers(0, 255, (700, 800, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, format="PNG")
        assert 1_100_000 < len(buffer.getvalue()) < MAX_BYTES    # above starlette's 1 MB spool
        big = client.post("/check", files={"image": ("big.png", buffer.getvalue())},
                          data={"claimed_label": "red_box"})
        assert big.status_code == 200 and big.json()["verdict"] != "unreadable"

        batch = client.post("/check/batch",
                            files=[("images", ("a.jpg", fresh)), ("images", ("b.jpg", b"nope")),
                                   ("images", ("c.jpg", photo))],
                            data={"claimed_labels": ["red_box", "blue_disc", "red_box"]}).json()
        assert [r["name"] for r in batch["results"]] == ["a.jpg", "b.jpg", "c.jpg"]
        assert batch["results"][1]["verdict"] == "unreadable"
        assert batch["summary"]["photos"] == 3 and batch["summary"]["verdicts"]["unreadable"] == 1
        mismatch = client.post("/check/batch", files=[("images", ("a.jpg", fresh))],
                               data={"claimed_labels": ["red_box", "red_box"]})
        assert mismatch.status_code == 422 and "one label per image" in mismatch.text

        before = client.get("/health").json()
        statuses = []

        def post():
            with httpx.Client(base_url=url, timeout=60) as own:
                statuses.append(own.post("/check", files={"image": ("p.jpg", fresh)},
                                         data={"claimed_label": "red_box"}).status_code)

        threads = [threading.Thread(target=post) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        after = client.get("/health").json()
        assert statuses == [200] * 16
        assert after["photos"] - before["photos"] == 16
        assert after["batches"] - before["batches"] < 16      # requests shared model calls

        rows = probe(url, photo, "red_box", max_bytes=MAX_BYTES, timeout=1.0)
        assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
        unknown = next(r for r in rows if r["case"] == "unknown claimed label")
        assert unknown["status"] == 422
        reply = client.post("/check", files={"image": ("x.jpg", photo)},
                            data={"claimed_label": "alto"}).json()
        assert reply["detail"]["valid"] == CLASSES
    assert spilled == []     # no upload went to a temporary file


def test_headers_that_stall_get_408_on_a_new_and_on_a_kept_alive_connection():
    from fastapi import FastAPI

    app = FastAPI()
    app.post("/check")(lambda: {"ok": True})
    with running(app, timeout=0.5) as url:
        started = time.perf_counter()
        assert slow_client(f"{url}/check", wait=5, headers_done=False) == 408
        assert time.perf_counter() - started < 3
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /check HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            first = b""
            while not first.endswith(b'{"ok":true}'):    # the whole response, however split
                first += sock.recv(4096)
            assert first.startswith(b"HTTP/1.1 200")
            sock.sendall(b"POST /check HTTP/1.1\r\nHost: x\r\n")      # and no more
            second = b""
            while chunk := sock.recv(4096):              # until the server closes (or 5 s)
                second += chunk
            assert second.startswith(b"HTTP/1.1 408")
        assert httpx.post(f"{url}/check").json() == {"ok": True}


def test_a_model_without_the_rule_is_calibrated_on_its_workdirs_val_split(model_dir, tmp_path):
    from curation.config import DatasetConfig
    from curation.manifest import read_manifest, write_manifest
    from curation.scan.step import scan

    root = tmp_path / "data"
    for i in range(6):
        (root / CLASSES[i % 2]).mkdir(parents=True, exist_ok=True)
        synthetic_photo(70 + i).save(root / CLASSES[i % 2] / f"{i}.jpg")
    workdir = tmp_path / "work"
    scan(DatasetConfig(name="tiny", root=root), workdir, workers=1, quiet=True)
    write_manifest(read_manifest(workdir).assign(split="val"), workdir)
    shutil.copytree(model_dir, workdir / "model")
    ood = workdir / "model" / "ood.json"
    ood.write_text(json.dumps({k: v for k, v in json.loads(ood.read_text()).items()
                               if k != "wrong_model"}))
    checker = Checker(workdir / "model", root=root)
    assert checker.rule["val_images"] == 6 and checker.rule["val_false_alarm"] <= 0.01
    assert json.loads(ood.read_text())["wrong_model"] == checker.rule      # kept for next time
    assert Checker(workdir / "model").rule == checker.rule


# ---- the upload form in headless Chromium, driven over the DevTools pipe -------------------------

class DevTools:
    """Just enough of the Chrome DevTools Protocol over --remote-debugging-pipe (fds 3 and 4)."""

    def __init__(self, browser: str, profile: Path):
        commands_read, self.commands = os.pipe()
        self.replies, replies_write = os.pipe()

        def wire():   # the child's fd 3 reads our commands, fd 4 writes its replies
            high_in = fcntl.fcntl(commands_read, fcntl.F_DUPFD, 10)
            high_out = fcntl.fcntl(replies_write, fcntl.F_DUPFD, 10)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        self.process = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=900,900",
             "about:blank"], preexec_fn=wire, pass_fds=(3, 4), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(commands_read)
        os.close(replies_write)
        self.buffer, self.next_id, self.session = b"", 0, None

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            ready, _, _ = select.select([self.replies], [], [], max(0.0, deadline - time.time()))
            if not ready:
                raise TimeoutError(f"{method}: no reply in {timeout} s")
            chunk = os.read(self.replies, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium exited")
            self.buffer += chunk

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression,
                         returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise TimeoutError(f"waited {timeout} s for {expression}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.session = None
            self.call("Browser.close", timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.commands)
        os.close(self.replies)


def test_upload_form_shows_the_verdict_and_top_classes_in_chromium(model_dir, photos, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    checker = Checker(model_dir, catalogue=_catalogue(photos))
    with running(create_app(checker)) as url:
        tools = DevTools(browser, tmp_path / "profile")
        try:
            target = tools.call("Target.createTarget", url=f"{url}/")["targetId"]
            tools.session = tools.call("Target.attachToTarget", targetId=target,
                                       flatten=True)["sessionId"]
            tools.wait_for("document.getElementById('claimed').options.length == 2")
            root = tools.call("DOM.getDocument")["root"]["nodeId"]
            node = tools.call("DOM.querySelector", nodeId=root, selector="#image")["nodeId"]
            tools.call("DOM.setFileInputFiles", nodeId=node, files=[str(photos / "2.jpg")])
            tools.evaluate("document.getElementById('claimed').value = 'blue_disc';"
                           "document.getElementById('submit').click()")
            verdict = tools.wait_for("document.getElementById('verdict').textContent")
            rows = tools.evaluate("document.querySelectorAll('#top tr').length")
            reason = tools.evaluate("document.getElementById('reason').textContent")
            shot = base64.b64decode(tools.call("Page.captureScreenshot", format="png")["data"])
        finally:
            tools.close()
    (tmp_path / "form.png").write_bytes(shot)
    assert verdict == "duplicate" and "2.jpg" in reason       # a catalogue photo, re-used
    assert rows == 2                                           # both classes with their bars
    pixels = np.asarray(Image.open(tmp_path / "form.png").convert("RGB")).astype(int)
    red = (pixels[..., 0] > 170) & (pixels[..., 1] < 70) & (pixels[..., 2] < 70)
    assert red.mean() > 0.001, "the red verdict badge is not on the screenshot"


# ---- the commands --------------------------------------------------------------------------------

def test_check_command_writes_verdicts_and_refuses_unknown_labels(model_dir, photos, tmp_path):
    from cli import main

    broken = tmp_path / "broken.jpg"
    broken.write_bytes((photos / "0.jpg").read_bytes()[:500])
    claims = tmp_path / "claims.csv"
    claims.write_text(f"path,claimed_label\n{photos / '1.jpg'},blue_disc\nmissing.jpg,red_box\n")
    out = tmp_path / "verdicts.csv"
    result = CliRunner().invoke(main, ["check", str(model_dir), str(photos / "0.jpg"), str(broken),
                                       "--claimed", "red_box", "--claims", str(claims),
                                       "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    verdicts = [r["verdict"] for r in report["results"]]
    assert verdicts[1] == "unreadable" and verdicts[3] == "unreadable"
    assert "No such file" in report["results"][3]["reason"]
    assert all(v in VERDICTS for v in verdicts) and report["summary"]["photos"] == 4
    table = pd.read_csv(out)
    assert table["verdict"].tolist() == verdicts and table["claimed_label"].iloc[2] == "blue_disc"
    refused = CliRunner().invoke(main, ["check", str(model_dir), str(photos / "0.jpg"),
                                        "--claimed", "alto"])
    assert refused.exit_code == 2 and "valid labels: red_box, blue_disc" in refused.output


@pytest.mark.slow
def test_serve_command_binds_localhost_and_stops_on_ctrl_c(model_dir):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", str(model_dir), "--port", str(port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    with killed_on_exit(process):
        assert wait_for_http(f"http://127.0.0.1:{port}/health", timeout=240) == 200
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert f"http://127.0.0.1:{port}/" in stderr and not port_in_use(port)
