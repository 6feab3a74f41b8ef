"""Webhook actuator against a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from iotrt.nodes.action.actuator import execute
from iotrt.nodes.action.webhook import Webhook


class Server:
    """Answers each request with the next status in `statuses` (then 200), recording them."""

    def __init__(self, statuses=(), delay_s: float = 0.0) -> None:
        self.statuses = list(statuses)
        self.requests: list[dict] = []
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.requests.append({"method": self.command, "path": self.path,
                                       "headers": dict(self.headers), "body": body})
                if delay_s:
                    outer.release.wait(delay_s)
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = do_GET = _handle

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(request):
    srv = Server(*getattr(request, "param", ()))
    yield srv
    srv.close()


def test_posts_the_command_as_json(server):
    hook = Webhook(server.url + "/door/{door}", headers={"X-Site": "home"}, token="s3cret")
    kind, ack = execute(hook, {"door": "front", "person": "ana"})
    assert kind == "command_applied" and ack == {"ok": True, "status": 200, "attempts": 1}
    (req,) = server.requests
    assert req["method"] == "POST" and req["path"] == "/door/front"
    assert json.loads(req["body"]) == {"door": "front", "person": "ana"}
    assert req["headers"]["Content-Type"] == "application/json"
    assert req["headers"]["X-Site"] == "home"
    assert req["headers"]["Authorization"] == "Bearer s3cret"


def test_body_field_is_sent_alone(server):
    execute(Webhook(server.url), {"body": {"text": "hello"}})
    assert json.loads(server.requests[0]["body"]) == {"text": "hello"}


@pytest.mark.parametrize("server", [([503, 502],)], indirect=True)
def test_retries_server_errors_with_backoff(server):
    waits = []
    hook = Webhook(server.url, retries=2, backoff_s=0.1, sleep=waits.append)
    kind, ack = execute(hook, {"x": 1})
    assert kind == "command_applied" and ack["attempts"] == 3
    assert waits == [0.1, 0.2] and len(server.requests) == 3


@pytest.mark.parametrize("server", [([404],)], indirect=True)
def test_client_errors_are_not_retried(server):
    kind, ack = execute(Webhook(server.url, retries=3, sleep=lambda s: None), {"x": 1})
    assert kind == "command_failed" and "HTTP 404" in ack["error"]
    assert "after 1 attempt" in ack["error"] and len(server.requests) == 1


@pytest.mark.parametrize("server", [((), 5.0)], indirect=True)
def test_timeout_fails_after_the_retries(server):
    hook = Webhook(server.url, timeout_s=0.1, retries=1, sleep=lambda s: None)
    kind, ack = execute(hook, {"x": 1})
    assert kind == "command_failed" and "after 2 attempt(s)" in ack["error"]
    assert "timed out" in ack["error"] and len(server.requests) == 2


def test_unreachable_and_bad_input():
    hook = Webhook("http://127.0.0.1:9/x", timeout_s=0.5, retries=0)
    kind, ack = execute(hook, {"x": 1})
    assert kind == "command_failed" and "Connection refused" in ack["error"]
    kind, ack = execute(Webhook("http://127.0.0.1:9/{who}"), {"x": 1})
    assert kind == "command_refused" and "needs the field 'who'" in ack["error"]
    with pytest.raises(ValueError, match="http:// or https://"):
        Webhook("ftp://example/x")


def test_url_fields_are_encoded(server):
    hook = Webhook(server.url + "/door/{door}?who={who}")
    execute(hook, {"door": "../admin", "who": "ana&role=admin"})
    assert server.requests[0]["path"] == "/door/..%2Fadmin?who=ana%26role%3Dadmin"
