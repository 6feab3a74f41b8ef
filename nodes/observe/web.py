"""Web node: a status page, live annotated video, the journal live, and /metrics, behind a token.

    - id: web
      kind: web
      params: {port: 8080}            # http://127.0.0.1:8080/ ; the token is printed once

Data sources, all read-only: the supervisor's control socket (`ps`, `topics`) for the nodes and
the topics' addresses, the bus for frames, boxes and decision traces, and the journal for
events. Nothing costs when nobody looks: the node subscribes to a camera only while a video
client is connected (one JPEG encode per frame, shared by every viewer of that topic, at most
`max_fps`), polls the control socket and the journal only while a status page is open, and
reads the decision traces for the latency histogram only while somebody (a page or a
Prometheus scrape) looked within `idle_s`. Between those, its threads sleep on conditions.

Threads: the node's event loop (heartbeats, reloads, retries to serve), the HTTP server (one
thread per connection, at most `max_clients`), the bus taps (webtaps.Taps) and the status
watcher (webstatus.Status). Modules: webconfig.py (token file, media folders), webserver.py
(HTTP, token check, TLS), webtaps.py (bus subscriptions, annotation, JPEG), webstatus.py
(control socket, journal), webmetrics.py (/metrics), static/ (the page). Details: docs/web.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from iotrt.node import Node, NodeSpec, Param
from iotrt.nodes.observe.webconfig import TOKEN_FILE, WebError, load_token, media_dirs

if TYPE_CHECKING:
    from iotrt.nodes.observe.webserver import Web

SPEC = NodeSpec(
    doc="web page: status, live annotated video, journal, /metrics (token-protected)",
    params=[
        Param("host", str, "127.0.0.1", "address to serve on; another interface only if named"),
        Param("port", int, 8080, "TCP port (0: any free port, journaled as web_listening)",
              min=0, max=65535),
        Param("token", str, "", "access token (empty: read token_file, or generate it there)"),
        Param("token_file", str, "", "file holding the token (default: <state dir>/web.token)"),
        Param("metrics_public", bool, False, "serve /metrics without the token"),
        Param("tls_cert", str, "", "PEM certificate: serve https (needs tls_key)"),
        Param("tls_key", str, "", "PEM private key of tls_cert"),
        Param("max_fps", float, 10.0, "frame rate cap of the live video", min=0.1, max=60.0),
        Param("jpeg_quality", int, 75, "JPEG quality of the live video", min=10, max=100),
        Param("max_clients", int, 64, "connections served at once; more get 503", min=1,
              max=1024),
        Param("image_topics", list, ["*/image"], "topics offered as video (glob patterns)"),
        Param("overlay_topics", list, ["*/detections", "*/faces"],
              "topics whose boxes are drawn on the video (detector boxes, identity names)"),
        Param("latency_topics", list, ["*/decisions"],
              "topics whose traces give the capture -> decision latency histogram"),
        Param("media_dirs", dict, {}, "name -> folder of snapshots/clips the page may show "
                                      "(default: snapshots and clips in the state dir)"),
        Param("status_period_s", float, 1.0, "status page refresh period", min=0.1, max=60.0),
        Param("idle_s", float, 300.0, "stop reading decision traces after nobody looked for "
                                      "this long", min=1.0),
    ],
)

RETRY_S = 10.0            # between two tries to serve after a failure (port in use, ...)


def serve(node: Node, failure: str = "") -> tuple[Web | None, str]:
    """Start serving: (the server, ""), or (None, why not); the reason is logged and journaled
    when it differs from the previous `failure`."""
    from iotrt.nodes.observe.webserver import Web

    cfg = node.config
    web = None
    try:
        token = load_token(node.params, cfg.state_dir, node.log)
        web = Web(node.params, token, runtime_dir=cfg.runtime_dir, state_dir=cfg.state_dir,
                  media=media_dirs(node.params, cfg.state_dir), log=node.log, on_death=node.stop)
        web.start()
    except WebError as exc:
        if web is not None:
            web.close()
        if str(exc) != failure:
            node.log.error("%s; trying again every %g s", exc, RETRY_S)
            node.record("web_failed", error=str(exc))
        return None, str(exc)
    node.log.info("web: open %s (token in %s)", web.url,
                  "the graph's params" if node.params["token"] else
                  node.params["token_file"] or Path(cfg.state_dir or ".") / TOKEN_FILE)
    node.record("web_listening", url=web.url)
    return web, ""


def main(node: Node) -> None:
    # A port in use or a missing certificate does not end the node: in a process group that
    # would take its companions (clips, the Home Assistant bridge) down with it. It says why,
    # journals `web_failed`, and tries again every RETRY_S (or on `iotrt reload web`).
    web, failure = serve(node)
    if web is None:
        node.timer("retry", RETRY_S)
    node.ready()
    try:
        for event in node:      # heartbeats and reloads; the server runs in its own threads
            if web is None and (event.timer == "retry" or event.kind == "reload"):
                web, failure = serve(node, failure)
            elif web is not None and event.kind == "reload":   # a new token takes effect
                try:
                    web.token = load_token(node.params, node.config.state_dir, node.log).encode()
                except WebError as exc:
                    node.log.error("%s; keeping the token in use", exc)
    finally:
        if web is not None:
            web.close()
    if web is not None and web.died:
        raise SystemExit(1)   # a bug, logged where it happened: the supervisor restarts us
