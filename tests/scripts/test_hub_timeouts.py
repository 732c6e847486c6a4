"""Every Hub call through the package has a timeout (issue 34, problem 7), and a Hub failure is one line that says
what happened (problem 8): a Hub that accepts the connection and never answers, a Hub that answers 404."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


def test_importing_the_package_gives_the_hub_client_a_timeout(monkeypatch):
    code = ("import des4_hf; from huggingface_hub import get_session; t = get_session().timeout; "
            "print(t.read, t.connect)")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "DES4_HUB_TIMEOUT": "7"},
                          capture_output=True, text=True, timeout=120, check=True)  # a fresh process: at import
    assert done.stdout.split() == ["7.0", "7.0"]
    from huggingface_hub import get_session

    from des4_hf.hub_names import set_hub_timeout

    before = get_session().timeout.read
    monkeypatch.delenv("DES4_HUB_TIMEOUT", raising=False)
    try:
        assert set_hub_timeout() == 30.0 and (get_session().timeout.read, get_session().timeout.connect) == (30, 30)
    finally:
        set_hub_timeout(before)


class _NotFound(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


def _predict(endpoint: str, image: Path, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(out / "hf")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "des4_hf_scripts.predict", "--model", "someone/des4-street",
                           str(image), "--out", str(out / "preds"), *extra], env=env, capture_output=True, text=True,
                          timeout=120)
    return done, time.monotonic() - started


@pytest.mark.slow  # starts processes
def test_des4_predict_against_a_silent_or_missing_hub_gives_one_line(tmp_path):
    from PIL import Image

    image = tmp_path / "street.png"
    Image.new("RGB", (32, 24)).save(image)
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done, seconds = _predict(f"http://127.0.0.1:{silent.getsockname()[1]}", image, tmp_path / "a",
                                 "--timeout", "2")
        lines = [line for line in done.stderr.splitlines() if line.startswith("des4-predict:")]
        assert done.returncode == 2 and seconds < 60, done.stderr[-2000:]
        assert lines[-1] == "des4-predict: --model someone/des4-street: someone/des4-street is not in the local " \
            "Hugging Face cache and the Hub could not be reached", done.stderr[-2000:]
        done, _ = _predict(f"http://127.0.0.1:{server.server_address[1]}", image, tmp_path / "b")
        lines = [line for line in done.stderr.splitlines() if line.startswith("des4-predict:")]
        assert done.returncode == 2 and "was not found on the Hub" in lines[-1], done.stderr[-2000:]
        assert "internet connection" not in done.stderr and "Traceback" not in done.stderr
    finally:
        silent.close()
        server.shutdown()
