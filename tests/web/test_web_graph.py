"""The web node in the shipped door graph (configs/door.yaml on the sim camera), as a person and
as Prometheus meet it: a real headless Chromium logs in and watches, the MJPEG stream decodes
with cv2, promtool accepts /metrics, and the token, the media route and the connection bound
hold. One graph serves every test of this module (it takes a while to start)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import Up, up_env, wait_for
from web.cdp import Browser, CdpError, chromium

from iotrt import control
from iotrt.bus import Subscriber
from iotrt.graph import load_graph
from iotrt.journal import Journal, JournalError, JournalReader

ROOT = Path(__file__).resolve().parents[2]
DOOR = ROOT / "configs" / "door.yaml"
NODES = set(load_graph(DOOR).nodes)          # camera ... lock, web: every node must run


class Door:
    def __init__(self, tmp: Path):
        self.run_dir = Path(f"/tmp/iotrt-web-{os.getpid()}")       # ipc paths: short
        self.state = tmp / "state"
        env = up_env(self.run_dir, self.state)
        env.update(CAMERA_SOURCE="sim", CAMERA_FPS="15", WEB_PORT="0")
        self.up_env = env
        self.up = Up(DOOR, env, tmp / "up.log")
        self.gdir = self.state / "door"
        self.url = wait_for(self._url, 120, "the web node's web_listening event")
        self.token = (self.gdir / "web.token").read_text().strip()
        u = urllib.parse.urlsplit(self.url)
        self.host, self.port = u.hostname, u.port
        self.ctl = f"ipc://{self.run_dir / 'door' / 'ctl'}"

    def _url(self) -> str | None:
        try:
            with JournalReader(self.gdir / "journal.db") as j:
                evs = j.query(kind="web_listening")
        except JournalError:
            return None
        return evs[-1].fields["url"] if evs else None

    def events(self, **filters) -> list:
        with JournalReader(self.gdir / "journal.db") as j:
            return j.query(**filters)

    def request(self, path: str, token: str | None = "", method: str = "GET", body=None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token or self.token}"
        c = http.client.HTTPConnection(self.host, self.port, timeout=20)
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def status(self) -> dict:
        code, _, body = self.request("/api/status")
        assert code == 200, body
        return json.loads(body)

    def metric(self, name: str) -> float:
        _, _, body = self.request("/metrics")
        for line in body.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not in /metrics")

    def address(self, topic: str) -> str:
        return control.call(self.ctl, "topics")["topics"][topic]["address"]

    def close(self) -> None:
        self.up.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    d = Door(tmp_path_factory.mktemp("door"))
    try:
        wait_for(lambda: {n["node"] for n in d.status()["nodes"] if n["state"] == "running"}
                 == NODES, 120, "every node running")
        yield d
    finally:
        d.close()


class Mjpeg:
    """An MJPEG client: frames as (arrival time, BGR image)."""

    def __init__(self, door: Door, path: str):
        self.conn = http.client.HTTPConnection(door.host, door.port, timeout=20)
        self.conn.request("GET", path, headers={"Authorization": f"Bearer {door.token}"})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.read()
        assert self.resp.getheader("Content-Type").startswith("multipart/x-mixed-replace")

    def frame(self) -> bytes:
        fp = self.resp.fp
        while not fp.readline().startswith(b"--"):
            pass
        length = 0
        while line := fp.readline().strip():
            k, _, v = line.decode().partition(":")
            if k.lower() == "content-length":
                length = int(v)
        return fp.read(length)

    def close(self) -> None:
        self.resp.close()       # the response holds the socket open otherwise
        self.conn.close()


def test_a_person_watches_in_chromium(door, tmp_path):
    if chromium() is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it where it can)")
    browser = Browser(tmp_path / "profile", tmp_path / "chromium.log")

    def look(expression: str):
        try:
            return browser.js(expression)
        except CdpError:     # between two pages: no document to ask yet
            return None
    try:
        browser.navigate(door.url)
        # 'complete': the style sheet that hides the error has loaded too
        wait_for(lambda: look("document.readyState === 'complete' && "
                              "!!document.getElementById('token')"), 20, "the login form")
        shown = "getComputedStyle(document.getElementById('wrong')).display !== 'none'"
        assert browser.js(shown) is False
        browser.js("document.getElementById('token').value = 'not-the-token-0123456789';"
                   "document.querySelector('form').submit(); true")
        wait_for(lambda: look(shown), 20, "'That is not the token.' after a wrong one")
        browser.js(f"document.getElementById('token').value = {json.dumps(door.token)};"
                   "document.querySelector('form').submit(); true")
        wait_for(lambda: look("!!document.getElementById('nodes')"), 20, "the status page")
        started = time.monotonic()

        def nodes():
            return dict(look("[...document.querySelectorAll('#nodes tr')]"
                                   ".map(tr => [tr.cells[0].textContent, tr.cells[2].textContent])")
                        or [])
        shown = wait_for(lambda: (n := nodes()) and set(n) == NODES and n, 20, "every node listed")
        assert set(shown.values()) == {"running"}, shown

        # the <img> shows the MJPEG stream: its pixels change from one look to the next
        digest = ("(() => { const i = document.getElementById('video'); if (!i.naturalWidth) return null;"
                  " const c = document.createElement('canvas'); c.width = 64; c.height = 48;"
                  " const x = c.getContext('2d'); x.drawImage(i, 0, 0, 64, 48);"
                  " return [i.naturalWidth, Array.from(x.getImageData(0, 0, 64, 48).data)"
                  ".reduce((a, b) => (a * 31 + b) | 0, 0)]; })()")
        first = wait_for(lambda: browser.js(digest), 20, "a video frame in the page")
        assert first[0] == 640
        wait_for(lambda: (d := browser.js(digest)) and d[1] != first[1], 10, "a newer video frame")

        def text():
            return browser.js("document.getElementById('events').textContent")
        left = 30 - (time.monotonic() - started)
        wait_for(lambda: "unlock_for_enrolled fired" in text() and '"unlock"' in text()
                 and "visitor fired" in text(), left, "an unlock and a visitor in the events")
        # whatever the journal holds is shown as text, never run as HTML
        hostile = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
        with Journal(door.gdir / "journal.db") as j:
            j.write("rule_fired", "<b>rules</b>", {"rule": hostile})
        wait_for(lambda: hostile in text(), 10, "the hostile event, as text")
        assert browser.js("document.querySelectorAll('#events script, #events b, "
                          "#events img[src=\"x\"]').length") == 0
        assert browser.js("typeof window.pwned") == "undefined"
        # the visitor's snapshot is shown next to its event
        wait_for(lambda: browser.js("[...document.querySelectorAll('#events img')]"
                                    ".some(i => i.complete && i.naturalWidth === 640)"), 20,
                 "the visitor snapshot in the events list")
        shot = browser.screenshot(tmp_path / "web-page.png")
        assert cv2.imread(str(shot)) is not None
    finally:
        browser.close()


def _yellow(img: np.ndarray) -> np.ndarray:
    b, g, r = (img[..., i].astype(int) for i in range(3))
    return (r > 150) & (g > 150) & (b < 110)


def _longest_run(mask: np.ndarray) -> int:
    """Longest horizontal run of yellow pixels: a drawn box edge, not the scene's own yellows."""
    best = 0
    for row in mask[:, :].astype(np.int8):
        edges = np.flatnonzero(np.diff(np.concatenate(([0], row, [0]))))
        if len(edges):
            best = max(best, int((edges[1::2] - edges[::2]).max()))
    return best


