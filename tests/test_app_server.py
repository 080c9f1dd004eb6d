"""``python app.py`` as its own process, measured from outside: peak memory of a hostile image,
memory given back after many sessions, and nothing left on disk after it stops."""

import base64
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cir_demo.config import PROJECT_DIR
from conftest import free_port
from cir_demo.ui.http_client import FILE_META, events, fn_index, join
from test_app_attacks import zero_png

pytestmark = pytest.mark.slow

IDLE_S = 2


def memory_kb(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (the peak so far) of a process, in kB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


@pytest.fixture(scope="module")
def server(app, tmp_path_factory):
    """A separate app process on the app fixture's (already prepared) cache, with short-lived sessions."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "stderr.txt"
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}  # it makes its own folder
    env.update(CIR_DEMO_SESSION_IDLE_S=str(IDLE_S), PYTHONUNBUFFERED="1")
    with open(log, "w") as err:
        process = subprocess.Popen([sys.executable, str(PROJECT_DIR / "app.py"), "--port", str(port)],
                                   cwd=PROJECT_DIR, env=env, stdout=err, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(base + "config", timeout=2).read()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail("the app did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.5)
    named = re.search(r"uploads pass through (\S+)\)", log.read_text())
    yield process, base, Path(named.group(1)) if named else None, log
    if process.poll() is None:
        process.kill()


def search_once(base, session=None):
    ref_answer = join(base, fn_index(base, "random_reference"), ["dress"], session=session)
    ref = ref_answer["output"][0]["reference"]
    return join(base, fn_index(base, "search"), ["dress", ref, "is darker", 5, "combiner"], session=session)


# First in the module, on a freshly started server, as when run alone (+13-15 MB, then +3.0-3.3 MB in
# three runs). After the image tests below, one full-suite run measured +11.0 then +6.4 MB: what those
# tests leave in the allocator blurs the comparison.
SESSIONS = 200


def test_memory_is_reused_after_sessions_expire(server):
    """Visitors who arrive, search and leave (and API clients, who never say goodbye): a session's
    widgets are kept until it has been idle a while, then freed, so the next visitors reuse that
    memory instead of adding to it (Python keeps freed small objects for reuse rather than
    returning every page to the system)."""
    process, base, _, _ = server
    arrive = next(i for i, d in events(base).items() if any(t[1] == "load" for t in d.get("targets", [])))
    ui_search = fn_index(base, "ui_search")
    caption = "x" * 2000  # the longest value the app accepts; refused as a caption, but held by the session

    def visitors(tag: str) -> int:
        before = memory_kb(process.pid, "VmRSS")
        for i in range(SESSIONS):
            session = f"{tag}{i}"
            assert join(base, arrive, [], session=session)["success"] is True
            assert join(base, ui_search, [None, caption, 5, "combiner"], session=session)["success"] is not True
            assert join(base, ui_search, [None, "is darker", 50, "combiner"], session=session)["success"] is True
        return memory_kb(process.pid, "VmRSS") - before

    first = visitors("a")
    time.sleep(IDLE_S * 3)  # every session of the first batch has expired
    second = visitors("b")
    print(f"{SESSIONS} sessions: +{first / 1024:.1f} MB; {SESSIONS} more after they expired: +{second / 1024:.1f} MB")
    # Kept sessions would add as much again; what the second batch adds (1-3 MB measured) is the
    # allocator's own bookkeeping: no Python object outlives its session (reaper test in test_guard).
    assert first > 4 * 1024 and second < first / 2, (first, second)
    assert search_once(base)["success"] is True


def test_a_data_url_bomb_costs_no_memory(server):
    process, base, _, _ = server
    assert search_once(base)["success"] is True
    before = memory_kb(process.pid, "VmHWM")
    url = "data:image/png;base64," + base64.b64encode(zero_png(10_000, 10_000)).decode()  # 100 Mpx
    answer = join(base, fn_index(base, "ui_upload"), [{"path": None, "url": url, "meta": FILE_META}, None])
    assert answer["success"] is not True
    grown_mb = (memory_kb(process.pid, "VmHWM") - before) / 1024
    print(f"data URL bomb: peak +{grown_mb:.0f} MB")
    assert grown_mb < 80, f"peak memory grew by {grown_mb:.0f} MB"  # decoding it would take 300+ MB


def worst_jpeg() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (9_400, 9_400), (90, 60, 30)).save(buffer, "JPEG", quality=50)  # 88.4 Mpx
    return buffer.getvalue()


@pytest.mark.parametrize("name, make", [("huge.png", lambda: zero_png(6_300, 6_300)),  # 39.7 Mpx: the PNG limit
                                        ("huge.jpg", worst_jpeg)])                     # decoded at 1/8 scale
def test_the_worst_accepted_images_cost_a_bounded_peak(server, name, make):
    """The largest images accepted, uploaded as files: used, at a known peak cost."""
    from cir_demo.ui.http_client import upload

    process, base, _, _ = server
    data = make()
    before = memory_kb(process.pid, "VmHWM")
    status, paths = upload(base, name, data)
    assert status == 200
    answer = join(base, fn_index(base, "ui_upload"), [{"path": paths[0], "meta": FILE_META}, None])
    assert answer["success"] is True, answer["error"]
    grown_mb = (memory_kb(process.pid, "VmHWM") - before) / 1024
    print(f"worst accepted {name} ({len(data) / 1e6:.1f} MB): peak +{grown_mb:.0f} MB")
    assert grown_mb < 400


def test_nothing_is_left_on_disk_after_a_stop(server):
    process, base, temp, log = server
    assert temp is not None and temp.is_dir() and temp.name.startswith("cir_demo-")
    assert search_once(base)["success"] is True
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    assert not temp.exists(), log.read_text()[-2000:]
    assert not list(Path("/tmp").glob(f"cir_demo_results-{process.pid}"))
