"""Gradio's queue and upload routes spoken over raw HTTP, as a browser (or a stranger) speaks them:
any payload to any event by ``fn_index``, and a page action followed through its chained events.
Used by the app's benchmarks and by the tests that attack the launched app."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import Any, Optional

FILE_META = {"_type": "gradio.FileData"}


def get_json(url: str, headers: Optional[dict] = None) -> Any:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def events(base: str) -> dict[int, dict]:
    """{fn_index: dependency} of every event the page declares (documented or not)."""
    config = get_json(base + "config")
    return {dep.get("id", i): dep for i, dep in enumerate(config["dependencies"])}


def fn_index(base: str, api_name: str) -> int:
    return next(i for i, dep in events(base).items() if dep.get("api_name") == api_name)


def post(url: str, body: bytes, content_type: str, headers: Optional[dict] = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, body, {"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def join(base: str, index: Any, data: Any, *, session: Optional[str] = None, headers: Optional[dict] = None,
         raw_body: Optional[bytes] = None) -> dict:
    """Queue one event and wait for its end. Returns {"status": HTTP status of the join,
    "success": bool | None, "error": message | None, "output": data | None}."""
    session = session or uuid.uuid4().hex[:10]
    body = raw_body if raw_body is not None else json.dumps(
        {"data": data, "fn_index": index, "session_hash": session, "event_data": None}).encode()
    status, answer = post(base + "gradio_api/queue/join", body, "application/json", headers)
    result = {"status": status, "success": None, "error": None, "output": None, "body": answer[:2000]}
    if status != 200:
        return result
    event_id = json.loads(answer)["event_id"]
    request = urllib.request.Request(base + f"gradio_api/queue/data?session_hash={session}", headers=headers or {})
    with urllib.request.urlopen(request, timeout=120) as stream:
        for line in stream:
            line = line.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("event_id") == event_id and message.get("msg") == "process_completed":
                output = message.get("output") or {}
                result.update(success=message.get("success"), error=output.get("error"),
                              output=output.get("data"))
                return result
    return result


def action_events(base: str, component_id: int, trigger: str) -> list[int]:
    """The server events one page action sends, in order: the events the trigger starts and the ones
    chained after them (``.then`` / ``.success``), without those that run only in the browser."""
    deps = events(base)
    todo = [i for i, d in deps.items() if [component_id, trigger] in [list(t) for t in d.get("targets", [])]]
    order = []
    while todo:
        index = todo.pop(0)
        if deps[index].get("backend_fn", True):
            order.append(index)
        todo += [i for i, d in deps.items() if d.get("trigger_after") == index]
    return order


def element(base: str, elem_id: str) -> int:
    """The component id of the page element ``elem_id``."""
    config = get_json(base + "config")
    return next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)


def upload(base: str, name: str, data: bytes) -> tuple[int, Any]:
    """POST one file to Gradio's /upload as a browser would; (status, server paths or error text)."""
    boundary = "----cirdemo" + uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    status, answer = post(base + "gradio_api/upload", body, f"multipart/form-data; boundary={boundary}")
    try:
        return status, json.loads(answer)
    except ValueError:
        return status, answer.decode("utf-8", "replace")
