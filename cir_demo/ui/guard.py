"""What a request may be before the app sees it (ASGI middleware): strangers call every route.

* Routes this app does not use are 404: Gradio's deep-link snapshots (each GET writes a session's
  whole state to disk), its monitoring page, the component server, and ``/file=`` / ``/proxy=`` for
  URLs (the server would fetch any public URL a client names and stream it back).
* Bodies are bounded: an upload by ``upload_limit`` (and refused while the upload folder holds
  more than ``upload_quota``), any other body by ``json_limit``.
* Heavy events (uploads, batch ranking) wait at most ``MAX_HEAVY_WAITING`` deep: a flood of them
  cannot fill the queue the searches share (a stranger once filled all 256 places with uploads).
* An event's JSON is checked before Gradio stores it in the session: the event exists, gets as
  many inputs as it has, and every value is small and flat (a string of at most ``MAX_VALUE_CHARS``,
  a number, or a short list / dict such as a file record). Gradio keeps each input's last value per
  session, so this bounds what a session can hold; deep nesting is a 400, not a server error.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Optional

from cir_demo.ui.limits import MAX_JSON_BYTES, MAX_UPLOAD_BYTES, UPLOAD_QUOTA_BYTES

MAX_VALUE_CHARS = 2048    # a caption is at most 1,000 characters, a server path well under this
MAX_ITEMS = 16            # elements of a list / keys of a dict in one value (a file record has 7)
MAX_DEPTH = 3             # a file record is {"meta": {"_type": ...}}: depth 2
DRAIN_BYTES = 64 * 2 ** 20  # past this a refused body's sender just sees the connection close
MAX_HEAVY_WAITING = 16      # heavy events queued at once (they run one at a time)
HEAVY = "heavy"             # the concurrency group of heavy events (cir_demo.ui.layout)
BLOCKED_PREFIXES = ("/gradio_api/deep_link", "/gradio_api/monitoring", "/monitoring", "/gradio_api/component_server",
                    "/gradio_api/file=http", "/gradio_api/file=//", "/gradio_api/proxy=", "/file=http", "/proxy=")


def value_ok(value, depth: int = 0) -> bool:
    """True for the small, flat values an event of this app takes."""
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return len(value) <= MAX_VALUE_CHARS
    if depth >= MAX_DEPTH or not isinstance(value, (list, dict)) or len(value) > MAX_ITEMS:
        return False
    if isinstance(value, dict):
        return all(isinstance(k, str) and len(k) <= 64 and value_ok(v, depth + 1) for k, v in value.items())
    return all(value_ok(v, depth + 1) for v in value)


def _respond(send, status: int, message: str):
    # A 422 carries its message the way Gradio's own input validation does, so clients show it.
    detail = [{"__type__": "validate", "is_valid": False, "message": message}] if status == 422 else message
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def answer():
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    return answer()


async def _drain(receive, most: int = DRAIN_BYTES) -> None:
    """Read and drop up to ``most`` bytes of a refused body (so the client reads the answer)."""
    seen = 0
    while seen <= most:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            return
        seen += len(message.get("body", b""))


class FolderSize:
    """The bytes under a folder, re-counted at most every ``every_s`` seconds."""

    def __init__(self, folder: Callable[[], Path], every_s: float = 2.0):
        self.folder, self.every_s, self._at, self._bytes = folder, every_s, -1e9, 0

    def __call__(self) -> int:
        now = time.monotonic()
        if now - self._at > self.every_s:
            total = 0
            for root, _, files in os.walk(self.folder()):
                for name in files:
                    try:
                        total += os.lstat(os.path.join(root, name)).st_size
                    except OSError:
                        pass
            self._at, self._bytes = now, total
        return self._bytes


class RequestGuard:
    """The middleware; ``inputs()`` maps every event's fn_index (and api name) to its input count."""

    def __init__(self, app, *, inputs: Callable[[], dict], upload_folder: Callable[[], Path],
                 json_limit: int = MAX_JSON_BYTES, upload_limit: int = MAX_UPLOAD_BYTES + 2 ** 20,
                 upload_quota: int = UPLOAD_QUOTA_BYTES, heavy_waiting: Callable[[], int] = lambda: 0,
                 heavy_events: Callable[[], set] = set):
        self.app, self.inputs = app, inputs
        self.heavy_waiting, self.heavy_events = heavy_waiting, heavy_events
        self.json_limit, self.upload_limit, self.upload_quota = json_limit, upload_limit, upload_quota
        self.uploaded = FolderSize(upload_folder)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path.startswith(BLOCKED_PREFIXES) or b"deep_link=" in scope.get("query_string", b""):
            return await _respond(send, 404, "not found")
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        upload = path.rstrip("/").endswith("/upload")
        limit = self.upload_limit if upload else self.json_limit
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _drain(receive)
            return await _respond(send, 413, f"request body larger than {limit:,} bytes")
        if upload:
            if self.uploaded() > self.upload_quota:
                await _drain(receive)
                return await _respond(send, 503, "too many uploads at the moment; please try again in a few minutes")
            return await self._counted(scope, receive, send, limit)
        body = await self._read(receive, limit)
        if body is None:
            return await _respond(send, 413, f"request body larger than {limit:,} bytes")
        problem = self._event_problem(path, body)
        if problem is not None:
            return await _respond(send, *problem)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await self.app(scope, replay, send)

    async def _read(self, receive, limit: int) -> Optional[bytes]:
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > limit:
                if message.get("more_body"):
                    await _drain(receive)
                return None
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                return bytes(body)

    def _event_problem(self, path: str, body: bytes) -> Optional[tuple[int, str]]:
        """(status, message) when an event request is malformed; None when it may go on."""
        try:
            request = json.loads(body) if body.strip() else None
        except (ValueError, RecursionError):
            return (400, "the body is not JSON this app reads") if body.strip()[:1] in (b"{", b"[") else None
        if not isinstance(request, dict):
            return None  # not an event: the app answers it
        known = self.inputs()
        index = request.get("fn_index")
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if path.rstrip("/").endswith("/queue/join"):
            if index is not None and (isinstance(index, bool) or index not in known):
                return 422, "unknown event (fn_index)"
            if index in self.heavy_events() and self.heavy_waiting() >= MAX_HEAVY_WAITING:
                return 503, "the server is busy with uploads and batch ranking; please try again in a minute"
        elif "/run/" in path or "/call/" in path:
            index = name if name in known else None
            if index is None:
                return 404, "unknown endpoint"
        data = request.get("data")
        if data is not None and (not isinstance(data, list) or len(data) > 64):
            return 422, "data must be a short list of input values"
        if index is not None and data is not None and len(data) != known[index]:
            return 422, f"this event takes {known[index]} inputs, not {len(data)}"
        session = request.get("session_hash")
        if session is not None and (not isinstance(session, str) or len(session) > 64):
            return 422, "session_hash must be a short string"
        if not all(value_ok(v) for v in (data or [])) or not value_ok(request.get("event_data")):
            return 422, "an input value is too large or too deeply nested for this app"
        return None

    async def _counted(self, scope, receive, send, limit: int):
        seen, over, started = 0, False, False

        async def counting_receive():
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                over = True
                return {"type": "http.disconnect"}  # the app stops reading and discards the part
            return message

        async def guarded_send(message):
            nonlocal started
            if over and not started:
                return
            started = True
            await send(message)
        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:  # the app saw a disconnect it did not expect: ours, when over the limit
            if not over:
                raise
        if over and not started:
            await _respond(send, 413, f"request body larger than {limit:,} bytes")


def event_tables(demo) -> dict:
    """What ``RequestGuard`` needs to know of the page's events (read once, on first use)."""
    cached: dict = {}

    def table(key: str):
        if not cached:
            inputs, heavy = {}, set()
            for index, fn in demo.fns.items():
                inputs[index] = len(fn.inputs)
                if getattr(fn, "api_name", None):
                    inputs[fn.api_name] = len(fn.inputs)
                if getattr(fn, "concurrency_id", None) == HEAVY:
                    heavy.add(index)
            cached.update(inputs=inputs, heavy=heavy)
        return cached[key]

    def heavy_waiting() -> int:
        queues = getattr(getattr(demo, "_queue", None), "event_queue_per_concurrency_id", {})
        return len(getattr(queues.get(HEAVY), "queue", []))
    return {"inputs": lambda: table("inputs"), "heavy_events": lambda: table("heavy"), "heavy_waiting": heavy_waiting}
