"""The web node's metrics (iotrt.nodes.observe.webmetrics): the same Prometheus text as
prometheus_client's own Counter, Gauge and Histogram, and no prometheus_client (nor the ssl
and OpenSSL it imports) in the process until /metrics is scraped."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    enable_created_metrics,
    generate_latest,
)

from iotrt.nodes.observe import webmetrics

BOUNDS = (0.005, 0.01, 0.033, 1.0, 2.5)
OBSERVED = [("rules/decisions", 0.005), ("rules/decisions", 0.0051), ("rules/decisions", 0.0),
            ("rules/decisions", 3.0), ("other/decisions", 1.0), ("rules/decisions", 0.02)]


def test_the_text_is_prometheus_clients_own_for_the_same_counts():
    disable_created_metrics()
    try:
        reference = CollectorRegistry()
        hist = Histogram("lat_seconds", "Latency", ["topic"], buckets=BOUNDS, registry=reference)
        routes = Counter("reqs", "Requests", ["route"], registry=reference)
        Counter("refused", "Refused", registry=reference)
        Gauge("viewers", "Viewers", registry=reference).set_function(lambda: 3)
        for topic, x in OBSERVED:
            hist.labels(topic).observe(x)
        for route in ("page", "api", "page"):
            routes.labels(route).inc()
        expected = generate_latest(reference).decode()
    finally:
        enable_created_metrics()

    ours = webmetrics.Metrics()
    h = ours.add(webmetrics.Histogram("lat_seconds", "Latency", "topic", BOUNDS))
    r = ours.add(webmetrics.Count("reqs", "Requests", "route"))
    ours.add(webmetrics.Count("refused", "Refused"))
    ours.add(webmetrics.Gauge("viewers", "Viewers", lambda: 3))
    for topic, x in OBSERVED:
        h.observe(topic, x)
    for route in ("page", "api", "page"):
        r.inc(route)
    text, ctype = ours.exposition()
    assert sorted(text.decode().splitlines()) == sorted(expected.splitlines())
    assert ctype.startswith("text/plain")


def test_a_web_node_imports_prometheus_client_at_its_first_scrape_only():
    code = """
        from iotrt.lazy import defer_rarely_used
        defer_rarely_used()
        import sys
        from iotrt.nodes.observe import webserver
        from iotrt.nodes.observe.webmetrics import Count, Metrics
        m = Metrics()
        m.add(Count("iotrt_web_requests", "Requests", "route")).inc("page")
        loaded = lambda: sorted(n for n in ("prometheus_client", "_ssl") if n in sys.modules)
        print(loaded(), end=" ")
        text, _ = m.exposition()
        print(loaded(), text.decode().count('iotrt_web_requests_total{route="page"} 1.0'))
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] ['_ssl', 'prometheus_client'] 1"
