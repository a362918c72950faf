"""The command line: --version, `python -m edgecore`, and `edgecore demo` end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from client import path_env

from edgecore import __version__


def test_version():
    r = subprocess.run([sys.executable, "-m", "edgecore", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"edgecore {__version__}"


def test_demo_prints_a_summary(path):
    r = subprocess.run(
        [sys.executable, "-m", "edgecore", "demo", "--requests", "300"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **path_env(path)},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r"requests: 300\s+hits: (\d+)\s+misses: (\d+)\s+hit ratio: ([\d.]+)%", r.stdout)
    assert m, r.stdout
    hits, misses = int(m.group(1)), int(m.group(2))
    assert hits + misses == 300 and hits > misses
    assert re.search(r"latency: p50 [\d.]+ ms\s+p90 [\d.]+ ms\s+p99 [\d.]+ ms", r.stdout)


# -- issue 12 point 5: check-config with the environment, `edgecore config`, `edgecore health`


def _run(args, env=None, timeout=30):
    base = {
        k: v for k, v in os.environ.items() if not k.startswith("EDGECORE_") or k == "EDGECORE_NO_FASTPATH"
    }
    return subprocess.run(
        [sys.executable, "-m", "edgecore", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
    )


def test_check_config_validates_file_and_environment_together(tmp_path):
    f = tmp_path / "edge.toml"
    f.write_text('upstream = ["http://127.0.0.1:1"]\nworkers = 2\n')
    assert _run(["check-config", "--config", str(f)]).returncode == 0
    r = _run(["check-config", "--config", str(f)], {"EDGECORE_WORKERS": "1.5", "EDGECORE_LB": "random"})
    assert r.returncode == 2
    assert sorted(r.stdout.splitlines()) == [
        "lb: 'random' is not one of round_robin, least_request, consistent_hash",
        "workers: '1.5' is not an integer",
    ]
    # the environment alone (a container's config) validates too
    f.write_text("workers = 2\n")
    assert _run(["check-config", "--config", str(f)]).returncode == 2
    assert _run(["check-config", "--config", str(f)], {"EDGECORE_UPSTREAM": "http://o:80"}).returncode == 0
    r = _run(["check-config"], {"EDGECORE_UPSTREAM": "http://o:80", "EDGECORE_CACHE_SIZE": "big"})
    assert r.returncode == 2 and r.stdout.startswith("cache_size: ")
    assert (
        _run(["check-config"], {"EDGECORE_CONFIG": str(f), "EDGECORE_UPSTREAM": "http://o:80"}).returncode
        == 0
    )


def test_check_config_suggests_the_key_meant(tmp_path):
    f = tmp_path / "edge.toml"
    f.write_text('upstream = ["http://127.0.0.1:1"]\ncache-siz = "64MiB"\n')
    r = _run(["check-config", "--config", str(f)])
    assert r.returncode == 2 and r.stdout.strip() == "cache_siz: unknown key (did you mean 'cache_size'?)"


def test_config_prints_each_effective_value_with_its_source_and_masks_secrets(tmp_path):
    f = tmp_path / "edge.toml"
    f.write_text('upstream = ["http://127.0.0.1:1"]\nworkers = 3\nadmin_token = "hunter2"\n')
    r = _run(["config", "--config", str(f)], {"EDGECORE_WORKERS": "2", "EDGECORE_LB": "least_request"})
    assert r.returncode == 0, r.stdout + r.stderr
    lines = dict(line.split(" = ", 1) for line in r.stdout.splitlines())
    from edgecore import config

    assert list(lines) == list(config.KEYS)
    assert lines["workers"] == "2  # env" and lines["lb"] == '"least_request"  # env'
    assert lines["upstream"] == '["http://127.0.0.1:1"]  # file'
    assert lines["listen"] == '"127.0.0.1:8080"  # default'
    assert lines["admin_token"] == '"****"  # file' and "hunter2" not in r.stdout
    assert lines["drain_delay"] == "5.0  # default"
    # EDGECORE_CONFIG names the file as serve reads it
    r = _run(["config"], {"EDGECORE_CONFIG": str(f)})
    assert r.returncode == 0 and "workers = 3  # file" in r.stdout


def test_config_that_does_not_validate_exits_2_with_the_check_config_lines(tmp_path):
    f = tmp_path / "edge.toml"
    f.write_text('upstream = ["http://127.0.0.1:1"]\nworkers = 1.5\n')
    r = _run(["config", "--config", str(f)])
    c = _run(["check-config", "--config", str(f)])
    assert r.returncode == c.returncode == 2
    assert r.stdout == c.stdout == "workers: 1.5 is not an integer\n"


def test_health_follows_the_configured_admin_address(origin):
    from client import Edge, closed_port

    e = Edge(origin.url)
    try:
        assert _run(["health"], {"EDGECORE_ADMIN": f"0.0.0.0:{e.admin_port}"}).returncode == 0
        assert _run(["health", "--admin", f"127.0.0.1:{e.admin_port}"]).returncode == 0
        r = _run(["health"], {"EDGECORE_ADMIN": f"127.0.0.1:{closed_port()}"})
        assert r.returncode == 1 and "edgecore health" in r.stderr
    finally:
        e.stop()
