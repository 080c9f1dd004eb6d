"""What a stranger can make the server hold: request bodies, uploads, queued events and sessions.

* ``BodyLimit`` (ASGI middleware): a request body larger than its route's limit is answered 413
  before the app sees it (uploads: ``MAX_UPLOAD_BYTES`` plus form overhead; every other route:
  ``MAX_JSON_BYTES``: images arrive only as uploads), and a queue request for
  an event the page does not have is answered 422 instead of a server error.
* Gradio keeps per-session copies of every component a session touched, for up to
  ``state_session_capacity`` sessions; API clients never say goodbye. ``session_reaper`` drops
  sessions idle for ``SESSION_IDLE_S`` and gives the freed memory back to the system.
"""

from __future__ import annotations

import asyncio
import ctypes
import datetime
import json
import logging
import os
from contextlib import asynccontextmanager
from typing import Callable, Optional

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 2 ** 20          # a phone photo is 3-8 MB
MAX_JSON_BYTES = 64 * 2 ** 10            # an event's JSON: a 1,000-character caption and a few small values
MAX_QUEUE = 256                          # events waiting; more are refused (503), never piled up
SESSION_CAPACITY = 1000                  # Gradio's default is 10,000 sessions
SESSION_IDLE_S = float(os.environ.get("CIR_DEMO_SESSION_IDLE_S", 20 * 60))
REAP_EVERY_S = max(1.0, min(60.0, SESSION_IDLE_S / 4))


def _respond(send, status: int, message: str):
    body = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def answer():
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    return answer()


DRAIN_BYTES = 64 * 2 ** 20  # past this a refused body's sender just sees the connection close


async def _drain(receive, most: int = DRAIN_BYTES) -> None:
    """Read and drop up to ``most`` bytes of a refused body (never stored)."""
    seen = 0
    while seen <= most:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            return
        seen += len(message.get("body", b""))


class BodyLimit:
    """ASGI middleware: bounded request bodies; queue requests only for events that exist."""

    def __init__(self, app, *, valid_events: Callable[[], set], json_limit: int = MAX_JSON_BYTES,
                 upload_limit: int = MAX_UPLOAD_BYTES + 2 ** 20):
        self.app, self.valid_events = app, valid_events
        self.json_limit, self.upload_limit = json_limit, upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        upload = path.rstrip("/").endswith("/upload")
        limit = self.upload_limit if upload else self.json_limit
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _drain(receive)  # so the client reads our answer, not a reset connection
            return await _respond(send, 413, f"request body larger than {limit:,} bytes")
        if upload:  # streamed to disk by Gradio: count as it arrives, never buffer here
            return await self._counted(scope, receive, send, limit)
        body = bytearray()
        while True:  # small by the limit: read it whole, check it, then replay it to the app
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                if message.get("more_body"):
                    await _drain(receive)
                return await _respond(send, 413, f"request body larger than {limit:,} bytes")
            if not message.get("more_body"):
                break
        if path.rstrip("/").endswith("/queue/join") and not self._known_event(bytes(body)):
            return await _respond(send, 422, "unknown event (fn_index)")
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}
        return await self.app(scope, replay, send)

    def _known_event(self, body: bytes) -> bool:
        try:
            request = json.loads(body)
        except ValueError:
            return True  # not ours to judge: the app answers malformed JSON with its own 422
        index = request.get("fn_index") if isinstance(request, dict) else None
        if index is None:
            return True
        return isinstance(index, int) and not isinstance(index, bool) and index in self.valid_events()

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


def reap_idle_sessions(holder, idle_s: float, now: Optional[datetime.datetime] = None) -> int:
    """Drop the sessions of ``holder`` (Gradio's StateHolder) idle longer than ``idle_s``; how many."""
    now = now or datetime.datetime.now()
    with holder.lock:
        stale = [sid for sid, used in list(holder.time_last_used.items()) if (now - used).total_seconds() > idle_s]
        for sid in stale:
            holder.session_data.pop(sid, None)
            holder.time_last_used.pop(sid, None)
    if stale:
        give_memory_back()
    return len(stale)


def give_memory_back() -> None:
    """Return freed heap pages to the system (glibc keeps them otherwise); a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def session_reaper(idle_s: float = SESSION_IDLE_S, every_s: float = REAP_EVERY_S):
    """A FastAPI lifespan that reaps idle sessions every ``every_s`` while the server runs."""
    @asynccontextmanager
    async def lifespan(app):
        async def loop():
            while True:
                await asyncio.sleep(every_s)
                try:
                    dropped = reap_idle_sessions(app.state_holder, idle_s)
                except Exception:  # noqa: BLE001 - the reaper must outlive any one bad pass
                    log.exception("session reaper failed")
                    continue
                if dropped:
                    log.info("dropped %d idle sessions", dropped)
        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
    return lifespan