def _on_box(mask: np.ndarray, box: list[float]) -> float:
    """Share of the box's outline with a yellow pixel within 2 px."""
    h, w = mask.shape
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    pts = [(x, y) for x in range(x1, x2, 3) for y in (y1, y2)] + \
          [(x, y) for y in range(y1, y2, 3) for x in (x1, x2)]
    hit = sum(mask[max(0, y - 2):min(h, y + 3), max(0, x - 2):min(w, x + 3)].any()
              for x, y in pts if 0 <= x < w and 0 <= y < h)
    return hit / max(1, len(pts))


def test_mjpeg_decodes_at_the_capped_rate_with_the_detector_boxes(door):
    boxes: list[tuple[float, list]] = []       # (arrival, boxes) of the detector's messages
    stop = threading.Event()
    sub = Subscriber(door.address("faces/detections"), queue=64)

    def listen():
        while not stop.is_set():
            env = sub.recv(0.2)
            if env is not None:
                boxes.append((time.monotonic(), env.data["boxes"]))
    t = threading.Thread(target=listen, daemon=True)
    t.start()
    video = Mjpeg(door, "/video/cam/image")             # max_fps 10 (default), camera at 15
    frames = []
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 14:                # more than one owner/visitor cycle
            img = cv2.imdecode(np.frombuffer(video.frame(), np.uint8), cv2.IMREAD_COLOR)
            frames.append((time.monotonic(), img))
    finally:
        video.close()
        stop.set()
        t.join()
        sub.close()
    assert all(f.shape == (480, 640, 3) for _, f in frames)
    rate = (len(frames) - 1) / (frames[-1][0] - frames[0][0])
    assert 8.0 <= rate <= 10.5, f"{rate:.1f} frames/s; the cap is 10"

    with_face = without_face = 0
    for t_frame, img in frames:
        recent = [b for t_box, bs in boxes if 0 <= t_frame - t_box <= 0.4 for b in bs]
        mask = _yellow(img)
        if recent:
            if max(_on_box(mask, b) for b in recent) >= 0.8:
                with_face += 1
        elif not any(bs for t_box, bs in boxes if abs(t_frame - t_box) <= 0.5):
            without_face += 1
            assert _longest_run(mask) < 25, "a detector box drawn while the detector saw no face"
    assert with_face >= 20, f"only {with_face} frames had the detector's box drawn"
    assert without_face >= 5, "the scene had no empty stretch to check"


