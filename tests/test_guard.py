"""The request guard on its own (an ASGI app behind it records what gets through): closed routes,
bounded bodies, event payloads checked before Gradio stores them, the upload quota; the sweep
of empty upload folders and the reaping of idle sessions."""

import asyncio
import json
import os
import time

import pytest

from cir_demo.ui.guard import MAX_VALUE_CHARS, RequestGuard, value_ok
from cir_demo.ui.limits import reap_idle_sessions, remove_empty_folders

INPUTS = {0: 0, 4: 5, "search": 5, 14: 2}


class Recorder:
    """An ASGI app that answers 200 and keeps the bodies it was given."""

    def __init__(self):
        self.bodies = []

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(guard, method: str, path: str, body: bytes = b"", query: bytes = b"") -> int:
    """The HTTP status the guard (or the app behind it) answers."""
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)] or [b""]
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
    scope = {"type": "http", "method": method, "path": path, "query_string": query,
             "headers": [(b"content-length", str(len(body)).encode())]}
    asyncio.run(guard(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


@pytest.fixture
def guarded(tmp_path):
    app = Recorder()
    return app, RequestGuard(app, inputs=lambda: INPUTS, upload_folder=lambda: tmp_path, upload_quota=10_000)


def join(index, data, **extra) -> bytes:
    return json.dumps({"data": data, "fn_index": index, "session_hash": "s1", **extra}).encode()


@pytest.mark.parametrize("path, query", [
    ("/gradio_api/deep_link", b"session_hash=abc"), ("/gradio_api/monitoring/summary", b""),
    ("/monitoring", b""), ("/gradio_api/file=http://93.184.215.14/x.png", b""),
    ("/gradio_api/file=https://example.org/x.png", b""), ("/gradio_api/proxy=http://example.org/", b""),
    ("/", b"deep_link=abc"),
])
def test_routes_the_app_does_not_use_are_closed(guarded, path, query):
    app, guard = guarded
    assert call(guard, "GET", path, query=query) == 404 and app.bodies == []
    assert call(guard, "GET", "/gradio_api/file=/some/gallery/image.jpg") == 200  # files go on to Gradio's checks


def test_event_payloads_are_checked_before_the_app_sees_them(guarded):
    app, guard = guarded
    good = join(4, ["dress", "dress_001", "is red", 5, "combiner"])
    assert call(guard, "POST", "/gradio_api/queue/join", good) == 200 and app.bodies == [good]
    file_record = {"path": "/tmp/gradio/x/p.png", "url": None, "size": 3, "orig_name": "p.png", "mime_type": None,
                   "is_stream": False, "meta": {"_type": "gradio.FileData"}}
    assert call(guard, "POST", "/gradio_api/queue/join", join(14, [file_record, None])) == 200
    for body in [join(999, []), join(-1, []), join(True, []),                          # unknown events
                 join(4, ["dress"]), join(4, [None] * 9),                               # wrong arity
                 join(4, [[[] for _ in range(5000)], "x", "y", 5, "c"]),                # many small objects
                 join(4, ["x" * (MAX_VALUE_CHARS + 1), "r", "c", 5, "c"]),              # a long string
                 join(4, ["a", "b", "c", 5, "d"], event_data={"index": [[[[1]]]]}),     # deep event data
                 join(4, ["a", "b", "c", 5, "d"], session_hash="s" * 500)]:
        assert call(guard, "POST", "/gradio_api/queue/join", body) == 422
    assert call(guard, "POST", "/gradio_api/queue/join", b"[" * 30_000 + b"]" * 30_000) == 400  # no RecursionError
    assert call(guard, "POST", "/gradio_api/call/nosuch", json.dumps({"data": []}).encode()) == 404
    assert call(guard, "POST", "/gradio_api/call/search", json.dumps({"data": ["x"]}).encode()) == 422
    assert len(app.bodies) == 2


def test_bodies_and_the_upload_folder_are_bounded(guarded, tmp_path):
    app, guard = guarded
    assert call(guard, "POST", "/gradio_api/queue/join", b"x" * (70 * 1024)) == 413
    assert call(guard, "POST", "/gradio_api/upload", b"small form") == 200
    (tmp_path / "big").write_bytes(b"\0" * 20_000)  # the folder now holds more than the quota
    guard.uploaded._at = -1e9  # re-count now
    assert call(guard, "POST", "/gradio_api/upload", b"small form") == 503
    assert app.bodies == [b"small form"]


def test_value_ok_keeps_small_flat_values():
    assert all(value_ok(v) for v in [None, True, 3, 2.5, "x" * MAX_VALUE_CHARS, [1, "a"], {"meta": {"_type": "t"}}])
    assert not any(value_ok(v) for v in ["x" * (MAX_VALUE_CHARS + 1), list(range(17)), [[[[1]]]], {1: "a"},
                                         {"k" * 65: 1}, {"a": "x" * (MAX_VALUE_CHARS + 1)}])


def test_empty_upload_folders_are_swept_once_old(tmp_path):
    old, fresh, full = tmp_path / "old" / "inner", tmp_path / "fresh", tmp_path / "full"
    for folder in (old, fresh, full):
        folder.mkdir(parents=True)
    (full / "photo.png").write_bytes(b"x")
    past = time.time() - 3600
    for folder in (old, old.parent, full):
        os.utime(folder, (past, past))
    assert remove_empty_folders(tmp_path) == 1  # "old/inner" (its parent was touched by the removal)
    assert not old.exists() and fresh.exists() and full.exists()
    os.utime(old.parent, (past, past))
    assert remove_empty_folders(tmp_path) == 1 and not old.parent.exists()


def test_heavy_events_wait_only_so_deep(tmp_path):
    from cir_demo.ui.guard import MAX_HEAVY_WAITING

    app, waiting = Recorder(), [0]
    guard = RequestGuard(app, inputs=lambda: INPUTS, upload_folder=lambda: tmp_path,
                         heavy_events=lambda: {14}, heavy_waiting=lambda: waiting[0])
    upload_event = join(14, [None, None])
    assert call(guard, "POST", "/gradio_api/queue/join", upload_event) == 200
    waiting[0] = MAX_HEAVY_WAITING
    assert call(guard, "POST", "/gradio_api/queue/join", upload_event) == 503
    assert call(guard, "POST", "/gradio_api/queue/join", join(4, ["a", "b", "c", 5, "d"])) == 200  # searches go on


def test_idle_sessions_are_reaped_with_what_the_queue_keeps_for_them():
    import datetime
    import threading
    import types

    from gradio.queueing import Queue

    now = datetime.datetime(2026, 1, 1, 12, 0, 0)
    old, busy, fresh = now - datetime.timedelta(hours=1), now - datetime.timedelta(hours=1), now
    holder = types.SimpleNamespace(lock=threading.Lock(), time_last_used={"old": old, "busy": busy, "fresh": fresh},
                                   session_data={"old": 1, "busy": 2, "fresh": 3})
    queue = Queue(live_updates=False, concurrency_count=1, update_intervals=1, max_size=None, blocks=None)
    for sid in ("old", "busy", "fresh"):
        queue.pending_messages_per_session[sid] = object()
    queue.pending_event_ids_session.update({"old": set(), "busy": {"event-1"}, "fresh": set()})

    assert reap_idle_sessions(holder, 60, now=now, queue=queue) == 2
    assert set(holder.session_data) == set(holder.time_last_used) == {"fresh"}
    assert set(queue.pending_messages_per_session) == {"busy", "fresh"}  # a pending event keeps its stream
    assert set(queue.pending_event_ids_session) == {"busy"}
