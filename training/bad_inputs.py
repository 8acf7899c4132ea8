"""The bad-input list a check server must survive, as requests with their expected answers.

Shared by the tests and bench/serve_bench.py: each case is sent to a running server and
compared with the status (and verdict) it must get; a 5xx, a hang or a dead server fails.
"""
from __future__ import annotations

import socket
import struct
import time
import zlib
from urllib.parse import urlsplit

import httpx


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def bomb_png(side: int = 100_000) -> bytes:
    """A tiny PNG whose header claims side x side pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def slow_client(url: str, *, wait: float, headers_done: bool = True) -> int | None:
    """Announce a 100 kB upload, send 10 bytes of it, then stall (or, headers_done=False, stall
    halfway through the headers): the status the server answers within `wait` seconds, or
    None when it never does."""
    parts = urlsplit(url)
    request = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.hostname}\r\n"
               "Content-Type: multipart/form-data; boundary=x\r\n")
    if headers_done:
        request += "Content-Length: 100000\r\n\r\n--x\r\nabcde"
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=wait) as sock:
            sock.sendall(request.encode())
            reply = sock.recv(256)
    except OSError:   # refused, reset or timed out
        return None
    return int(reply.split()[1]) if reply.startswith(b"HTTP/1.1") else None


def cases(photo: bytes, label: str, max_bytes: int) -> list[tuple[str, dict, tuple, str | None]]:
    """(name, httpx request keywords, accepted statuses, expected verdict) for each bad input."""
    def upload(data: bytes, claimed: str = label) -> dict:
        return {"files": {"image": ("upload.jpg", data, "image/jpeg")},
                "data": {"claimed_label": claimed}}

    big = b"\xff\xd8\xff" + b"\0" * (max_bytes + 1)
    body = (b'--zz\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + big + b"\r\n--zz--\r\n")
    return [
        ("empty body", {"content": b""}, (422,), None),
        ("empty file", upload(b""), (200,), "unreadable"),
        ("not an image", upload(b"this is a text file, not a photo\n" * 20), (200,), "unreadable"),
        ("truncated JPEG", upload(photo[:len(photo) // 2]), (200,), "unreadable"),
        ("decompression bomb", upload(bomb_png()), (200,), "unreadable"),
        ("over --max-bytes", upload(big), (413,), None),
        ("over --max-bytes, streamed without a length",
         {"content": iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
          "headers": {"content-type": "multipart/form-data; boundary=zz"}}, (413,), None),
        ("unknown claimed label", upload(photo, "no-such-model"), (422,), None),
        ("garbled multipart", {"content": b"--zz\r\nnonsense",
                               "headers": {"content-type": "multipart/form-data; boundary=zz"}},
         (400, 422), None),
    ]


def probe(base_url: str, photo: bytes, label: str, *, max_bytes: int, timeout: float) -> list[dict]:
    """Send every bad input (and a stalled body) to base_url; one row per case with what
    came back, how long it took and whether it was the expected answer."""
    rows = []
    with httpx.Client(base_url=base_url, timeout=timeout + 30) as client:
        for name, request, accepted, verdict in cases(photo, label, max_bytes):
            started = time.perf_counter()
            try:
                response = client.post("/check", **request)
                got, body = response.status_code, response.json()
            except httpx.HTTPError as exc:
                got, body = None, {"error": str(exc)}
            answer = body.get("verdict") if isinstance(body, dict) else None
            rows.append({"case": name, "status": got, "expected_status": accepted,
                         "verdict": answer, "seconds": round(time.perf_counter() - started, 3),
                         "ok": got in accepted and (verdict is None or answer == verdict)})
        for name, headers_done in (("slow client (body)", True), ("slow client (headers)", False)):
            started = time.perf_counter()
            got = slow_client(f"{base_url}/check", wait=timeout + 5, headers_done=headers_done)
            rows.append({"case": name, "status": got, "expected_status": (408,),
                         "verdict": None, "seconds": round(time.perf_counter() - started, 3),
                         "ok": got == 408})
        health = client.get("/health").status_code
    rows.append({"case": "healthy afterwards", "status": health, "expected_status": (200,),
                 "verdict": None, "seconds": 0.0, "ok": health == 200})
    return rows
