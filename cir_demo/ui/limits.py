"""What a stranger can make the server hold: request bodies, uploads, queued events and sessions.

The sizes live here; ``cir_demo.ui.guard`` checks requests against them. Gradio keeps per-session
copies of every component a session touched, for up to ``state_session_capacity`` sessions, and
API clients never say goodbye: ``session_reaper`` drops sessions idle for ``SESSION_IDLE_S``, gives
the freed memory back to the system, and removes the empty folders uploads leave behind.
"""

from __future__ import annotations

import asyncio
import ctypes
import datetime
import gc
import logging
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 2 ** 20          # a phone photo is 3-8 MB
MAX_JSON_BYTES = 64 * 2 ** 10            # an event's JSON: a 1,000-character caption and a few small values
UPLOAD_QUOTA_BYTES = 2 * 2 ** 30         # the upload folder's total; uploads wait while it is fuller
MAX_QUEUE = 256                          # events waiting; more are refused (503), never piled up
QUEUE_STATUS_EVERY_S = 2.0               # queue positions sent to waiting clients this often, not at every job
# Gradio's queue keeps the last 10,000 events for its monitoring page (which the guard closes) and
# rebuilds a pandas summary of all of them after every event (13 % of the server's CPU under load here).
GRADIO_QUEUE_ENV = {"GRADIO_ANALYTICS_MAX_EVENTS": "1", "GRADIO_ANALYTICS_CACHE_FREQUENCY": str(2 ** 62)}
SESSION_CAPACITY = 1000                  # Gradio's default is 10,000 sessions
SESSION_IDLE_S = float(os.environ.get("CIR_DEMO_SESSION_IDLE_S", 20 * 60))
REAP_EVERY_S = max(1.0, min(60.0, SESSION_IDLE_S / 4))


def reap_idle_sessions(holder, idle_s: float, now: Optional[datetime.datetime] = None, queue=None) -> int:
    """Drop the sessions of ``holder`` (Gradio's StateHolder) idle longer than ``idle_s``, and what
    Gradio's ``queue`` keeps per session id once nothing of it is pending; how many were dropped."""
    now = now or datetime.datetime.now()
    with holder.lock:
        stale = [sid for sid, used in list(holder.time_last_used.items()) if (now - used).total_seconds() > idle_s]
        for sid in stale:
            holder.session_data.pop(sid, None)
            holder.time_last_used.pop(sid, None)
    pending = getattr(queue, "pending_event_ids_session", None)
    if isinstance(pending, dict):  # one (empty) set per session id that ever sent an event
        for sid in [sid for sid, ids in list(pending.items()) if not ids]:
            pending.pop(sid, None)
    streams = getattr(queue, "pending_messages_per_session", None)
    if streams is not None:  # a message queue per session (up to 2,000), remade by the session's next event
        for sid in stale:
            if not (pending or {}).get(sid):
                streams.pop(sid, None)
    if stale:
        give_memory_back()
    return len(stale)


def give_memory_back() -> None:
    """Free what the dropped sessions held (their component copies refer to each other, so only the
    cycle collector frees them) and return the freed heap pages to the system (glibc keeps them
    otherwise; a no-op elsewhere)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def remove_empty_folders(root: Path, older_than_s: float = 60.0) -> int:
    """Remove the empty folders under ``root`` (Gradio's sweep removes files, not their folders)
    untouched for ``older_than_s`` (a fresh one may be about to receive its upload); how many."""
    removed, now = 0, time.time()
    for folder in sorted((p for p in Path(root).rglob("*") if p.is_dir() and not p.is_symlink()),
                         key=lambda p: len(p.parts), reverse=True):
        try:
            if now - folder.stat().st_mtime > older_than_s and not any(folder.iterdir()):
                folder.rmdir()
                removed += 1
        except OSError:
            pass
    return removed


def session_reaper(idle_s: float = SESSION_IDLE_S, every_s: float = REAP_EVERY_S,
                   upload_folder: Optional[Callable[[], Path]] = None):
    """A FastAPI lifespan that reaps idle sessions (and empty upload folders) every ``every_s``."""
    @asynccontextmanager
    async def lifespan(app):
        async def loop():
            while True:
                await asyncio.sleep(every_s)
                try:
                    dropped = reap_idle_sessions(app.state_holder, idle_s,
                                                 queue=getattr(app.get_blocks(), "_queue", None))
                    if upload_folder is not None:
                        await asyncio.to_thread(remove_empty_folders, upload_folder())
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