def test_metrics_pass_promtool(door):
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian's prometheus) is not installed")
    door.request("/video/cam/image", token="wrong")      # something to count
    # the first look starts reading the decisions' traces: the histogram fills from then on
    wait_for(lambda: b"iotrt_capture_to_decision_seconds_bucket{" in door.request("/metrics")[2],
             10, "the latency histogram")
    code, headers, body = door.request("/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    text = body.decode()
    for name in ("iotrt_node_state{", "iotrt_node_cpu_seconds_total{", "iotrt_node_restarts_total{",
                 "iotrt_node_resident_memory_bytes{", "iotrt_node_proportional_memory_bytes{",
                 "iotrt_node_published_messages_per_second{", "iotrt_node_dropped_messages_total{",
                 "iotrt_capture_to_decision_seconds_bucket{", "iotrt_web_unauthorized_requests_total "):
        assert name in text, f"{name} missing"
    assert 'iotrt_node_state{kind="detector",node="faces",state="running"} 1.0' in text
    # journal counters: the unlock rule fires within one 12 s cycle of the sim scene
    wait_for(lambda: door.metric('iotrt_rule_firings_total{rule="unlock_for_enrolled"}') >= 1,
             30, "an unlock rule firing counted")
    assert door.metric('iotrt_actuator_commands_total{node="lock",result="applied"}') >= 1


@pytest.mark.parametrize("path", ["/", "/api/status", "/api/live", "/video/cam/image", "/metrics",
                                  "/media/snapshots/x.jpg"])
def test_401_without_the_token(door, path):
    before = door.metric("iotrt_web_unauthorized_requests_total")
    assert door.request(path, token=None)[0] == 401
    assert door.request(path, token="not-the-token")[0] == 401
    assert door.request(path, token=None, headers={"Cookie": "iotrt_token=guess"})[0] == 401
    assert door.metric("iotrt_web_unauthorized_requests_total") == before + 3


def test_login_form_sets_the_cookie(door):
    code, headers, _ = door.request("/login", token=None, method="POST", body="token=wrong",
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert code == 401 and "Set-Cookie" not in headers
    code, headers, _ = door.request("/login", token=None, method="POST",
                                    body=urllib.parse.urlencode({"token": door.token}),
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert code == 303 and "HttpOnly" in headers["Set-Cookie"]
    cookie = headers["Set-Cookie"].split(";")[0]
    code, headers, body = door.request("/api/status", token=None, headers={"Cookie": cookie})
    assert code == 200 and json.loads(body)["graph"] == "door"
    assert "script-src 'self'" in headers["Content-Security-Policy"]


def test_media_route_serves_snapshots_and_refuses_traversal(door):
    shots = wait_for(lambda: [e for e in door.events(kind="command_applied", node="snapshot")
                              if e.fields["result"].get("path")], 40, "a visitor snapshot")
    name = Path(shots[-1].fields["result"]["path"]).name
    code, headers, body = door.request(f"/media/snapshots/{name}")
    assert code == 200 and headers["Content-Type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)
    snapdir = door.gdir / "snapshots"
    (snapdir / "link.jpg").symlink_to(door.gdir / "journal.db")
    secret = (door.gdir / "web.token").read_bytes()
    for path in ["/media/snapshots/../journal.db", "/media/snapshots/..%2Fjournal.db",
                 "/media/snapshots/%2e%2e/web.token", "/media/snapshots/..%2F..%2Fdoor%2Fweb.token",
                 "/media/snapshots/%2Fetc%2Fpasswd", "/media/snapshots//etc/passwd",
                 "/media/..%2Fweb.token/x", "/media/snapshots/link.jpg", "/media/snapshots/.",
                 "/media/snapshots/", "/media/nofolder/x.jpg"]:
        code, _, body = door.request(path)
        assert code == 404, (path, code)
        assert secret not in body and b"SQLite" not in body


def test_frames_only_while_somebody_watches(door):
    def video_taps():
        return [s for s in door.status()["subscribed"] if not s.startswith("latency:")]
    wait_for(lambda: video_taps() == [], 10, "no video subscription")
    encoded = door.metric("iotrt_web_video_frames_encoded_total")
    time.sleep(1.0)   # a window in which nothing may be encoded (nobody watches)
    assert door.metric("iotrt_web_video_frames_encoded_total") == encoded
    video = Mjpeg(door, "/video/cam/image?fps=2")
    try:
        video.frame()
        assert "video:cam/image" in video_taps() and "overlay:faces/detections" in video_taps()
    finally:
        video.close()
    wait_for(lambda: video_taps() == [], 10, "the subscriptions closed after the viewer left")


def _detector_rate(door: Door, seconds: float) -> float:
    with Subscriber(door.address("faces/detections"), queue=64) as sub:
        wait_for(lambda: sub.recv(0.5) is not None, 10, "detections")
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            if sub.recv(0.2) is not None:
                n += 1
        return n / (time.monotonic() - t0)


def test_fifty_clients_do_not_stall_the_graph(door):
    quiet = _detector_rate(door, 8)
    stop = threading.Event()
    counts: list[int] = []
    errors: list[str] = []

    def viewer(i: int):
        path = "/video/cam/image" if i % 2 == 0 else "/api/live"
        try:
            conn = http.client.HTTPConnection(door.host, door.port, timeout=20)
            conn.request("GET", path, headers={"Authorization": f"Bearer {door.token}"})
            resp = conn.getresponse()
            assert resp.status == 200, resp.status
            n = 0
            deadline = time.monotonic() + 30                    # bounded in time
            while not stop.is_set() and time.monotonic() < deadline:
                n += len(resp.fp.read1(65536))
            counts.append(n)
            resp.close()
            conn.close()
        except (OSError, AssertionError) as exc:
            errors.append(f"{path}: {exc!r}")

    threads = [threading.Thread(target=viewer, args=(i,), daemon=True) for i in range(50)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: door.metric("iotrt_web_video_viewers") == 25, 20, "25 video viewers")
        busy = _detector_rate(door, 8)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:5]
    assert len(counts) == 50 and min(counts) > 0
    assert busy >= 0.95 * quiet, f"detector {quiet:.1f}/s alone, {busy:.1f}/s with 50 clients"


def test_reload_reads_a_new_token(door):
    """A new token in web.token takes effect on `iotrt reload web`; the old one stops working."""
    old, new = door.token, "a-new-token-for-the-door-0123"
    (door.gdir / "web.token").write_text(new + "\n")
    done = subprocess.run([sys.executable, "-m", "iotrt", "reload", "web", "--graph", str(DOOR)],
                          env=door.up_env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    wait_for(lambda: door.request("/api/status", token=new)[0] == 200, 10, "the new token")
    door.token = new
    assert door.request("/api/status", token=old)[0] == 401


RETRY_GRAPH = """\
name: webretry
nodes:
  - id: bell
    kind: log
    process: observe
  - id: web
    kind: web
    process: observe
    params:
      port: ${WEB_PORT}
    critical: false
"""


def test_a_taken_port_keeps_the_process_up_and_is_retried(tmp_path):
    """In a process group, a web node that cannot serve must not take its companions down:
    it journals why, keeps running, and serves once the port is free."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    graph = tmp_path / "g.yaml"
    graph.write_text(RETRY_GRAPH)
    run_dir = Path(f"/tmp/iotrt-webr-{os.getpid()}")
    env = up_env(run_dir, tmp_path / "state")
    env["WEB_PORT"] = str(port)
    up = Up(graph, env, tmp_path / "up.log")
    journal = tmp_path / "state" / "webretry" / "journal.db"

    def events(kind):
        try:
            with JournalReader(journal) as j:
                return j.query(kind=kind)
        except JournalError:
            return []
    try:
        failed = wait_for(lambda: events("web_failed"), 60, "web_failed in the journal")
        assert f"127.0.0.1:{port}" in failed[0].fields["error"]
        up.wait_log("all 2 nodes up", 30)
        ctl = f"ipc://{run_dir / 'webretry' / 'ctl'}"
        rows = control.call(ctl, "ps")["nodes"]
        assert all(r["state"] == "running" and r["restarts"] == 0 for r in rows), rows
        holder.close()
        listening = wait_for(lambda: events("web_listening"), 30, "serving once the port is free")
        assert listening[0].fields["url"] == f"http://127.0.0.1:{port}/"
        assert len(events("web_failed")) == 1                 # said once, not every retry
        rows = control.call(ctl, "ps")["nodes"]
        assert all(r["restarts"] == 0 for r in rows), rows
    finally:
        holder.close()
        up.close()
        shutil.rmtree(run_dir, ignore_errors=True)
