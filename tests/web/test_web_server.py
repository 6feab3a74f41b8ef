"""The web node's server in this process, on real sockets, without a graph (the control socket
it asks is absent, which it must survive): the token, TLS, the connection bound, the login form,
the media route; and the pure pieces (overlay parsing of hostile messages, frame pacing, the
token file)."""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import shutil
import socket
import ssl
import stat
import subprocess

import numpy as np
import pytest
from helpers import wait_for

from iotrt.node import load_spec
from iotrt.nodes.observe.webconfig import WebError, load_token, media_dirs
from iotrt.nodes.observe.webserver import Web
from iotrt.nodes.observe.webtaps import MAX_BOXES, Pacer, annotate, parse_overlay

TOKEN = "a-test-token-0123456789"
LOG = logging.getLogger("test.web")


def params(**over) -> dict:
    return load_spec("iotrt.nodes.observe.web").validate_params({"port": 0, **over})


@pytest.fixture
def serve(tmp_path):
    webs: list[Web] = []

    def start(**over) -> Web:
        p = params(**over)
        web = Web(p, TOKEN, runtime_dir=str(tmp_path / "run"), state_dir=str(tmp_path),
                  media=media_dirs(p, str(tmp_path)), log=LOG)
        web.start()
        webs.append(web)
        return web
    yield start
    for w in webs:
        w.close()


def get(web: Web, path: str, token: str | None = TOKEN, method: str = "GET", body=None,
        headers: dict | None = None, context: ssl.SSLContext | None = None):
    host, port = web.server.server_address[:2]
    conn = (http.client.HTTPSConnection(host, port, timeout=10, context=context) if context
            else http.client.HTTPConnection(host, port, timeout=10))
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def test_token_everywhere_and_refusals_counted(serve):
    web = serve()
    for path in ("/", "/api/status", "/metrics", "/video/cam/image", "/media/snapshots/a.jpg"):
        assert get(web, path, token=None)[0] == 401
        assert get(web, path, token=TOKEN[:-1])[0] == 401
    code, headers, body = get(web, "/", token=None, headers={"Accept": "text/html"})
    assert code == 401 and b'name="token"' in body       # a browser gets the sign-in form
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert get(web, "/static/app.js", token=None)[0] == 200   # code only, no data
    assert get(web, "/static/../web.token", token=None)[0] == 404
    # without a supervisor the page still answers, and says why there is nothing to show
    code, _, body = get(web, "/api/status")
    assert code == 200 and json.loads(body)["ok"] is False
    metrics = get(web, "/metrics")[2].decode()
    assert "iotrt_web_unauthorized_requests_total 11.0" in metrics
    assert "iotrt_supervisor_up 0.0" in metrics


def test_metrics_public_when_asked(serve):
    web = serve(metrics_public=True)
    assert get(web, "/metrics", token=None)[0] == 200
    assert get(web, "/api/status", token=None)[0] == 401


def test_login_form(serve):
    web = serve()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert get(web, "/login", None, "POST", f"token={TOKEN}x", form)[0] == 401
    assert get(web, "/login", None, "POST", "token=" + "x" * 5000, form)[0] == 413
    code, headers, _ = get(web, "/login", None, "POST", f"token={TOKEN}", form)
    assert code == 303 and "SameSite=Strict" in headers["Set-Cookie"]
    assert "Secure" not in headers["Set-Cookie"]                      # plain http here
    cookie = headers["Set-Cookie"].split(";")[0]
    assert get(web, "/api/status", None, headers={"Cookie": cookie})[0] == 200


def test_media_route(serve, tmp_path):
    web = serve()
    snaps = tmp_path / "snapshots"
    snaps.mkdir()
    (snaps / "20260101T000000.000-visitor.jpg").write_bytes(b"\xff\xd8jpeg")
    (tmp_path / "secret.txt").write_text("secret")
    (snaps / "link.jpg").symlink_to(tmp_path / "secret.txt")
    (snaps / "sub").mkdir()
    clips = tmp_path / "clips"
    clips.mkdir()
    clip = os.urandom(3 << 20)
    (clips / "visitor.mcap").write_bytes(clip)
    code, headers, body = get(web, "/media/clips/visitor.mcap")
    assert code == 200 and body == clip                 # streamed, all of it
    assert headers["Content-Disposition"] == 'attachment; filename="visitor.mcap"'
    code, headers, body = get(web, "/media/snapshots/20260101T000000.000-visitor.jpg")
    assert code == 200 and body == b"\xff\xd8jpeg" and headers["Content-Type"] == "image/jpeg"
    for path in ("/media/snapshots/../secret.txt", "/media/snapshots/..%2Fsecret.txt",
                 "/media/snapshots/%2e%2e%2fsecret.txt", "/media/snapshots/link.jpg",
                 "/media/snapshots/sub", "/media/snapshots/", "/media/clips/x.mcap",
                 "/media/%2e%2e/secret.txt", "/media/snapshots/.hidden"):
        code, _, body = get(web, path)
        assert code == 404 and b"secret" not in body, path
    # an event naming a snapshot gets a link; a path elsewhere does not
    ev = {"id": 1, "kind": "command_applied", "node": "snapshot",
          "fields": {"result": {"path": str(snaps / "20260101T000000.000-visitor.jpg")},
                     "other": str(tmp_path / "secret.txt"), "up": str(snaps / ".." / "secret.txt")}}
    assert web.link_media(ev)["media"] == [
        {"folder": "snapshots", "file": "20260101T000000.000-visitor.jpg", "image": True}]


