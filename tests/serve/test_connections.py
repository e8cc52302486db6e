"""`masksmith serve` against slow and surplus clients, with raw sockets on 127.0.0.1 (bounded counts, short
timeouts): header and body deadlines, the connection cap with one log line per burst, the descriptor limit,
the token kept out of the access log, and the security headers on every answer."""

from __future__ import annotations

import logging
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'masksmith[serve]'")
httpx = pytest.importorskip("httpx", reason="the serve tests need httpx (test extra)")
from fastapi.testclient import TestClient  # noqa: E402

from masksmith.serve.app import create_app  # noqa: E402
from masksmith.serve.connections import RefusalLog  # noqa: E402
from masksmith.serve.model import ServedModel  # noqa: E402
from masksmith.serve.options import ServeOptions  # noqa: E402
from tests.serve_helpers import live_server, png_bytes, train_tiny  # noqa: E402

PARTIAL = b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # headers never finished


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("serve-connections"))[1]


@pytest.fixture(scope="module")
def served(bundle):
    return ServedModel.load(bundle)


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    return host, int(port)


def _open(address: tuple[str, int], data: bytes = PARTIAL) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(data)
    return sock


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection; b"" for a reset (a socket timeout fails)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        chunks = []
    sock.close()
    return b"".join(chunks)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


@pytest.mark.slow
def test_slow_headers_are_cut_off_and_surplus_connections_refused_with_one_log_line(served, caplog):
    caplog.set_level(logging.WARNING, logger="masksmith.serve")
    app = create_app(served, ServeOptions(max_connections=20, header_timeout_s=3.0))
    with live_server(app) as (url, _):
        address = _address(url)
        sockets = [_open(address) for _ in range(50)]
        answers = [_answer(sock) for sock in sockets]
        statuses = [_status(answer) for answer in answers]
        assert statuses.count(503) == 30 and statuses.count(408) == 20, statuses
        assert all(b"x-content-type-options: nosniff" in answer for answer in answers)
        assert b"did not arrive within 3 s" in answers[0]
        refusals = [r.getMessage() for r in caplog.records if "connection limit" in r.getMessage()]
        assert len(refusals) == 1 and "connection limit of 20 open connections reached" in refusals[0]
        assert httpx.get(f"{url}healthz", timeout=10).status_code == 200  # the slow ones are gone


def test_a_kept_alive_connection_that_trickles_its_next_headers_is_cut_off(served):
    app = create_app(served, ServeOptions(header_timeout_s=1.0))
    with live_server(app) as (url, _):
        sock = _open(_address(url), b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"alive"}'):
            first += sock.recv(65536)
        assert _status(first) == 200
        lines = [b"GET /healthz HTTP/1.1\r\n"] + [b"X-Slow: 1\r\n"] * 7
        for line in lines:  # a header line every 0.25 s for 2 s: data keeps coming, the headers never end
            try:
                sock.sendall(line)
            except OSError:  # closed by the server
                break
            time.sleep(0.25)
        rest = _answer(sock)
        assert _status(rest) == 408 and b"headers did not arrive within 1 s" in rest


def test_a_body_that_trickles_past_the_request_limit_is_answered_408_and_cut_off(served):
    app = create_app(served, ServeOptions(timeout_s=1.0))
    with live_server(app) as (url, _):
        sock = _open(_address(url), b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                                    b"Content-Length: 100000\r\n\r\n" + b"\x89PNG")
        answer = _answer(sock)  # the request's 408, then the connection closes: the rest of the body is not awaited
        assert _status(answer) == 408 and b"the upload took longer than the request limit of 1 s" in answer


@pytest.mark.slow
def test_with_few_descriptors_the_cli_caps_connections_below_them_and_stays_quiet(bundle, tmp_path):
    """The audit's case: 200 slow connections against a process allowed 448 files (room for 64 connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 400 or (hard != resource.RLIM_INFINITY and hard < 448):
        pytest.skip("needs 400 descriptors here (200 client sockets) and a hard limit of at least 448")

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (448, 448))

    command = [sys.executable, "-m", "masksmith.cli", "serve", str(bundle), "--port", "0", "--max-batch", "1",
               "--header-timeout", "3"]
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, preexec_fn=few_descriptors,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        def output() -> str:
            log.flush()
            return (tmp_path / "serve.log").read_text()

        deadline = time.monotonic() + 120
        while "Uvicorn running" not in output() and "Application startup complete" not in output():
            assert process.poll() is None and time.monotonic() < deadline, output()
            time.sleep(0.1)
        url = re.search(r"(http://127\.0\.0\.1:\d+/)", output()).group(1)
        assert "64 connections at once (the descriptor limit allows no more than 64)" in output()
        sockets = [_open(_address(url)) for _ in range(200)]
        statuses = [_status(_answer(sock)) for sock in sockets]
        # 64 held until their headers are late; the others refused at once: 503, or a reset beyond 64 refusals.
        assert statuses.count(408) == 64 and statuses.count(503) >= 64
        assert set(statuses) <= {408, 503, 0}
        assert httpx.post(f"{url}v1/segment", content=png_bytes(np.zeros((8, 8, 3), np.uint8)),
                          headers={"content-type": "image/png"}, timeout=30).status_code == 200
        process.send_signal(signal.SIGINT)
        process.wait(60)
        text = output()
        assert "Too many open files" not in text and "Traceback" not in text
        assert text.count("connection limit of 64 open connections reached") == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def test_the_refusal_log_says_so_once_per_burst(caplog):
    caplog.set_level(logging.WARNING, logger="masksmith.serve")
    clock = [0.0]
    refusals = RefusalLog(interval_s=10.0, clock=lambda: clock[0])
    for step in range(300):  # 300 refusals over 30 s: one line, then one every 10 s with the count
        clock[0] = step * 0.1
        refusals.refused(5)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and "refused 1 new" in lines[0] and "refused 100 new" in lines[1]


def test_the_token_never_appears_in_the_access_log(served):
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    app = create_app(served, ServeOptions(host="0.0.0.0", token="s3cret-token"))
    keep = Keep()
    with live_server(app, access_log=True) as (url, _):
        access = logging.getLogger("uvicorn.access")
        access.addHandler(keep)
        try:
            assert httpx.get(f"{url}?token=s3cret-token", timeout=10).status_code == 303
            assert httpx.get(f"{url}static/app.js?x=1&TOKEN=s3cret-token", timeout=10).status_code == 401
        finally:
            access.removeHandler(keep)
    assert len(seen) == 2 and not any("s3cret" in line for line in seen)
    assert "GET /?token=[redacted]" in seen[0] and "TOKEN=[redacted]" in seen[1]


def test_every_answer_carries_the_security_headers(served):
    with TestClient(create_app(served, ServeOptions(host="0.0.0.0", token="t")), follow_redirects=False) as client:
        good = {"Authorization": "Bearer t"}
        answers = [client.get("/", headers=good), client.get("/static/app.js", headers=good),
                   client.get("/healthz"), client.get("/v1/model"), client.get("/nowhere", headers=good),
                   client.get("/?token=t"),
                   client.post("/v1/segment", content=b"", headers={**good, "content-type": "image/png"})]
    assert [a.status_code for a in answers] == [200, 200, 200, 401, 404, 303, 400]
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "style-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy
