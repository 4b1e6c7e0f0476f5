#!/usr/bin/env python3
"""Offline checks of fraudgraph's deployment files (deploy/check.sh runs this).

No container engine and no cluster: it parses and cross-checks what can be checked from
the files alone. `deploy/check.sh` renders the kustomize overlays first and runs promtool
on the rule files after; this script does everything in between:

  yaml        every *.yaml / *.yml under deploy/ parses (all documents)
  json        every *.json under deploy/ parses
  rules-sync  deploy/k8s/base/prometheusrule.yaml carries exactly the groups of
              deploy/prometheus/alerts.yaml (--sync-rules rewrites it)
  runbook     every alert has severity, summary, description and a runbook_url to its
              own section of docs/OPERATIONS.md
  schema      every rendered object validates, strictly (unknown fields fail), against
              the Kubernetes OpenAPI schemas bundled with kubernetes-validate for each
              --k8s-version; ServiceMonitor and PrometheusRule against the schemas in
              deploy/tools/schemas/; any other kind fails
  manifests   the rendered objects fit together: selectors, ports, probes, names with
              generated hash suffixes, per-pod Kafka group id, security context, and what
              each overlay must differ in (GPU resources, scheduling, image, device)
  config      the service's config.json files (and the rendered ConfigMaps) use only
              known keys and agree with the container's ports and volumes
  metrics     every fraudgraph_* series the alerts and the dashboard query is one the
              service registers (string literals in service/src), histogram suffixes
              included
  dashboard   the Grafana dashboard's structure; writes its queries as a rule file
              (--dashboard-rules-out) so promtool parses every one of them
  compose     deploy/compose.yaml: services, mounted files, ports, broker address
  dockerfile  deploy/docker/Dockerfile: targets, non-root user, baked artifact, rpath dir

Prints one line per check and a summary; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

GROUP = "monitoring.coreos.com"

TOPICS = {
    "transactions_topic": "fraudgraph.transactions.v1",
    "labels_topic": "fraudgraph.labels.v1",
    "dead_letter_topic": "fraudgraph.dead-letter.v1",
    "decisions_topic": "fraudgraph.decisions.v1",
}
GRPC_PORT = 50051
METRICS_PORT = 9100
# Series the rules may use that fraudgraph does not export.
EXTERNAL_SERIES = {"up", "kube_pod_container_resource_limits"}
EXPECTED_KINDS = {
    "Namespace": 1,
    "ServiceAccount": 1,
    "ConfigMap": 2,  # config + dashboard
    "Secret": 1,
    "Service": 2,  # fraudgraph + fraudgraph-headless
    "Deployment": 1,
    "PodDisruptionBudget": 1,
    "HorizontalPodAutoscaler": 1,
    "ServiceMonitor": 1,
    "PrometheusRule": 1,
}


class Failure(Exception):
    pass


def need(cond: bool, msg: str) -> None:
    if not cond:
        raise Failure(msg)


def load_yaml_docs(path: Path) -> list[Any]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# --- checks -----------------------------------------------------------------------------


def check_yaml(root: Path) -> str:
    files = sorted(p for ext in ("*.yaml", "*.yml") for p in (root / "deploy").rglob(ext))
    need(files, "no YAML files under deploy/")
    errors = []
    docs = 0
    for p in files:
        try:
            docs += len(load_yaml_docs(p))
        except yaml.YAMLError as e:
            errors.append(f"{p.relative_to(root)}: {e}")
    need(not errors, "; ".join(errors))
    return f"{len(files)} files, {docs} documents"


def check_json(root: Path) -> str:
    files = sorted((root / "deploy").rglob("*.json"))
    errors = []
    for p in files:
        try:
            json.loads(p.read_text())
        except json.JSONDecodeError as e:
            errors.append(f"{p.relative_to(root)}: {e}")
    need(not errors, "; ".join(errors))
    return f"{len(files)} files"


def prometheus_rule_doc(root: Path) -> dict:
    groups = load_yaml_docs(root / "deploy/prometheus/alerts.yaml")[0]["groups"]
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "fraudgraph",
            "labels": {
                "app.kubernetes.io/name": "fraudgraph",
                "app.kubernetes.io/part-of": "fraudgraph",
                "role": "alert-rules",
            },
        },
        "spec": {"groups": groups},
    }


PROMRULE_HEADER = """\
# GENERATED from deploy/prometheus/alerts.yaml by `deploy/check.sh --sync-rules`: edit that
# file, not this one (deploy/check.sh fails while they differ). The Prometheus Operator
# loads these rules; your Prometheus must select this object (kube-prometheus-stack: add
# the label its ruleSelector wants, e.g. `release: <helm release>`, in your overlay).
"""


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the PromQL) as literal blocks, so the file reads well."""