def test_connections_are_bounded(serve):
    web = serve(max_clients=2)
    host, port = web.server.server_address[:2]
    idle = [socket.create_connection((host, port)) for _ in range(2)]   # each holds a slot
    try:
        wait_for(lambda: web.server.active == 2, 5, "both slots taken")
        extra = socket.create_connection((host, port), timeout=5)
        assert extra.recv(100).startswith(b"HTTP/1.1 503")
        extra.close()
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: web.server.active == 0, 30, "the slots free again")
    assert get(web, "/api/status")[0] == 200
    assert "iotrt_web_connections_refused_total 1.0" in get(web, "/metrics")[2].decode()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificate")
def test_tls(serve, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    web = serve(tls_cert=str(cert), tls_key=str(key))
    assert web.url.startswith("https://127.0.0.1:")
    ctx = ssl.create_default_context(cafile=str(cert))
    assert get(web, "/api/status", token=None, context=ctx)[0] == 401
    code, headers, _ = get(web, "/login", None, "POST", f"token={TOKEN}",
                           {"Content-Type": "application/x-www-form-urlencoded"}, context=ctx)
    assert code == 303 and "Secure" in headers["Set-Cookie"]
    with pytest.raises(ssl.SSLError):           # an unverified certificate is refused by clients
        get(web, "/", context=ssl.create_default_context())
    # a plain-http client and a client that never finishes the handshake do not block others
    host, port = web.server.server_address[:2]
    stuck = socket.create_connection((host, port))
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        get(web, "/")
    assert get(web, "/api/status", context=ctx)[0] == 200
    stuck.close()
    with pytest.raises(WebError, match="both tls_cert and tls_key"):
        Web(params(tls_cert=str(cert)), TOKEN, runtime_dir="", state_dir=str(tmp_path),
            media={}, log=LOG)


def test_port_taken_is_one_clear_error(serve):
    web = serve()
    with pytest.raises(WebError, match="cannot serve on 127.0.0.1:.*port"):
        serve(port=web.server.server_address[1])


def test_token_file(tmp_path, caplog):
    p = params()
    with caplog.at_level(logging.WARNING):
        token = load_token(p, str(tmp_path), LOG)
    path = tmp_path / "web.token"
    assert len(token) >= 32 and path.read_text().strip() == token
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert token in caplog.text and str(path) in caplog.text        # printed once, on creation
    assert load_token(p, str(tmp_path), LOG) == token                # then read back
    assert load_token(params(token="from-the-graph-0123"), str(tmp_path), LOG) == "from-the-graph-0123"
    for bad in ("short", "sixteen chars but; a cookie breaker", "x" * 300):
        path.write_text(bad + "\n")
        with pytest.raises(WebError, match="16 to 256 characters"):
            load_token(p, str(tmp_path), LOG)
    with pytest.raises(WebError, match="token param"):
        load_token(params(token="has space 0123456789"), str(tmp_path), LOG)


@pytest.mark.parametrize("data", [
    None, 3, "boxes", [], {"boxes": "x"}, {"faces": {"a": 1}},
    {"boxes": [[float("nan"), 0, 1, 1], [0, 0, math.inf, 1], [2**64, 0, 1, 1], [1, 2, 3],
               ["1", 2, 3, 4], [True, 0, 1, 1], None, {"x": 1}]},
    {"faces": [None, 1, {"box": [1, 2, 3]}, {"box": [0, 0, 5, 5], "name": 12}]},
])
def test_hostile_overlays_draw_nothing_bad(data):
    boxes = parse_overlay(data)
    if boxes is not None:
        for b in boxes:
            assert all(-10_000 <= v <= 10_000 for v in (b.x1, b.y1, b.x2, b.y2))
            assert isinstance(b.label, str)
        frame = np.zeros((48, 64, 3), np.uint8)
        assert annotate(frame, [boxes]).shape == (48, 64, 3)


def test_overlays_are_bounded_and_named():
    many = parse_overlay({"boxes": [[0, 0, 10, 10]] * 10_000})
    assert len(many) == MAX_BOXES
    faces = parse_overlay({"faces": [{"box": [10, 20, 50, 50], "name": "<b>ø\u202e" * 20,
                                      "known": True}]})
    assert faces[0].known is True and len(faces[0].label) == 40
    img = annotate(np.zeros((60, 80, 3), np.uint8), [faces])
    assert img[17, 30].tolist() == [0, 200, 0]        # the enrolled colour (BGR), 3 px out


@pytest.mark.parametrize("source_fps, cap, expect", [(15, 10, 10), (30, 10, 10), (5, 5, 5),
                                                      (30, 2, 2), (10, 30, 10)])
def test_pacer_gives_the_capped_rate(source_fps, cap, expect):
    rng = np.random.default_rng(0)
    pacer, sent = Pacer(), 0
    t = 0.0
    while t < 20.0:
        if pacer.ready(t, 1.0 / cap):
            sent += 1
        t += 1.0 / source_fps + rng.uniform(-0.004, 0.004)   # jitter of a loaded machine
    assert abs(sent / 20.0 - expect) <= 0.3, sent / 20.0


class FakeGraph:
    """A supervisor's `ps` and `topics` replies, as the control socket gives them."""

    def ps(self) -> dict:
        me = os.getpid()
        return {"ok": True, "graph": "door", "nodes": [
            {"node": "cam", "kind": "camera", "state": "running", "pid": me, "restarts": 2,
             "process": "sensing",
             "in_per_s": 0.0, "out_per_s": 15.0, "drops": 0,
             "ports": {"in": {}, "out": {"image": {"msgs": 150}}}},
            {"node": "faces", "kind": "detector", "state": "backoff", "pid": None, "restarts": 0,
             "in_per_s": 14.0, "out_per_s": 14.0, "drops": 10,
             "ports": {"in": {"image": {"msgs": 140, "drops": 10, "bad": 0}},
                       "out": {"detections": {"msgs": "lots"}}}},
        ]}

    def table(self) -> dict:
        return {"cam/image": {"address": "ipc:///x", "subscribers": ["faces.image"]},
                "faces/detections": {"address": "ipc:///y", "subscribers": []}}


def test_collector_reads_ps_ports_and_the_journal(tmp_path, monkeypatch):
    from prometheus_client import CollectorRegistry, generate_latest

    from iotrt.journal import Journal
    from iotrt.nodes.observe import webstatus
    from iotrt.nodes.observe.webstatus import GraphCollector, JournalTail

    monkeypatch.setattr(webstatus, "MAX_SERIES", 20)     # fewer fsync'd writes to reach it

    journal = Journal(tmp_path / "journal.db")
    journal.write("rule_fired", "rules", {"rule": "before-the-web-node"})   # not counted
    collector = GraphCollector(FakeGraph(), JournalTail(str(tmp_path)))
    collector.journal.start_at_end()
    for _ in range(2):
        journal.write("rule_fired", "rules", {"rule": "unlock_for_enrolled"})
    journal.write("command_sent", "rules", {"rule": "unlock_for_enrolled", "output": "lock"})
    journal.write("command_failed", "rules", {"rule": "unlock_for_enrolled", "output": "lock",
                                              "error": "timeout"})
    journal.write("command_applied", "lock", {"id": "1", "result": {"ok": True}})
    journal.write("command_failed", "lock", {"id": "2", "result": {"ok": False}})
    for i in range(20 + 50):                    # a node journaling a new rule id every time
        journal.write("rule_fired", "rules", {"rule": f"r{i}" + "x" * 100})
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    lines = set(text.splitlines())
    for line in ['iotrt_supervisor_up 1.0',
                 'iotrt_node_state{kind="detector",node="faces",state="backoff"} 1.0',
                 'iotrt_node_state{kind="detector",node="faces",state="running"} 0.0',
                 'iotrt_node_restarts_total{node="cam"} 2.0',
                 'iotrt_node_dropped_messages_total{node="faces"} 10.0',
                 'iotrt_topic_messages_total{topic="cam/image"} 150.0',
                 'iotrt_topic_dropped_messages_total{subscriber="faces.image",topic="cam/image"} 10.0',
                 'iotrt_rule_firings_total{rule="unlock_for_enrolled"} 2.0',
                 'iotrt_rule_firings_total{rule="other"} 51.0',
                 'iotrt_rule_commands_total{output="lock",result="sent",rule="unlock_for_enrolled"} 1.0',
                 'iotrt_rule_commands_total{output="lock",result="failed",rule="unlock_for_enrolled"} 1.0',
                 'iotrt_actuator_commands_total{node="lock",result="applied"} 1.0',
                 'iotrt_actuator_commands_total{node="lock",result="failed"} 1.0']:
        assert line in lines, line
    assert "before-the-web-node" not in text and 'topic="faces/detections"' not in text
    assert max(len(v) for v in __import__("re").findall(r'rule="([^"]*)"', text)) <= 64
    assert any(line.startswith('iotrt_node_cpu_seconds_total{node="cam",process="sensing"}')
               for line in lines)                           # the process group's name
    assert not any(line.startswith('iotrt_node_cpu_seconds_total{node="faces"') for line in lines)
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                               capture_output=True)
        assert check.returncode == 0, check.stdout + check.stderr
    journal.close()
    collector.journal.close()


