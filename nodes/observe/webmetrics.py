"""The web node's own metrics: plain counters while it serves, Prometheus families at a scrape.

prometheus_client imports ssl (and through it OpenSSL), http.server's and wsgiref's helpers and
its own collectors: ~2.4 MB of the process's memory. A web node nobody scrapes never imports
it; the first GET /metrics does (`Metrics.families`, `exposition`).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Callable, Iterable


class Count:
    """A counter, by one label's value ("" when it has none); thread-safe."""

    def __init__(self, name: str, doc: str, label: str | None = None) -> None:
        self.name, self.doc, self.label = name, doc, label
        self._lock = threading.Lock()
        self.values: dict[str, int] = {} if label else {"": 0}

    def inc(self, value: str = "") -> None:
        with self._lock:
            self.values[value] = self.values.get(value, 0) + 1

    def family(self):
        from prometheus_client.core import CounterMetricFamily

        fam = CounterMetricFamily(self.name, self.doc, labels=[self.label] if self.label else None)
        with self._lock:
            for value, n in sorted(self.values.items()):
                fam.add_metric([value] if self.label else [], n)
        return fam


class Gauge:
    """A gauge read at each scrape."""

    def __init__(self, name: str, doc: str, read: Callable[[], float]) -> None:
        self.name, self.doc, self.read = name, doc, read

    def family(self):
        from prometheus_client.core import GaugeMetricFamily

        return GaugeMetricFamily(self.name, self.doc, value=self.read())


class Histogram:
    """Observations by one label's value, in cumulative buckets (Prometheus `le`: <= bound)."""

    def __init__(self, name: str, doc: str, label: str, bounds: Iterable[float]) -> None:
        self.name, self.doc, self.label = name, doc, label
        self.bounds = tuple(sorted(bounds))
        self._lock = threading.Lock()
        self.series: dict[str, tuple[list[int], list[float]]] = {}   # value -> (counts, [sum])

    def observe(self, value: str, x: float) -> None:
        with self._lock:
            counts, total = self.series.setdefault(value, ([0] * (len(self.bounds) + 1), [0.0]))
            counts[bisect_left(self.bounds, x)] += 1
            total[0] += x

    def family(self):
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        fam = HistogramMetricFamily(self.name, self.doc, labels=[self.label])
        with self._lock:
            for value, (counts, total) in sorted(self.series.items()):
                buckets, n = [], 0
                for bound, c in zip((*self.bounds, float("inf")), counts):
                    n += c
                    buckets.append((floatToGoString(bound), n))
                fam.add_metric([value], buckets, sum_value=total[0])
        return fam


class Metrics:
    """A registry of the above (and of collectors with `collect()`), exposed at a scrape."""

    def __init__(self) -> None:
        self.metrics: list[Count | Gauge | Histogram] = []
        self.collectors: list = []

    def add(self, metric):
        self.metrics.append(metric)
        return metric

    def collect(self):
        for m in self.metrics:
            yield m.family()

    def exposition(self) -> tuple[bytes, str]:
        """(the Prometheus text of every metric and collector, its content type)."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        for c in (self, *self.collectors):
            registry.register(c)
        return generate_latest(registry), CONTENT_TYPE_LATEST
