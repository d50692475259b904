"""What the monitoring tests read: metric families named by the rules and the dashboard,
and families (type, help, label names, bucket bounds) in a /metrics text."""

from __future__ import annotations

import json
import pathlib
import re
from dataclasses import dataclass, field

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "kubekv-rules.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"

# PromQL words that look like metric names
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
             "or", "unless", "offset", "inf", "nan", "le"}
# series Prometheus makes itself, not read from /metrics
_SYNTHETIC = {"up"}
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def rule_expressions() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def dashboard_expressions() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for p in dash["panels"]:
        out.extend(t["expr"] for t in p.get("targets", []))
    return out


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression as Prometheus runs it: Grafana's variables filled in."""
    return expr.replace("$__rate_interval", "1m").replace("$cluster", ".*")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (recording rules' names and `up` left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # label values, regexes
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text):
        name = m.group(1)
        if name.lower() in _KEYWORDS or ":" in name or name in _SYNTHETIC:
            continue
        names.add(name)
    return names


def families_used(names: set[str], types: dict[str, str]) -> set[str]:
    """Map sample names (x_bucket, x_count) to their histogram family when it is one."""
    out = set()
    for n in names:
        for suffix in _HISTOGRAM_SUFFIXES:
            base = n[: -len(suffix)]
            if n.endswith(suffix) and types.get(base) == "histogram":
                out.add(base)
                break
        else:
            out.add(n)
    return out


@dataclass
class Family:
    type: str
    help: str
    labels: set[str] = field(default_factory=set)
    buckets: list[str] = field(default_factory=list)  # le values of the first series


def parse_families(text: str) -> dict[str, Family]:
    """The exposition text's families (HELP, TYPE, label names, first series' buckets)."""
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.M))
    fams = {name: Family(typ, helps.get(name, ""))
            for name, typ in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)}
    first_series: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([\w:]+)(?:\{(.*)\})? \S+$", line)
        if m is None:
            continue
        sample, labels = m.group(1), m.group(2) or ""
        pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)
        fam = sample
        if sample not in fams:
            for suffix in _HISTOGRAM_SUFFIXES:
                if sample.endswith(suffix) and sample[: -len(suffix)] in fams:
                    fam = sample[: -len(suffix)]
        if fam not in fams:
            continue
        f = fams[fam]
        f.labels.update(k for k, _ in pairs if k != "le")
        if sample == fam + "_bucket":
            key = ",".join(f"{k}={v}" for k, v in pairs if k != "le")
            if first_series.setdefault(fam, key) == key:
                f.buckets.extend(v for k, v in pairs if k == "le")
    return fams
