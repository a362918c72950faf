"""The deployment examples held to the real program (issue 12 point 6): the Grafana dashboard's queries name
only metrics and labels a running edgecore exposes, and the Kubernetes manifest's args, environment, config,
ports, probes, scrape annotations, grace period and memory agree with edgecore's own CLI and config loader."""

from __future__ import annotations

import json
import os
import re

import yaml
from client import ROOT, get

from edgecore import cli, config

DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "edgecore-dashboard.json")
MANIFEST = os.path.join(ROOT, "deploy", "kubernetes", "edgecore.yaml")
# labels Prometheus itself adds (instance, job) or a histogram's own (le)
SCRAPE_LABELS = {"instance", "job", "le"}


def _queries() -> list[str]:
    with open(DASHBOARD) as f:
        dash = json.load(f)
    out = []
    for p in dash["panels"]:
        out.extend(t["expr"] for t in p.get("targets", []))
    return out


def _exposed(edge) -> dict[str, set[str]]:
    """Every sample name /metrics exposes -> the label names it carries."""
    out: dict[str, set[str]] = {}
    for line in edge.admin("/metrics").body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? ", line)
        assert m, line
        labels = set(re.findall(r'([a-zA-Z_]\w*)="', m.group(2) or ""))
        out.setdefault(m.group(1), set()).update(labels)
    return out


def test_dashboard_queries_name_only_what_edgecore_exposes(edge, uniq):
    get(edge.port, f"{uniq}?cc=max-age=60")  # (label values exist either way; this makes the figures move)
    exposed = _exposed(edge)
    queries = _queries()
    assert len(queries) >= 20
    used: set[str] = set()
    for q in queries:
        names = set(re.findall(r"\bedgecore_[a-z_]+", q))
        assert names, q
        for n in names:
            assert n in exposed, f"{n} (in {q!r}) is not in /metrics"
            used.add(n)
        # every label the query groups by or selects on is one those metrics carry
        labels = set(re.findall(r"by \(([^)]*)\)", q))
        wanted = {x.strip() for group in labels for x in group.split(",")}
        wanted |= set(re.findall(r'[{,]\s*([a-z_]+)\s*=~?\s*"', q))
        have = set().union(*(exposed[n] for n in names)) | SCRAPE_LABELS
        assert wanted <= have, f"{q!r} uses labels {sorted(wanted - have)} its metrics do not carry"
    # the on-call essentials are on the dashboard
    for n in (
        "edgecore_requests_total",
        "edgecore_responses_total",
        "edgecore_request_duration_seconds_bucket",
        "edgecore_cache_decisions_total",
        "edgecore_cache_bytes",
        "edgecore_upstream_up",
        "edgecore_upstream_duration_seconds_bucket",
        "edgecore_worker_restarts_total",
        "edgecore_build_info",
    ):
        assert n in used, n


def _manifest() -> dict[str, dict]:
    with open(MANIFEST) as f:
        return {d["kind"]: d for d in yaml.safe_load_all(f)}


def _container() -> dict:
    return _manifest()["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def _effective(tmp_path) -> config.Config:
    """The config the pod would run: the ConfigMap's file and the container's environment, loaded by the real
    loader (`serve` loads exactly these layers)."""
    m = _manifest()
    c = _container()
    args = cli.build_parser().parse_args(c["args"])
    assert args.cmd == "serve"
    mount = next(v for v in c["volumeMounts"] if v["name"] == "config")["mountPath"]
    (name,) = m["ConfigMap"]["data"]
    assert args.config == f"{mount}/{name}"
    path = tmp_path / name
    path.write_text(m["ConfigMap"]["data"][name])
    env = {}
    for e in c["env"]:
        assert e["name"].startswith("EDGECORE_")
        assert e["name"][len("EDGECORE_") :].lower() in config.KEYS, e["name"]
        env[e["name"]] = e.get("value", "a-token-from-the-secret")
    return config.build(config.read_file(str(path)), config.from_env(env), cli._cli_values(args))


def test_kubernetes_config_validates_as_serve_would(tmp_path):
    cfg = _effective(tmp_path)
    assert cfg.admin_token  # the admin port listens on the pod IP: state-changing endpoints need the token
    assert cfg.upstream


def test_kubernetes_ports_probes_and_scrape_follow_the_config(tmp_path):
    cfg = _effective(tmp_path)
    m = _manifest()
    c = _container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == cfg.listen[1]
    assert ports["admin"] == cfg.admin[1]
    assert cfg.admin[0] == "0.0.0.0"  # the kubelet probes the pod IP
    for probe, path in (
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        assert c[probe]["httpGet"] == {"path": path, "port": "admin"}, probe
    ann = m["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == cfg.admin[1]
    assert ann["prometheus.io/path"] == "/metrics"
    svc = m["Service"]["spec"]["ports"]
    assert [p["targetPort"] for p in svc] == ["http"]  # the admin port stays out of the Service


def test_kubernetes_grace_period_covers_the_drain(tmp_path):
    cfg = _effective(tmp_path)
    spec = _manifest()["Deployment"]["spec"]["template"]["spec"]
    pre = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre[0] == "sleep"
    assert cfg.drain_delay > 0  # the process keeps accepting after SIGTERM (no refused connections)
    assert spec["terminationGracePeriodSeconds"] >= float(pre[1]) + cfg.drain_delay + cfg.grace_period + 2


def _quantity(q: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for u, f in units.items():
        if q.endswith(u):
            return int(q[: -len(u)]) * f
    return int(q)


def test_kubernetes_memory_holds_the_cache(tmp_path):
    cfg = _effective(tmp_path)
    limits = _container()["resources"]["limits"]
    assert _container()["resources"]["requests"]["memory"] == limits["memory"]  # (no overcommit of the cache)
    assert _quantity(limits["memory"]) >= cfg.cache_size + (256 << 20)
    # the workers' shared memory fits the /dev/shm volume
    shm = next(
        v for v in _manifest()["Deployment"]["spec"]["template"]["spec"]["volumes"] if v["name"] == "shm"
    )
    assert _quantity(shm["emptyDir"]["sizeLimit"]) >= cfg.cache_size
