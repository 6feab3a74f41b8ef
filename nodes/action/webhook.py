"""HTTP webhook actuator: each command is sent as a JSON body to a URL (urllib, no extra package).

The command's fields are the JSON body (or its ``body`` field alone, if it has one). ``{name}``
placeholders in the URL are filled from the command's fields. A timeout or a 5xx answer is
retried with exponential backoff; a 4xx answer is not (the request itself is wrong). The ack
carries the HTTP status; a failure after the last attempt is acked ``ok: false`` and journaled as
``command_failed``.

The command's ack waits for the HTTP exchange, so the sender's ack timeout must cover
``attempts x timeout_s`` plus the backoff: keep both small, or give the sending rule a longer
command timeout.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable

from iotrt.node import Node, NodeSpec, Param
from iotrt.nodes.action.actuator import CommandRefused, DriverError, fill, secret, serve

SPEC = NodeSpec(
    doc="send each command as a JSON HTTP request to a URL, with timeout and retries",
    commands_in={"commands": "any map: the JSON body (or its 'body' field)"},
    params=[
        Param("url", str, doc="where to send; {field} placeholders come from the command"),
        Param("method", str, "POST", "HTTP method", choices=("POST", "PUT", "PATCH", "GET")),
        Param("headers", dict, {}, "extra HTTP headers"),
        Param("token_env", str, "", "environment variable holding a bearer token (keeps the "
                                    "secret out of the graph file)"),
        Param("timeout_s", float, 2.0, "per attempt", min=0.01),
        Param("retries", int, 1, "extra attempts after a timeout, connection error or 5xx",
              min=0),
        Param("backoff_s", float, 0.2, "wait before the first retry; doubles each time", min=0),
    ],
)


class Webhook:
    def __init__(self, url: str, method: str = "POST", headers: dict | None = None,
                 token: str = "", timeout_s: float = 2.0, retries: int = 1,
                 backoff_s: float = 0.2, sleep: Callable[[float], None] = time.sleep) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url {url!r} must start with http:// or https://")
        self.url, self.method = url, method
        self.headers = {"Content-Type": "application/json", "User-Agent": "iotrt-webhook",
                        **{str(k): str(v) for k, v in (headers or {}).items()}}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self._sleep = sleep

    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        # A value goes into the URL as one encoded piece: "a b/../admin" cannot change its path.
        url = fill(self.url, command, "url", escape=lambda v: urllib.parse.quote(v, safe=""))
        payload = command.get("body", command)
        try:
            body = json.dumps(payload, allow_nan=False).encode() if self.method != "GET" else None
        except (TypeError, ValueError) as exc:
            raise CommandRefused(f"the command cannot be sent as JSON: {exc}") from exc
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(url, data=body, method=self.method,
                                             headers=self.headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return {"status": response.status, "attempts": attempt + 1}
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code} {exc.reason}"
                if exc.code < 500:
                    break  # the request is wrong; sending it again will not help
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                problem = f"{type(reason).__name__}: {reason}"
        raise DriverError(f"{self.method} {url} failed after {attempt + 1} attempt(s): "
                          f"{problem}")

    def close(self) -> None:
        pass  # urllib keeps no connection open between commands


def main(node: Node) -> None:
    p = node.params
    serve(node, lambda: Webhook(p["url"], p["method"], p["headers"], secret(node, "token_env"),
                                p["timeout_s"], p["retries"], p["backoff_s"]))