def _str_representer(dumper: yaml.SafeDumper, s: str) -> yaml.Node:
    style = "|" if "\n" in s else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)


_BlockDumper.add_representer(str, _str_representer)


def sync_rules(root: Path) -> None:
    out = root / "deploy/k8s/base/prometheusrule.yaml"
    text = PROMRULE_HEADER + yaml.dump(
        prometheus_rule_doc(root), Dumper=_BlockDumper, sort_keys=False, width=100, allow_unicode=True
    )
    out.write_text(text)
    print(f"wrote {out.relative_to(root)}")


def check_rules_sync(root: Path) -> str:
    path = root / "deploy/k8s/base/prometheusrule.yaml"
    need(path.exists(), f"{path.relative_to(root)} missing: run deploy/check.sh --sync-rules")
    have = load_yaml_docs(path)[0]
    want = prometheus_rule_doc(root)
    need(
        have.get("spec") == want["spec"],
        "deploy/k8s/base/prometheusrule.yaml differs from deploy/prometheus/alerts.yaml: "
        "run deploy/check.sh --sync-rules",
    )
    rules = sum(len(g["rules"]) for g in want["spec"]["groups"])
    return f"{rules} rules in both"


def check_runbook(root: Path) -> str:
    """Every alert links its own section of docs/OPERATIONS.md, and that section exists."""
    doc = (root / "docs/OPERATIONS.md").read_text()
    headings = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#{1,6} (.+)$", doc, flags=re.M)}
    groups = load_yaml_docs(root / "deploy/prometheus/alerts.yaml")[0]["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    problems = []
    for r in alerts:
        name = r["alert"]
        url = r.get("annotations", {}).get("runbook_url", "")
        if url != f"docs/OPERATIONS.md#{name.lower()}":
            problems.append(f"{name}: runbook_url {url!r}")
        if name.lower() not in headings:
            problems.append(f"{name}: no '### {name}' section in docs/OPERATIONS.md")
        if r.get("labels", {}).get("severity") not in ("critical", "warning"):
            problems.append(f"{name}: severity must be critical or warning")
        for key in ("summary", "description"):
            if not r.get("annotations", {}).get(key):
                problems.append(f"{name}: no {key} annotation")
    need(not problems, "; ".join(problems))
    return f"{len(alerts)} alerts, each with its runbook section"


def check_schema(rendered: dict[str, list[dict]], versions: list[str], root: Path) -> str:
    import jsonschema
    import kubernetes_validate

    own = {
        ("ServiceMonitor", f"{GROUP}/v1"): "servicemonitor-monitoring-v1.json",
        ("PrometheusRule", f"{GROUP}/v1"): "prometheusrule-monitoring-v1.json",
    }
    schemas = {
        key: json.loads((root / "deploy/tools/schemas" / name).read_text()) for key, name in own.items()
    }
    errors = []
    count = 0
    for overlay, docs in rendered.items():
        for doc in docs:
            name = f"{overlay}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            key = (doc.get("kind"), doc.get("apiVersion"))
            if key in schemas:
                v = jsonschema.Draft202012Validator(schemas[key])
                errs = sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))
                for e in errs:
                    path = ".".join(str(p) for p in e.absolute_path)
                    errors.append(f"{name}: {path}: {e.message}")
                count += 1
                continue
            for version in versions:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(str(p) for p in e.path)
                    errors.append(f"{name} (k8s {version}): {path}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    errors.append(f"{name}: no schema ({e.message}); add one or drop the object")
                count += 1
    need(not errors, "\n    ".join(errors))
    return f"{count} object validations (Kubernetes {', '.join(versions)}, strict)"


def by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def selector_matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check_manifests(overlay: str, docs: list[dict], root: Path) -> str:
    kinds = by_kind(docs)
    counts = {k: len(v) for k, v in kinds.items()}
    need(counts == EXPECTED_KINDS, f"objects by kind {counts}, expected {EXPECTED_KINDS}")
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    need(namespaces == {"fraudgraph"}, f"objects in namespaces {namespaces}, expected fraudgraph")

    dep = kinds["Deployment"][0]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    need(selector_matches(spec["selector"]["matchLabels"], pod_labels), "Deployment selector does not match its pod labels")
    need("replicas" not in spec, "Deployment sets replicas; the HPA owns the count")
    need(spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "rolling update must keep maxUnavailable 0")
    need(pod.get("terminationGracePeriodSeconds", 30) >= 60, "terminationGracePeriodSeconds below 60 s")
    need(pod.get("securityContext", {}).get("runAsNonRoot") is True, "pod must run as non-root")
    need(pod.get("automountServiceAccountToken") is False, "service account token must not be mounted")
    sa_names = {d["metadata"]["name"] for d in kinds["ServiceAccount"]}
    need(pod.get("serviceAccountName") in sa_names, "Deployment's service account is not rendered")

    containers = pod["containers"]
    need(len(containers) == 1, "expected one container")
    c = containers[0]
    sc = c.get("securityContext", {})
    need(sc.get("readOnlyRootFilesystem") is True, "container root filesystem must be read-only")
    need(sc.get("allowPrivilegeEscalation") is False, "privilege escalation must be off")
    need(sc.get("capabilities", {}).get("drop") == ["ALL"], "container must drop all capabilities")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    need(ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}, f"container ports {ports}")
    for probe in ("startupProbe", "readinessProbe"):
        need(c[probe].get("grpc", {}).get("port") == GRPC_PORT, f"{probe} must be a gRPC health probe on {GRPC_PORT}")
    need(c["livenessProbe"].get("httpGet", {}).get("port") == METRICS_PORT, "livenessProbe must ask the metrics port")
    env = [e["name"] for e in c["env"]]
    env_map = {e["name"]: e for e in c["env"]}
    need("POD_NAME" in env_map and env_map["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", "POD_NAME must come from metadata.name")
    gid = env_map.get("FRAUDGRAPH_KAFKA_GROUP_ID", {}).get("value", "")
    need("$(POD_NAME)" in gid, "FRAUDGRAPH_KAFKA_GROUP_ID must contain $(POD_NAME): one consumer group per replica")
    need(env.index("POD_NAME") < env.index("FRAUDGRAPH_KAFKA_GROUP_ID"), "POD_NAME must be defined before FRAUDGRAPH_KAFKA_GROUP_ID")
    res = c["resources"]
    need(res["requests"]["memory"] == res["limits"]["memory"], "memory request must equal the limit (the graph lives in memory)")
    need("cpu" not in res.get("limits", {}), "no CPU limit: throttling shows in the p99")

    # Volumes and the objects they name (generated names carry a hash suffix).
    cms = {d["metadata"]["name"]: d for d in kinds["ConfigMap"]}
    secrets = {d["metadata"]["name"]: d for d in kinds["Secret"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    need(set(vols) == set(mounts), f"volumes {sorted(vols)} vs mounts {sorted(mounts)}")
    cm_name = vols["config"]["configMap"]["name"]
    need(cm_name in cms and cm_name.startswith("fraudgraph-config-"), f"config volume names {cm_name}, not a rendered generated ConfigMap")
    tls_name = vols["tls"]["secret"]["secretName"]
    need(tls_name in secrets and secrets[tls_name]["type"] == "kubernetes.io/tls", f"tls volume names {tls_name}, not a rendered TLS Secret")
    need(set(secrets[tls_name]["data"]) == {"tls.crt", "tls.key"}, "TLS Secret must hold tls.crt and tls.key")
    need(mounts["config"]["mountPath"] == "/etc/fraudgraph/config.json" and mounts["config"].get("subPath") == "config.json", "config.json must be mounted at /etc/fraudgraph/config.json")
    need(c["args"] == ["serve", "--config", "/etc/fraudgraph/config.json"], f"container args {c['args']}")
    config = json.loads(cms[cm_name]["data"]["config.json"])
    check_config_doc(config, config_schema(root), f"{overlay} ConfigMap {cm_name}", replicated=True)
    snap_dir = str(Path(config["snapshot"]["path"]).parent)
    need(mounts["state"]["mountPath"] == snap_dir, f"snapshot.path {config['snapshot']['path']} is not on the state volume ({mounts['state']['mountPath']})")
    need(Path(config["tls"]["cert"]).parent == Path(mounts["tls"]["mountPath"]) if "tls" in config else True, "tls.cert is not on the tls volume")
    need(config["listen"].endswith(f":{GRPC_PORT}") and config["metrics_listen"].endswith(f":{METRICS_PORT}"), "config ports differ from the container ports")

    dash = [d for d in kinds["ConfigMap"] if d["metadata"]["name"] == "fraudgraph-dashboard"]
    need(dash and dash[0]["metadata"]["labels"].get("grafana_dashboard") == "1", "dashboard ConfigMap with label grafana_dashboard=1 missing")
    need(dash[0]["data"]["fraudgraph-dashboard.json"] == (root / "deploy/grafana/fraudgraph-dashboard.json").read_text(), "dashboard ConfigMap differs from deploy/grafana/fraudgraph-dashboard.json")

    # Services, PDB, HPA, ServiceMonitor select what they should.
    svcs = {d["metadata"]["name"]: d for d in kinds["Service"]}
    need(set(svcs) == {"fraudgraph", "fraudgraph-headless"}, f"services {sorted(svcs)}")
    for name, svc in svcs.items():
        need(selector_matches(svc["spec"]["selector"], pod_labels), f"Service {name} does not select the pods")
        for p in svc["spec"]["ports"]:
            need(p["targetPort"] in ports, f"Service {name} port {p['name']} targets unknown container port {p['targetPort']}")
    need(svcs["fraudgraph-headless"]["spec"].get("clusterIP") == "None", "fraudgraph-headless must be headless")
    pdb = kinds["PodDisruptionBudget"][0]
    need(selector_matches(pdb["spec"]["selector"]["matchLabels"], pod_labels), "PDB does not select the pods")
    hpa = kinds["HorizontalPodAutoscaler"][0]
    ref = hpa["spec"]["scaleTargetRef"]
    need(ref["kind"] == "Deployment" and ref["name"] == dep["metadata"]["name"], "HPA does not target the Deployment")
    need(2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"], "HPA needs minReplicas >= 2 (PDB maxUnavailable 1) and <= maxReplicas")
    sm = kinds["ServiceMonitor"][0]
    scraped = [n for n, s in svcs.items() if selector_matches(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    sm_ports = {e["port"] for e in sm["spec"]["endpoints"]}
    targets = [n for n in scraped if sm_ports & {p["name"] for p in svcs[n]["spec"]["ports"]}]
    need(targets == ["fraudgraph"], f"ServiceMonitor scrapes services {targets}, expected exactly ['fraudgraph']")
    need(sm["spec"]["endpoints"][0].get("path") == "/metrics", "ServiceMonitor path must be /metrics")

    # What the overlays differ in.
    image = c["image"]
    gpu_req = res.get("limits", {}).get("nvidia.com/gpu")
    tolerations = {t.get("key") for t in pod.get("tolerations", [])}
    if overlay == "gpu":
        need(str(gpu_req) == "1" and str(res["requests"].get("nvidia.com/gpu")) == "1", "GPU overlay must request and limit nvidia.com/gpu: 1")
        need(pod.get("nodeSelector"), "GPU overlay needs a nodeSelector")
        need("nvidia.com/gpu" in tolerations, "GPU overlay must tolerate the nvidia.com/gpu taint")
        need(image.endswith("-cuda"), f"GPU overlay image {image} is not a CUDA tag")
        need(config["device"] == "cuda", "GPU overlay config must use device cuda")
    elif overlay == "cpu":
        need(gpu_req is None and not pod.get("nodeSelector") and not tolerations, "CPU overlay must not ask for GPUs")
        need(image.endswith("-cpu"), f"CPU overlay image {image} is not a CPU tag")
        need(config["device"] == "cpu", "CPU overlay config must use device cpu")
    return f"{len(docs)} objects, image {image}"


RUST_SCALARS = {
    "String": str, "PathBuf": str, "SocketAddr": str, "bool": bool, "f64": (int, float),
    "f32": (int, float), "u8": int, "u16": int, "u32": int, "u64": int, "usize": int,
    "i8": int, "i16": int, "i32": int, "i64": int,
}


def config_schema(root: Path) -> dict:
    """The keys `fraudgraph serve --config` accepts, read from the service's own structs.

    The structs are serde `deny_unknown_fields`, so a key that is not a field makes the
    service refuse to start; this finds the fields of every `pub struct` in service/src and
    expands ServeConfig from there (a field whose type is another struct is a section).
    """
    structs: dict[str, dict[str, str]] = {}
    for p in sorted((root / "service/src").rglob("*.rs")):
        for m in re.finditer(r"pub struct (\w+) \{\n(.*?)\n\}", p.read_text(), flags=re.S):
            fields = dict(re.findall(r"^\s*pub (\w+): ([^\n]+),\s*$", m.group(2), flags=re.M))
            structs.setdefault(m.group(1), fields)
    need("ServeConfig" in structs, "pub struct ServeConfig not found in service/src")

    def expand(name: str, depth: int = 0) -> dict:
        out: dict[str, Any] = {}
        for field, ty in structs[name].items():
            ty = ty.strip()
            inner = re.fullmatch(r"Option<(.+)>", ty)
            ty = inner.group(1) if inner else ty
            if ty in structs and depth < 4:
                out[field] = expand(ty, depth + 1)
            else:
                out[field] = RUST_SCALARS.get(ty, object)
        return out

    return expand("ServeConfig")


def check_config_doc(config: dict, schema: dict, where: str, replicated: bool) -> None:
    def walk(obj: dict, sch: dict, path: str) -> None:
        need(isinstance(obj, dict), f"{where}: {path or 'config'} must be an object")
        for k, v in obj.items():
            need(k in sch, f"{where}: unknown key {path}{k} (the service refuses unknown fields)")
            want = sch[k]
            if isinstance(want, dict):
                walk(v, want, f"{path}{k}.")
            elif want is not object:
                ok = isinstance(v, want) and not (want is int and isinstance(v, bool))
                need(ok, f"{where}: {path}{k} has the wrong type: {v!r}")

    walk(config, schema, "")
    kafka = config.get("kafka", {})
    for key, topic in TOPICS.items():
        need(kafka.get(key, topic) == topic, f"{where}: kafka.{key} is {kafka.get(key)}, the contract says {topic}")
    need(config.get("device") in ("cpu", "cuda", "auto"), f"{where}: device {config.get('device')!r}")
    need(str(config.get("listen", "")).startswith("0.0.0.0:"), f"{where}: listen must be 0.0.0.0:PORT in a container (the default is 127.0.0.1)")
    need(str(config.get("metrics_listen", "")).startswith("0.0.0.0:"), f"{where}: metrics_listen must be 0.0.0.0:PORT in a container")
    need(config.get("snapshot", {}).get("path"), f"{where}: snapshot.path must be set (restarts replay the topics otherwise)")
    if replicated:
        need("group_id" not in kafka, f"{where}: kafka.group_id must come from the pod (FRAUDGRAPH_KAFKA_GROUP_ID), not be shared")
        need(kafka.get("score_on_ingest") is not True, f"{where}: score_on_ingest on replicated pods writes every decision once per replica")


def config_files(root: Path) -> list[tuple[Path, bool]]:
    """(file, replicated): the Kubernetes configs run in several replicas, compose's in one."""
    k8s = sorted((root / "deploy/k8s").rglob("config.json"))
    return [(p, True) for p in k8s] + [(root / "deploy/docker/compose-config.json", False)]


def check_configs(root: Path) -> str:
    schema = config_schema(root)
    files = config_files(root)
    need(len(files) >= 3, "expected deploy/k8s/base, overlays/gpu and deploy/docker configs")
    for p, replicated in files:
        check_config_doc(json.loads(p.read_text()), schema, str(p.relative_to(root)), replicated)
    return f"{len(files)} files against {sum(1 for _ in _leaves(schema))} fields of ServeConfig"


def _leaves(schema: dict):
    for v in schema.values():
        if isinstance(v, dict):
            yield from _leaves(v)
        else:
            yield v


SERIES_RE = re.compile(r"\b(fraudgraph_[a-z0-9_]+)\b")


def exported_metrics(root: Path) -> set[str]:
    names = set()
    for p in (root / "service/src").rglob("*.rs"):
        names.update(re.findall(r'"(fraudgraph_[a-z0-9_]+)"', p.read_text()))
    return names


def dashboard_exprs(root: Path) -> list[tuple[str, str]]:
    dash = json.loads((root / "deploy/grafana/fraudgraph-dashboard.json").read_text())
    out = []

    def panels(ps: list) -> None:
        for p in ps:
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))
            panels(p.get("panels", []))

    panels(dash["panels"])
    return out


def rule_exprs(root: Path) -> list[tuple[str, str]]:
    groups = load_yaml_docs(root / "deploy/prometheus/alerts.yaml")[0]["groups"]
    return [(r.get("alert") or r.get("record"), str(r["expr"])) for g in groups for r in g["rules"]]


def check_metrics(root: Path) -> str:
    exported = exported_metrics(root)
    need(exported, "no fraudgraph_* metric names found in service/src (metrics moved?)")
    allowed = set(exported)
    for n in exported:
        allowed.update({f"{n}_bucket", f"{n}_sum", f"{n}_count"})
    used: dict[str, set[str]] = {}
    for where, expr in rule_exprs(root) + dashboard_exprs(root):
        for name in SERIES_RE.findall(expr):
            used.setdefault(name, set()).add(where)
        for m in re.findall(r"\b([a-z_]+)\{", expr):
            if not m.startswith("fraudgraph_") and m not in EXTERNAL_SERIES:
                raise Failure(f"{where}: queries {m}, which neither fraudgraph exports nor EXTERNAL_SERIES lists")
    unknown = {n: sorted(w) for n, w in used.items() if n not in allowed}
    need(not unknown, f"series not exported by the service: {unknown}")
    unused = sorted(exported - {re.sub(r"_(bucket|sum|count)$", "", n) for n in used} - set(used))
    note = f"; not charted or alerted: {', '.join(unused)}" if unused else ""
    return f"{len(used)} series used, all among {len(exported)} exported{note}"


def check_dashboard(root: Path, rules_out: Path | None) -> str:
    dash = json.loads((root / "deploy/grafana/fraudgraph-dashboard.json").read_text())
    for key in ("uid", "title", "panels", "templating", "schemaVersion"):
        need(key in dash, f"dashboard lacks {key}")
    ids = []
    n_targets = 0
    for p in dash["panels"]:
        ids.append(p["id"])
        g = p["gridPos"]
        need(0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, f"panel {p['title']}: gridPos {g}")
        if p["type"] == "row":
            continue
        need(p.get("datasource", {}).get("uid") == "${datasource}", f"panel {p['title']} must use the $datasource variable")
        refs = [t["refId"] for t in p["targets"]]
        need(p["targets"] and len(refs) == len(set(refs)), f"panel {p['title']}: targets / refIds")
        for t in p["targets"]:
            need(t.get("expr"), f"panel {p['title']}: target {t['refId']} without expr")
            n_targets += 1
    need(len(ids) == len(set(ids)), "duplicate panel ids")
    variables = {v["name"] for v in dash["templating"]["list"]}
    need({"datasource", "job", "instance"} <= variables, f"template variables {variables}")
    # Every alert's subject has a panel: the series each alert is about appear in the dashboard.
    charted = " ".join(e for _, e in dashboard_exprs(root))
    for series in ("fraudgraph_rpc_duration_seconds_bucket", "fraudgraph_scores_total", "fraudgraph_kafka_lag_total",
                   "fraudgraph_inference_errors_total", "fraudgraph_graph_bytes", "fraudgraph_graph_watermark_seconds",
                   "fraudgraph_kafka_paused", "fraudgraph_kafka_dead_lettered_total", "fraudgraph_snapshots_total",
                   "fraudgraph_ready"):
        need(series in charted, f"no dashboard panel charts {series}")
    if rules_out:
        subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$job": ".*", "$instance": ".*"}
        rules = []
        for i, (title, expr) in enumerate(dashboard_exprs(root)):
            for k, v in subst.items():
                expr = expr.replace(k, v)
            need("$" not in expr, f"panel {title}: unsubstituted variable in {expr}")
            rules.append({"record": f"dashboard:panel_{i}", "expr": expr})
        rules_out.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    return f"{len(ids)} panels, {n_targets} queries"


def check_compose(root: Path) -> str:
    path = root / "deploy/compose.yaml"
    compose = load_yaml_docs(path)[0]
    services = compose["services"]
    need({"kafka", "fraudgraph", "prometheus", "grafana"} <= set(services), f"services {sorted(services)}")
    mounted = 0
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith((".", "/")):
                need((path.parent / src).exists(), f"service {name} mounts {src}, which does not exist")
                mounted += 1
        build = svc.get("build")
        if build:
            ctx = (path.parent / build["context"]).resolve()
            need((ctx / build["dockerfile"]).exists(), f"service {name}: {build['dockerfile']} not found from {ctx}")
    kafka_env = services["kafka"]["environment"]
    need("controller" in kafka_env["KAFKA_PROCESS_ROLES"], "kafka must run KRaft (process.roles with controller)")
    internal = [l for l in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",") if "//kafka:" in l]
    need(internal, "kafka must advertise a listener at kafka:PORT for the other containers")
    broker = internal[0].split("//")[1]
    cmd = services["fraudgraph"]["command"]
    need(cmd[0] == "serve" and "--kafka-brokers" in cmd and cmd[cmd.index("--kafka-brokers") + 1] == broker, f"fraudgraph must serve with --kafka-brokers {broker}")
    prom = load_yaml_docs(root / "deploy/prometheus/prometheus.yml")[0]
    targets = [t for sc in prom["scrape_configs"] if sc["job_name"] == "fraudgraph" for s in sc["static_configs"] for t in s["targets"]]
    need(targets == [f"fraudgraph:{METRICS_PORT}"], f"prometheus.yml scrapes {targets}")
    return f"{len(services)} services, {mounted} bind mounts present, broker {broker}"


def check_dockerfile(root: Path) -> str:
    text = (root / "deploy/docker/Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.M | re.I)
    need({"cpu", "cuda"} <= set(stages), f"Dockerfile stages {stages}: need cpu and cuda targets")
    need(stages[-1] == "cpu", "the last stage (the default target) should be cpu")
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    need(users and all(u.split(":")[0].isdigit() and u.split(":")[0] != "0" for u in users), f"USER {users}: numeric and not root, so runAsNonRoot can verify it")
    need(re.search(r"^COPY\s+.*models/artifacts/default\s+/opt/fraudgraph/models/default", text, flags=re.M) or "ARTIFACT_DIR" in text, "the default artifact must be baked in at /opt/fraudgraph/models/default")
    torch_lib = re.search(r"^ARG\s+TORCH_LIB=(\S+)", text, flags=re.M)
    need(torch_lib, "ARG TORCH_LIB (the libtorch dir the binary's rpath names) missing")
    for index in ("https://download.pytorch.org/whl/cpu", "https://download.pytorch.org/whl/cu130"):
        need(index in text, f"torch index {index} not used")
    need("torch==${TORCH_VERSION}" in text and re.search(r"^ARG\s+TORCH_VERSION=2\.11\.0$", text, flags=re.M), "torch must be pinned to 2.11.0")
    ignore = root / "deploy/docker/Dockerfile.dockerignore"
    need(ignore.exists() and "target" in ignore.read_text(), "deploy/docker/Dockerfile.dockerignore must exclude target/")
    return f"stages {', '.join(stages)}; user {users[-1]}"


def _normalize(obj: Any) -> Any:
    """One kustomize's output in a form another's can be compared with: generated-name
    hashes (different algorithms across versions), base64 line wrapping, empty maps and the
    order of named list items do not count."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "data" and isinstance(v, dict) and obj.get("kind") == "Secret":
                import base64

                v = {dk: base64.b64decode("".join(str(dv).split())).decode("utf-8", "replace") for dk, dv in v.items()}
            v = _normalize(v)
            if v == {}:
                continue
            out[k] = v
        return out
    if isinstance(obj, list):
        items = [_normalize(v) for v in obj]
        if items and all(isinstance(i, dict) and "name" in i for i in items):
            items.sort(key=lambda i: str(i["name"]))
        return items
    if isinstance(obj, str):
        return re.sub(r"\b(fraudgraph-(?:config|tls))-[a-z0-9]{10}\b", r"\1-HASH", obj)
    return obj


def check_same_render(name: str, docs: list[dict], alt: list[dict]) -> str:
    key = lambda d: (d["kind"], _normalize(d["metadata"]["name"]))  # noqa: E731
    a = {key(d): _normalize(d) for d in docs}
    b = {key(d): _normalize(d) for d in alt}
    need(sorted(a) == sorted(b), f"objects differ: {sorted(set(a) ^ set(b))}")
    differ = [f"{k[0]}/{k[1]}" for k in a if a[k] != b[k]]
    need(not differ, f"rendered differently: {differ}")
    return f"{len(a)} objects render the same"


# --- main -------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    ap.add_argument("--rendered", action="append", default=[], metavar="NAME=FILE", help="kustomize output of an overlay")
    ap.add_argument("--rendered-alt", action="append", default=[], metavar="NAME=FILE", help="the same overlay rendered by another kustomize, to compare")
    ap.add_argument("--k8s-version", action="append", default=[], help="Kubernetes version to validate against (repeatable)")
    ap.add_argument("--dashboard-rules-out", type=Path, help="write the dashboard's queries as a rule file for promtool")
    ap.add_argument("--sync-rules", action="store_true", help="rewrite deploy/k8s/base/prometheusrule.yaml and exit")
    args = ap.parse_args()
    root = args.root.resolve()

    if args.sync_rules:
        sync_rules(root)
        return 0

    rendered: dict[str, list[dict]] = {}
    for item in args.rendered:
        name, _, file = item.partition("=")
        rendered[name] = load_yaml_docs(Path(file))

    alt: dict[str, list[dict]] = {}
    for item in args.rendered_alt:
        name, _, file = item.partition("=")
        alt[name] = load_yaml_docs(Path(file))

    checks: list[tuple[str, Callable[[], str]]] = [
        ("yaml", lambda: check_yaml(root)),
        ("json", lambda: check_json(root)),
        ("rules-sync", lambda: check_rules_sync(root)),
        ("runbook", lambda: check_runbook(root)),
        ("config", lambda: check_configs(root)),
        ("metrics", lambda: check_metrics(root)),
        ("dashboard", lambda: check_dashboard(root, args.dashboard_rules_out)),
        ("compose", lambda: check_compose(root)),
        ("dockerfile", lambda: check_dockerfile(root)),
    ]
    if rendered:
        checks.append(("schema", lambda: check_schema(rendered, args.k8s_version or ["1.29"], root)))
        for name, docs in rendered.items():
            checks.append((f"manifests[{name}]", lambda name=name, docs=docs: check_manifests(name, docs, root)))
    for name, docs in alt.items():
        checks.append((f"same-render[{name}]", lambda name=name, docs=docs: check_same_render(name, rendered[name], docs)))

    passed = failed = 0
    for name, fn in checks:
        try:
            detail = fn()
            print(f"  ok    {name}: {detail}")
            passed += 1
        except Failure as e:
            print(f"  FAIL  {name}: {e}")
            failed += 1
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, OSError) as e:
            print(f"  FAIL  {name}: unexpected structure: {type(e).__name__}: {e}")
            failed += 1
    print(f"deploycheck: {passed} of {passed + failed} checks ok" + (f", {failed} FAILED" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
