"""Every metric the Grafana dashboard and the Prometheus alert rules query is one meshsigner exports, with labels it
sets: the metric definitions are read from the prometheus_client calls in signer/, bridge/ and policies/."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from tests.helm.test_chart import CHART, render
from tests.support.processes import REPO

TARGET_LABELS = {"namespace", "service", "pod", "instance", "job", "container", "endpoint"}  # added by Prometheus
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "increase", "irate", "histogram_quantile", "time", "by", "without",
    "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "bool", "label_values", "offset", "topk",
    "abs", "clamp_min", "absent", "vector", "scalar", "delta", "deriv",
}  # fmt: skip
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def exported_metrics() -> dict[str, set[str]]:
    """Series name -> label names, from Counter/Gauge/Histogram/Summary(...) calls in the three packages."""
    series: dict[str, set[str]] = {}
    for package in ("signer", "bridge", "policies"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                    continue
                kind = node.func.id
                if kind not in ("Counter", "Gauge", "Histogram", "Summary") or not node.args:
                    continue
                name_node = node.args[0]
                if not (isinstance(name_node, ast.Constant) and isinstance(name_node.value, str)):
                    continue
                label_node = node.args[2] if len(node.args) > 2 else None
                for keyword in node.keywords:
                    if keyword.arg == "labelnames":
                        label_node = keyword.value
                labels: set[str] = set()
                if isinstance(label_node, ast.List | ast.Tuple):
                    labels = {str(item.value) for item in label_node.elts if isinstance(item, ast.Constant)}
                name = name_node.value
                if kind == "Counter":
                    base = name.removesuffix("_total")
                    series[base + "_total"] = labels
                elif kind in ("Histogram", "Summary"):
                    series[name + "_sum"] = series[name + "_count"] = labels
                    if kind == "Histogram":
                        series[name + "_bucket"] = labels | {"le"}
                else:
                    series[name] = labels
    return series


def problems(expr: str, exported: dict[str, set[str]]) -> list[str]:
    found = []
    used: set[str] = set()
    for name, matchers in _SELECTOR.findall(expr):
        if name not in exported:
            found.append(f"{name} is not exported")
            continue
        used.add(name)
        for label in _MATCHER.findall(matchers):
            if label not in exported[name] | TARGET_LABELS:
                found.append(f"{name} has no label {label}")
    grouping = [label.strip() for group in _GROUPING.findall(expr) for label in group.split(",")]
    grouping_labels = {label for label in grouping if label}
    known = set().union(*(exported[name] for name in used)) | TARGET_LABELS if used else TARGET_LABELS
    found += [f"grouping by unknown label {label}" for label in grouping_labels - known]
    # Whatever identifier is left must be a PromQL word: a bare metric name would escape the checks above.
    rest = _GROUPING.sub(" ", _SELECTOR.sub(" ", re.sub(r'"[^"]*"', " ", expr)))
    rest = re.sub(r"\[[^\]]*\]", " ", rest)
    for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rest):
        if word not in PROMQL_WORDS and word not in exported and not re.fullmatch(r"\d+[smhd]", word):
            found.append(f"unknown identifier {word}")
        elif word in exported:
            found.append(f"{word} is queried without a selector (no namespace/service scoping)")
    return found


def dashboard_queries() -> list[str]:
    dashboard = json.loads((CHART / "dashboards" / "meshsigner.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"])
            assert inner, variable["query"]
            metric = inner.group(1)
            queries.append(metric if "{" in metric else metric + "{}")
    return queries


def test_the_exported_metrics_are_found():
    exported = exported_metrics()
    assert {"meshsigner_csr_requests_total", "policy_reload_total"} <= set(exported)
    assert exported["meshsigner_csr_requests_total"] == {"code", "reason"}


def test_every_dashboard_query_uses_exported_metrics_and_labels():
    exported = exported_metrics()
    queries = dashboard_queries()
    assert len(queries) >= 14
    assert {query: problems(query, exported) for query in queries if problems(query, exported)} == {}


def test_every_alert_rule_uses_exported_metrics_and_labels(helm):
    exported = exported_metrics()
    docs = render(helm, "prometheusRule.enabled=true")
    (rule_doc,) = [doc for doc in docs if doc["kind"] == "PrometheusRule"]
    rules = [rule for group in rule_doc["spec"]["groups"] for rule in group["rules"]]
    assert len(rules) >= 6
    assert {rule["alert"]: problems(rule["expr"], exported) for rule in rules if problems(rule["expr"], exported)} == {}


def test_the_checker_catches_a_wrong_name_and_a_wrong_label():
    exported = exported_metrics()
    assert problems('rate(meshsigner_csr_request_total{code="OK"}[5m])', exported)
    assert problems('rate(meshsigner_csr_requests_total{outcome="OK"}[5m])', exported)
    assert problems("sum by (outcome) (rate(meshsigner_csr_requests_total{}[5m]))", exported)
    assert problems("rate(meshsigner_csr_requests_total[5m])", exported)
    assert not problems('sum by (code) (rate(meshsigner_csr_requests_total{code!="OK"}[5m]))', exported)


def test_the_dashboard_ships_in_the_configmap(helm):
    docs = render(helm, "dashboards.enabled=true")
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(configmap["data"]["meshsigner.json"])
    assert shipped == json.loads(Path(CHART / "dashboards" / "meshsigner.json").read_text())