def test_a_dying_thread_ends_the_node(tmp_path, monkeypatch):
    """A bug in a thread of the node must not leave half a page running: it ends the node
    (which exits 1 and is restarted by the supervisor)."""
    from iotrt.nodes.observe.webtaps import Taps

    def broken(self, now):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(Taps, "_wanted", broken)
    stopped = []
    p = params()
    web = Web(p, TOKEN, runtime_dir=str(tmp_path), state_dir=str(tmp_path), media={}, log=LOG,
              on_death=lambda: stopped.append(True))
    web.start()
    try:
        web.taps.touch()                       # the taps thread recomputes its subscriptions
        wait_for(lambda: stopped, 10, "the node told to stop")
        assert web.died == ["web-taps"]
    finally:
        web.close()


def test_a_slow_client_is_cut_off_and_its_slot_frees(serve, monkeypatch):
    """Slowloris: clients that send a request line, then a header line now and then, each
    hold a slot; with every slot held the owner would get 503 for ever. A request has
    REQUEST_DEADLINE_S (shortened here) from its first byte to its end, not per read."""
    import select
    import time

    from iotrt.nodes.observe import webserver

    monkeypatch.setattr(webserver, "REQUEST_DEADLINE_S", 1.0, raising=False)
    web = serve(max_clients=2)
    host, port = web.server.server_address[:2]
    slow = [socket.create_connection((host, port)) for _ in range(2)]
    try:
        for s in slow:
            s.sendall(b"GET /api/status HTTP/1.1\r\n")
        wait_for(lambda: web.server.active == 2, 5, "both slots taken")
        open_ = set(slow)
        deadline = time.monotonic() + 15
        while open_ and time.monotonic() < deadline:
            for s in list(open_):
                try:
                    s.sendall(b"X-Slow: 1\r\n")       # always well within the per-read timeout
                except OSError:
                    open_.discard(s)
                    continue
                if select.select([s], [], [], 0)[0] and s.recv(1024) == b"":
                    open_.discard(s)                  # the server closed it
            select.select([], [], [], 0.2)            # the next header line, a little later
        assert not open_, "the slow clients still hold their slots"
        wait_for(lambda: web.server.active == 0, 5, "the slots free again")
        assert get(web, "/api/status")[0] == 200
    finally:
        for s in slow:
            s.close()


def test_a_stop_after_close_writes_into_no_file(tmp_path):
    """The server's wakeup pipe is closed once serving has ended, by close(), and never
    written after that: its own pipe (os.pipe, closed by the serving thread) took a late or
    repeated stop() to a closed fd number, which the next file opened reuses."""
    import selectors

    p = params()
    web = Web(p, TOKEN, runtime_dir=str(tmp_path / "run"), state_dir=str(tmp_path),
              media=media_dirs(p, str(tmp_path)), log=LOG)
    web.start()
    assert get(web, "/api/status")[0] == 200
    web.close()
    r, w = os.pipe()                   # reuses the numbers the server's pipe had, if freed
    try:
        web.server.stop()              # late: e.g. a close racing the server's own exit
        with selectors.DefaultSelector() as sel:
            sel.register(r, selectors.EVENT_READ)
            assert sel.select(0) == [], "stop() wrote into a pipe that is not the server's"
    finally:
        os.close(r)
        os.close(w)
