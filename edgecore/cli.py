"""Command line: `edgecore serve | demo | check-config | config | health | purge` (../shared/INTERFACE.md).

Owns: argument parsing and exit codes. Every serve option is also a config-file key and an
EDGECORE_<KEY> environment variable; precedence command line > environment > file > default (config.py).
Exit codes: 0 ok, 2 configuration or usage error, 1 runtime failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from . import __version__, config
from .errors import ConfigErrors


def _add_serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file")
    p.add_argument("--listen", metavar="HOST:PORT", help="proxy listener (default 127.0.0.1:8080)")
    p.add_argument(
        "--upstream",
        metavar="URL",
        action="append",
        help="origin server http://host:port; repeat for several",
    )
    p.add_argument("--admin", metavar="HOST:PORT", help="admin listener (default 127.0.0.1:9901)")
    p.add_argument("--workers", metavar="N", help="worker processes; 0 = one per CPU (default 1)")
    p.add_argument("--cache-size", metavar="SIZE", help="memory for cached objects (default 256MiB)")
    p.add_argument("--max-object-size", metavar="SIZE", help="larger responses are not cached (default 1MiB)")
    p.add_argument("--admin-token", metavar="TOKEN", help="Bearer token required by POST admin endpoints")
    p.add_argument("--grace-period", metavar="SECONDS", help="SIGTERM: time to finish in-flight requests")
    p.add_argument(
        "--drain-delay", metavar="SECONDS", help="SIGTERM: seconds of readiness 503 while still accepting"
    )
    p.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning, error")
    p.add_argument(
        "--cache-file",
        metavar="PATH",
        help="the cache's shared-memory file, kept across restarts: auto (default), none, or a path",
    )
    p.add_argument(
        "--upgrade-from",
        metavar="PATH",
        help="take over the listeners and cache of the edgecore with this control socket (CACHE_FILE.ctl)",
    )


def _cli_values(a: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for k in (
        "listen",
        "upstream",
        "admin",
        "workers",
        "cache_size",
        "max_object_size",
        "admin_token",
        "grace_period",
        "drain_delay",
        "log_level",
        "cache_file",
        "upgrade_from",
    ):
        v = getattr(a, k, None)
        if v is not None:
            out[k] = v
    return out


def _load(a: argparse.Namespace, require_upstream: bool = True) -> config.Config:
    try:
        return config.load(a.config, _cli_values(a), require_upstream=require_upstream)
    except ConfigErrors as e:
        for p in e.problems:
            print(f"edgecore: config error: {p.key}: {p.why}", file=sys.stderr)
        raise SystemExit(2)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )


def cmd_serve(a: argparse.Namespace) -> int:
    cfg = _load(a)
    _setup_logging(cfg.log_level)
    from .server import serve

    # a reload (SIGHUP, POST /reload) loads again exactly so: the file, the environment and these options
    cli_values = _cli_values(a)
    return serve(cfg, loader=lambda: config.load(a.config, cli_values))


def cmd_check_config(a: argparse.Namespace) -> int:
    """The file and the environment together, validated as `serve` would."""
    try:
        config.load(a.config, {})
    except ConfigErrors as e:
        for p in e.problems:
            print(f"{p.key}: {p.why}")
        return 2
    print(f"{a.config or 'environment'}: ok")
    return 0


def _tenant_table(p: config.TenantPolicy) -> str:
    parts = []
    if p.regions is not None:
        parts.append("regions = [" + ", ".join(json.dumps(r) for r in p.regions) + "]")
    if p.quota is not None:
        parts.append(f"quota = {p.quota}")
    if p.revoked:
        parts.append("revoked = true")
    return "{" + ", ".join(parts) + "}"


def _show(key: str, value: Any) -> str:
    if key == "admin_token":
        return '"****"' if value else '""'
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[1], int)
        and key in ("listen", "admin")
    ):
        return json.dumps(f"{value[0]}:{value[1]}")
    if key == "tenants":
        # [tenants.NAME] tables, shown as one inline TOML table
        return "{" + ", ".join(f"{json.dumps(n)} = {_tenant_table(p)}" for n, p in value) + "}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(key, v) for v in value) + "]"
    if isinstance(value, config.Upstream):
        return json.dumps(f"http://{value.authority}")
    if isinstance(value, config.RouteConfig):  # a [[routes]] table, inline: only the keys it gives
        given = [
            f"{f.name} = {_show(f.name, getattr(value, f.name))}"
            for f in dataclasses.fields(value)
            if getattr(value, f.name) != f.default
        ]
        return "{" + ", ".join(given) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def cmd_config(a: argparse.Namespace) -> int:
    """The effective configuration, one `key = value  # source` line each, admin_token masked."""
    path = a.config or os.environ.get("EDGECORE_CONFIG")
    try:
        file_values = config.read_file(path) if path else {}
        env_values = config.from_env(os.environ)
        cfg = config.build(file_values, env_values, {})
    except ConfigErrors as e:
        for p in e.problems:
            print(f"{p.key}: {p.why}")
        return 2
    src = config.sources(file_values, env_values, {})
    for k in config.KEYS:
        print(f"{k} = {_show(k, getattr(cfg, k))}  # {src[k]}")
    return 0


def cmd_health(a: argparse.Namespace) -> int:
    """GET /healthz on the configured admin address (--admin, else EDGECORE_ADMIN, else the default): exit 0
    when it answers 200, else 1 (the container HEALTHCHECK)."""
    try:
        host, port = config.parse_hostport(a.admin or os.environ.get("EDGECORE_ADMIN") or "127.0.0.1:9901")
    except ValueError as e:
        print(f"edgecore health: admin: {e}", file=sys.stderr)
        return 2
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1" if host != "::" else "::1"
    h = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{h}:{port}/healthz", timeout=a.timeout) as resp:
            ok = resp.status == 200
    except OSError as e:
        print(f"edgecore health: {h}:{port}: {e}", file=sys.stderr)
        return 1
    return 0 if ok else 1


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(serve_forever=a.serve, requests=a.requests)


def cmd_purge(a: argparse.Namespace) -> int:
    body: dict[str, Any] = {k: getattr(a, k) for k in ("url", "prefix", "tag") if getattr(a, k)}
    if len(body) > 1 or (not body and not a.tenant):
        print("edgecore purge: give exactly one of --url, --prefix, --tag, --tenant", file=sys.stderr)
        return 2
    if a.tenant:
        body["tenant"] = a.tenant  # alone: that tenant's entries; beside --url/--prefix/--tag: narrows them
    if a.soft:
        body["soft"] = True
    token = a.token or os.environ.get("EDGECORE_ADMIN_TOKEN", "")
    req = urllib.request.Request(
        f"http://{a.admin}/purge",
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            print(resp.read().decode().strip())
            return 0
    except urllib.error.HTTPError as e:
        print(f"edgecore purge: {e.code}: {e.read().decode().strip()}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"edgecore purge: cannot reach admin at {a.admin}: {e}", file=sys.stderr)
        return 1


def cmd_bench(args: list[str]) -> int:
    """`edgecore bench ...` is `python -m bench ...`: the harness lives in the repository, not the package."""
    sys.path.insert(0, os.getcwd())
    try:
        bench_cli = importlib.import_module("bench.cli")
    except ImportError:
        print(
            "edgecore bench: run it from the edgecore repository root (the bench/ folder is not installed);"
            " see bench/README.md",
            file=sys.stderr,
        )
        return 2
    rc: int = bench_cli.main(args)
    return rc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgecore", description="HTTP edge cache")
    p.add_argument("--version", action="version", version=f"edgecore {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the proxy in the foreground")
    _add_serve_options(s)
    s.set_defaults(func=cmd_serve)
    d = sub.add_parser("demo", help="demo origin + proxy on loopback, sample traffic, a summary")
    d.add_argument("--serve", action="store_true", help="keep both running after the summary")
    d.add_argument("--requests", type=int, default=2000, help="sample requests to send (default 2000)")
    d.set_defaults(func=cmd_demo)
    c = sub.add_parser("check-config", help="validate a config file with the environment, as serve would")
    c.add_argument("--config", metavar="FILE", help="default EDGECORE_CONFIG; none: the environment alone")
    c.set_defaults(func=cmd_check_config)
    e = sub.add_parser("config", help="print the effective configuration and each value's source")
    e.add_argument("--config", metavar="FILE")
    e.set_defaults(func=cmd_config)
    h = sub.add_parser("health", help="exit 0 when the admin listener's /healthz answers 200")
    h.add_argument("--admin", metavar="HOST:PORT", help="default EDGECORE_ADMIN, else 127.0.0.1:9901")
    h.add_argument("--timeout", type=float, default=2.0)
    h.set_defaults(func=cmd_health)
    g = sub.add_parser("purge", help="purge through the admin endpoint")
    g.add_argument("--admin", default="127.0.0.1:9901", metavar="HOST:PORT")
    g.add_argument("--token", help="admin token (or EDGECORE_ADMIN_TOKEN)")
    for k in ("url", "prefix", "tag", "tenant"):
        g.add_argument(f"--{k}")
    g.add_argument("--soft", action="store_true", help="mark stale (served stale while revalidated)")
    g.set_defaults(func=cmd_purge)
    sub.add_parser("bench", help="load benchmarks beside nginx and the Python ceiling (= python -m bench)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return cmd_bench(argv[1:])
    a = build_parser().parse_args(argv)
    rc: int = a.func(a)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
