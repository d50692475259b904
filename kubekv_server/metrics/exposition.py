"""Prometheus metrics without a client library: counters, gauges and histograms with
labels, rendered in the text exposition format (0.0.4) as Go's client does (families
sorted by name, samples by label values)."""

from __future__ import annotations

import abc
import bisect
import math
import threading
from collections.abc import Callable, Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def exponential_buckets(start: float, factor: float, count: int) -> list[float]:
    """prometheus.ExponentialBuckets."""
    return [start * factor**i for i in range(count)]


def format_value(v: float) -> str:
    """Go's strconv.FormatFloat(v, 'g', -1, 64), as the exposition writes numbers."""
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    if v == int(v) and abs(v) < 1e21:
        return str(int(v))
    text = repr(v)
    if "e" in text:
        mant, exp = text.split("e")
        sign = "-" if exp.startswith("-") else "+"
        return f"{mant}e{sign}{exp.lstrip('+-').rjust(2, '0')}"
    return text


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Metric(abc.ABC):
    """A family: name, help, type and label names."""

    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labels)
        self._lock = threading.Lock()

    @abc.abstractmethod
    def samples(self) -> Iterable[str]:
        """The family's sample lines."""

    def render(self) -> str:
        """The family's text; empty when it has no series (Go's client leaves a labelled
        family out until a child exists, as etcd's peer families before any traffic)."""
        body = "".join(line + "\n" for line in self.samples())
        if not body:
            return ""
        return f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n" + body


class Counter(Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self.values: dict[tuple, float] = {} if labels else {(): 0.0}

    def inc(self, *labels: str, by: float = 1.0) -> None:
        with self._lock:
            self.values[labels] = self.values.get(labels, 0.0) + by

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def samples(self) -> Iterable[str]:
        for key in sorted(self.values):
            yield f"{self.name}{_labels(self.labelnames, key)} {format_value(self.values[key])}"


class Gauge(Metric):
    """A gauge set directly, or read from `fn` at scrape time (fn returns a number, or
    a list of (label values, number) for a labelled gauge)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (),
                 fn: Callable[[], object] | None = None) -> None:
        super().__init__(name, help_text, labels)
        self.fn = fn
        self.values: dict[tuple, float] = {}

    def set(self, value: float, *labels: str) -> None:
        self.values[labels] = value

    def samples(self) -> Iterable[str]:
        values = dict(self.values)
        if self.fn is not None:
            got = self.fn()
            if isinstance(got, list):
                values.update((tuple(k), v) for k, v in got)
            else:
                values[()] = got
        for key in sorted(values):
            yield f"{self.name}{_labels(self.labelnames, key)} {format_value(values[key])}"


class Histogram(Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float],
                 labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = list(buckets)
        self.series: dict[tuple, list] = {}  # labels -> [bucket counts, sum, count]
        if not labels:
            self.series[()] = [[0] * len(self.buckets), 0.0, 0]

    def observe(self, value: float, *labels: str) -> None:
        i = bisect.bisect_left(self.buckets, value)  # the first bound >= value
        with self._lock:
            s = self.series.get(labels)
            if s is None:
                s = self.series[labels] = [[0] * len(self.buckets), 0.0, 0]
            if i < len(self.buckets):
                s[0][i] += 1
            s[1] += value
            s[2] += 1

    def ensure(self, *labels: str) -> None:
        """Make a series exist (all zero) before its first observation."""
        with self._lock:
            self.series.setdefault(labels, [[0] * len(self.buckets), 0.0, 0])

    def samples(self) -> Iterable[str]:
        for key in sorted(self.series):
            counts, total, n = self.series[key]
            running = 0
            for bound, c in zip(self.buckets, counts, strict=True):
                running += c
                le = f'le="{format_value(bound)}"'
                yield f"{self.name}_bucket{_labels(self.labelnames, key, le)} {running}"
            inf = 'le="+Inf"'
            yield f"{self.name}_bucket{_labels(self.labelnames, key, inf)} {n}"
            yield f"{self.name}_sum{_labels(self.labelnames, key)} {format_value(total)}"
            yield f"{self.name}_count{_labels(self.labelnames, key)} {n}"


class Registry:
    def __init__(self) -> None:
        self.metrics: dict[str, Metric] = {}

    def add(self, metric: Metric) -> Metric:
        self.metrics[metric.name] = metric
        return metric

    def render(self) -> str:
        return "".join(self.metrics[name].render() for name in sorted(self.metrics))
