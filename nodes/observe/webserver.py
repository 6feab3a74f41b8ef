"""The web node's HTTP server: routes, the token check, TLS, and the bound on connections.

Routes (every one needs the token, as `Authorization: Bearer TOKEN` or the cookie the login
form sets, except /login, /static/* and, when asked for, /metrics):

    GET  /                      the page (static/index.html; it renders data with textContent)
    POST /login                 form field `token` -> cookie, 303 to /; GET /logout clears it
    GET  /api/status            nodes, topics, video and latency as JSON
    GET  /api/live              server-sent events: `status` every period, `event` per journal event
    GET  /video/<topic>?fps=N   MJPEG (multipart/x-mixed-replace) of an image topic, annotated
    GET  /media/<folder>/<file> a snapshot or clip from one of the media folders
    GET  /metrics               Prometheus text format (prometheus_client, imported then)

A wrong or missing token gets 401 and is counted (iotrt_web_unauthorized_requests_total).
Nothing from a message or the journal is ever put into HTML by the server: the page receives
JSON and the browser code inserts it as text. Security headers (CSP without inline script,
nosniff, no referrer, no framing) go on every response.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import mimetypes
import os
import queue
import re
import selectors
import shutil
import socket
import ssl
import stat
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from iotrt import wakeup
from iotrt.nodes.observe.webconfig import WebError
from iotrt.nodes.observe.webmetrics import Count, Gauge, Histogram, Metrics
from iotrt.nodes.observe.webstatus import Graph, GraphCollector, JournalTail, Status
from iotrt.nodes.observe.webtaps import Latency, Pacer, Taps, matching

STATIC = Path(__file__).with_name("static")
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css",
                "login.html": "text/html; charset=utf-8", "index.html": "text/html; charset=utf-8"}
COOKIE = "iotrt_token"
MAX_BODY = 4096                 # bytes of a login form
REQUEST_TIMEOUT_S = 20.0        # a client that sends or reads nothing this long is dropped
# A client gets this long for the TLS handshake, and again for each request (line, headers,
# body): one that trickles a header line every few seconds would otherwise hold a slot for
# ever, and max_clients of them lock the owner out.
REQUEST_DEADLINE_S = 10.0
MEDIA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
BOUNDARY = "iotrtframe"
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.033, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

log = logging.getLogger("iotrt.web")


class Web:
    """Everything the node serves; `start()` binds and serves, `close()` stops it all."""

    def __init__(self, params: dict, token: str, *, runtime_dir: str, state_dir: str,
                 media: dict[str, Path], log: logging.Logger,
                 on_death: Callable[[], None] = lambda: None) -> None:
        self.ssl = self._tls(params)       # first: a bad certificate leaves nothing to close
        self.params, self.token, self.media, self.log = params, token.encode(), media, log
        self.on_death = on_death
        self.died: list[str] = []          # threads of ours that ended with an exception
        self.registry = reg = Metrics()    # prometheus_client is imported by the first scrape
        self.graph = Graph(runtime_dir)
        self.unauthorized = reg.add(Count("iotrt_web_unauthorized_requests", "Requests refused "
                                          "for a missing or wrong token"))
        self.requests = reg.add(Count("iotrt_web_requests", "Requests served, by route",
                                      "route"))
        self.frames = reg.add(Count("iotrt_web_video_frames_encoded",
                                    "Annotated JPEG frames encoded"))
        self.refused = reg.add(Count("iotrt_web_connections_refused", "Connections refused "
                                     "because max_clients were being served"))
        histogram = reg.add(Histogram("iotrt_capture_to_decision_seconds", "Sensor capture to "
                                      "decision published, from the decisions' traces", "topic",
                                      LATENCY_BUCKETS))
        self.latency = Latency(histogram.observe)
        self.taps = Taps(self.graph.topics, max_fps=params["max_fps"],
                         quality=params["jpeg_quality"],
                         overlay_patterns=params["overlay_topics"],
                         latency_patterns=params["latency_topics"], idle_s=params["idle_s"],
                         latency=self.latency, on_frame=self.frames.inc, guard=self.guard)
        reg.add(Gauge("iotrt_web_video_viewers", "Live video clients connected",
                      lambda: self.taps.viewers))
        self.status = Status(self.graph, JournalTail(state_dir), params["status_period_s"],
                             self._extra, self.link_media, self.guard)
        reg.add(Gauge("iotrt_web_status_pages", "Status pages open (live)",
                      lambda: self.status.watchers))
        self.collector = GraphCollector(self.graph, JournalTail(state_dir))
        reg.collectors.append(self.collector)
        self.collector.journal.start_at_end()
        self.slots = threading.BoundedSemaphore(params["max_clients"])
        reg.add(Gauge("iotrt_web_connections", "Connections being served",
                      lambda: self.server.active if self.server else 0))
        self.server: _Server | None = None
        self._serving: threading.Thread | None = None

    @staticmethod
    def _tls(params: dict) -> ssl.SSLContext | None:
        cert, key = params["tls_cert"], params["tls_key"]
        if not cert and not key:
            return None
        if not (cert and key):
            raise WebError("web: TLS needs both tls_cert and tls_key")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise WebError(f"web: cannot load TLS certificate {cert} / key {key}: {exc}") from exc
        return ctx

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.ssl else 'http'}://{host}:{port}/"

    def start(self) -> None:
        host, port = self.params["host"], self.params["port"]
        try:
            self.server = _Server((host, port), _Handler, self)
        except OSError as exc:
            raise WebError(f"web: cannot serve on {host}:{port}: {exc.strerror or exc} (choose "
                           f"another port with the web node's `port` param)") from exc
        self.taps.start()
        self.status.start()
        self._serving = threading.Thread(target=self.guard(self.server.serve), name="web-http",
                                         daemon=True)
        self._serving.start()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            if self._serving is not None:
                self._serving.join(5)
            if self._serving is None or not self._serving.is_alive():
                self.server.close()     # else stuck serving: left to the process's exit
        self.taps.close()
        self.status.close()
        self.collector.journal.close()

    def guard(self, target: Callable[[], None]) -> Callable[[], None]:
        """`target` for a thread of ours: if it dies with an exception (a bug), say so and end
        the node, which then exits 1 and is restarted, rather than serve half a page."""
        def run() -> None:
            try:
                target()
            except BaseException:
                self.log.exception("web: thread %s died", threading.current_thread().name)
                self.died.append(threading.current_thread().name)
                self.on_death()
        return run

    def authorized(self, headers, cookies: dict[str, str]) -> bool:
        auth = headers.get("Authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else cookies.get(COOKIE, "")
        return hmac.compare_digest(given.encode(), self.token)

    def image_topics(self) -> list[str]:
        try:
            return matching(list(self.graph.topics()), self.params["image_topics"])
        except RuntimeError:   # ControlError: not known yet
            return []

    def _extra(self) -> dict[str, Any]:
        self.taps.touch()
        return {"images": self.image_topics(), "viewers": self.taps.viewers,
                "latency": self.latency.summary(), "max_fps": self.params["max_fps"],
                "media": sorted(self.media), "subscribed": self.taps.subscribed()}

    def link_media(self, event: dict) -> dict:
        """The event plus `media`: files of the media folders its fields name (a snapshot's
        path, a clip's), for the page to link to."""
        found: list[dict] = []
        folders = {name: os.path.realpath(p) for name, p in self.media.items()}

        def walk(v: Any, depth: int) -> None:
            if len(found) >= 4 or depth > 4:
                return
            if isinstance(v, str) and "/" in v and len(v) < 4096:
                parent, file = os.path.split(os.path.realpath(v))
                for name, folder in folders.items():
                    if parent == folder and MEDIA_NAME.match(file):
                        found.append({"folder": name, "file": file,
                                      "image": file.lower().endswith((".jpg", ".jpeg", ".png"))})
            elif isinstance(v, dict):
                for x in list(v.values())[:50]:
                    walk(x, depth + 1)
            elif isinstance(v, list):
                for x in v[:50]:
                    walk(x, depth + 1)

        walk(event.get("fields"), 0)
        return {**event, "media": found} if found else event

    def metrics(self) -> tuple[bytes, str]:
        self.taps.touch()
        return self.registry.exposition()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address, handler, web: Web) -> None:
        self.web = web
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)
        self.active = 0               # connections being served (for the gauge)
        self._count_lock = threading.Lock()
        self._stopping = False
        self._wake_r, self._wake_w = wakeup.pipe()

    def process_request(self, request, client_address) -> None:
        # Bounded: beyond max_clients a connection gets a short 503 at once, not a thread.
        if self.web.slots.acquire(blocking=False):
            with self._count_lock:
                self.active += 1
        else:
            self.web.refused.inc()
            try:
                request.setblocking(False)
                request.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\nRetry-After: 5\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            # ssl's handshake counts this as one deadline for the whole handshake
            request.settimeout(REQUEST_DEADLINE_S)
            if self.web.ssl is not None:    # handshake here, not in the accepting thread
                try:
                    request = self.web.ssl.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    log.debug("web: TLS handshake with %s failed: %s", client_address, exc)
                    request.close()
                    return
            super().process_request_thread(request, client_address)
        finally:
            with self._count_lock:
                self.active -= 1
            self.web.slots.release()

    def serve(self) -> None:
        """serve_forever() without its poll interval: sleeps until a connection or stop()."""
        with selectors.DefaultSelector() as sel:
            sel.register(self, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in sel.select():
                    if key.fileobj is self and not self._stopping:
                        self._handle_request_noblock()
                    elif key.fileobj == self._wake_r:
                        wakeup.drain(self._wake_r)

    def stop(self) -> None:
        """Make serve() return (from another thread); close() once it has."""
        self._stopping = True
        if self._wake_w >= 0:
            wakeup.wake(self._wake_w)

    def close(self) -> None:
        """The wakeup pipe and the listening socket, once serve() has returned or never ran:
        the pipe is not closed under serve(), nor written after it is closed (its fd number
        may belong to another file by then)."""
        if self._wake_r >= 0:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
            self.server_close()

    def handle_error(self, request, client_address) -> None:
        log.warning("web: error serving %s", client_address, exc_info=True)


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, each waiting at most REQUEST_TIMEOUT_S and, once `until` is set
    (a time.monotonic() value), no later than it: TimeoutError after that."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.until: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        timeout = REQUEST_TIMEOUT_S
        if self.until is not None:
            left = self.until - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the request took longer than {REQUEST_DEADLINE_S:g} s")
            timeout = min(timeout, left)
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv_into(buf)
        finally:    # what the handler then writes keeps the per-send timeout
            self.sock.settimeout(REQUEST_TIMEOUT_S)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "iotrt-web"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S

    def setup(self) -> None:
        super().setup()
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    # -- plumbing ---------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("web: %s " + format, self.client_address[0], *args)

    @property
    def web(self) -> Web:
        return self.server.web

    def _cookies(self) -> dict[str, str]:
        out = {}
        for part in self.headers.get("Cookie", "")[:4096].split(";"):
            k, _, v = part.strip().partition("=")
            out[k] = v
        return out

    def _send(self, code: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in {**HEADERS, **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj: Any, code: int = 200) -> None:
        self._send(code, json.dumps(obj, default=str).encode(), "application/json")

    def _error(self, code: int, text: str) -> None:
        self._send(code, (text + "\n").encode(), "text/plain; charset=utf-8")

    def _unauthorized(self) -> None:
        self.web.unauthorized.inc()
        wants_html = "text/html" in self.headers.get("Accept", "")
        if wants_html:
            self._send(401, (STATIC / "login.html").read_bytes(), STATIC_FILES["login.html"])
        else:
            self._send(401, b"a valid token is needed (Authorization: Bearer TOKEN)\n",
                       "text/plain; charset=utf-8", {"WWW-Authenticate": 'Bearer realm="iotrt"'})

    def _stream_headers(self, ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        for k, v in HEADERS.items():
            self.send_header(k, v)
        self.send_header("Connection", "close")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        self.close_connection = True

    # -- routes -----------------------------------------------------------------------------

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        query = urllib.parse.parse_qs(url.query, max_num_fields=8)
        if path.startswith("/static/"):
            return self._static(path[len("/static/"):])
        if path == "/metrics" and self.web.params["metrics_public"]:
            return self._metrics()
        if not self.web.authorized(self.headers, self._cookies()):
            return self._unauthorized()
        if path == "/metrics":
            return self._metrics()
        route = path.split("/")[1] or "page"
        self.web.requests.inc(route if route in ROUTES else "other")
        if path == "/":
            return self._static("index.html")
        if path == "/logout":
            return self._send(303, b"", "text/plain", {
                "Location": "/", "Set-Cookie": f"{COOKIE}=; Max-Age=0; Path=/; HttpOnly"})
        if path == "/api/status":
            return self._json(self.web.status.snapshot())
        if path == "/api/live":
            return self._live()
        if path.startswith("/video/"):
            return self._video(urllib.parse.unquote(path[len("/video/"):]), query)
        if path.startswith("/media/"):
            return self._media(path[len("/media/"):])
        self._error(404, "no such page")

    def do_POST(self) -> None:
        if self.path != "/login":
            return self._error(405, "only /login takes a POST")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._error(411, "Content-Length needed")
        if not 0 <= length <= MAX_BODY:
            return self._error(413, "login form too large")
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"),
                                     max_num_fields=4)
        given = (form.get("token") or [""])[0].strip()
        if not hmac.compare_digest(given.encode(), self.web.token):
            return self._unauthorized()
        secure = "; Secure" if self.web.ssl else ""
        self._send(303, b"", "text/plain", {
            "Location": "/",
            "Set-Cookie": f"{COOKIE}={given}; Path=/; HttpOnly; SameSite=Strict{secure}"})

    def _static(self, name: str) -> None:
        if name not in STATIC_FILES:
            return self._error(404, "no such file")
        self._send(200, (STATIC / name).read_bytes(), STATIC_FILES[name])

    def _metrics(self) -> None:
        self.web.requests.inc("metrics")
        self._send(200, *self.web.metrics())

    def _media(self, rest: str) -> None:
        """One file of a media folder: a plain name only, opened without following links."""
        folder_name, _, name = rest.partition("/")
        folder = self.web.media.get(urllib.parse.unquote(folder_name))
        name = urllib.parse.unquote(name)
        if folder is None or not MEDIA_NAME.match(name) or ".." in name:
            return self._error(404, "no such file")
        try:
            fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return self._error(404, "no such file")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return self._error(404, "no such file")
        with os.fdopen(fd, "rb") as f:
            ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(os.fstat(fd).st_size))
            if not ctype.startswith("image/"):     # a clip: download it, never render it
                self.send_header("Content-Disposition", f'attachment; filename="{name}"')
            for k, v in HEADERS.items():
                self.send_header(k, v)
            self.end_headers()
            shutil.copyfileobj(f, self.wfile, 1 << 16)   # a clip can be large: stream it

    def _live(self) -> None:
        self._stream_headers("text/event-stream")
        with self.web.status.watch() as q:
            self.wfile.write(b"retry: 2000\n\n")
            while self.web.status.watching(q):
                try:
                    kind, obj = q.get(timeout=15.0)
                except queue.Empty:   # keep the connection (and proxies) awake
                    self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
                    continue
                data = json.dumps(obj, default=str, separators=(",", ":"))
                self.wfile.write(f"event: {kind}\ndata: {data}\n\n".encode())
                self.wfile.flush()

    def _video(self, topic: str, query: dict) -> None:
        if topic not in self.web.image_topics():
            return self._error(404, f"no image topic {topic[:80]!r}")
        try:
            fps = float((query.get("fps") or [self.web.params["max_fps"]])[0])
        except ValueError:
            return self._error(400, "fps must be a number")
        if not fps > 0:
            return self._error(400, "fps must be > 0")
        fps = min(fps, self.web.params["max_fps"])
        period = 1.0 / fps
        self._stream_headers(f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        with self.web.taps.view(topic, fps) as feed:
            seq, pacer = 0, Pacer()
            while True:
                seq, jpeg = feed.wait(seq, timeout_s=10.0)
                if jpeg is None:
                    if feed.closed:
                        return
                    continue
                if not pacer.ready(time.monotonic(), period):
                    continue
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                 f"Content-Length: {len(jpeg)}\r\n\r\n".encode())
                self.wfile.write(jpeg)
                self.wfile.write(b"\r\n")
                self.wfile.flush()

    def handle_one_request(self) -> None:
        # Reading this request (or waiting for it on a kept-alive connection) has a deadline;
        # what a handler then writes (a stream) has only the per-send timeout.
        self._reader.until = time.monotonic() + REQUEST_DEADLINE_S
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True   # the client went away: nothing to answer
        except OSError as exc:             # ssl.SSLError is one; ssl is loaded only for TLS
            if self.web.ssl is None or not isinstance(exc, ssl.SSLError):
                raise
            self.close_connection = True


ROUTES = {"page", "logout", "api", "video", "media"}
