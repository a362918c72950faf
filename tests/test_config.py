"""config.py: sizes, addresses, precedence (cli > env > file > default), errors naming key and reason."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgecore import config
from edgecore.errors import ConfigErrors


@pytest.mark.parametrize(
    "text, n",
    [
        ("64MiB", 64 << 20),
        ("2GiB", 2 << 30),
        ("1KiB", 1024),
        ("10KB", 10_000),
        ("3MB", 3_000_000),
        ("100", 100),
        ("5B", 5),
        (" 7 mib ", 7 << 20),
        (4096, 4096),
    ],
)
def test_parse_size(text, n):
    assert config.parse_size(text) == n


@pytest.mark.parametrize("bad", ["", "MiB", "1.5MiB", "-1", "12TB", True])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        config.parse_size(bad)


def test_precedence_cli_over_env_over_file():
    c = config.build(
        {"workers": 3, "cache_size": "1GiB", "upstream": ["http://a:1"]}, {"workers": "2"}, {"workers": "4"}
    )
    assert c.workers == 4 and c.cache_size == 1 << 30
    c = config.build({"workers": 3, "upstream": ["http://a:1"]}, {"workers": "2"}, {})
    assert c.workers == 2
    assert config.build({"upstream": ["http://a:1"]}).listen == ("127.0.0.1", 8080)


def test_env_layer_reads_edgecore_vars():
    env = config.from_env(
        {"EDGECORE_CACHE_SIZE": "8MiB", "EDGECORE_UPSTREAM": "http://h:81,http://i:82", "OTHER": "x"}
    )
    c = config.build({}, env, {})
    assert c.cache_size == 8 << 20
    assert [u.authority for u in c.upstream] == ["h:81", "i:82"]


def test_every_problem_names_its_key():
    with pytest.raises(ConfigErrors) as ei:
        config.build(
            {"workers": "many", "cache_size": "huge", "listen": "nope", "bogus": 1, "upstream": ["ftp://x"]}
        )
    keys = sorted(p.key for p in ei.value.problems)
    assert keys == ["bogus", "cache_size", "listen", "upstream", "workers"]
    assert all(p.why for p in ei.value.problems)


def test_cross_key_checks():
    with pytest.raises(ConfigErrors) as ei:
        config.build({"upstream": ["http://a:1"], "cache_size": "4MiB", "max_object_size": "2MiB"})
    assert [p.key for p in ei.value.problems] == ["max_object_size"]
    with pytest.raises(ConfigErrors) as ei:
        config.build({})
    assert [p.key for p in ei.value.problems] == ["upstream"]


def test_check_config_command(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('upstream = ["http://127.0.0.1:9000"]\ncache-size = "64MiB"\nworkers = 2\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('upstream = ["http://127.0.0.1:9000"]\ncache_size = "lots"\nworkers = -1\n')
    ok = subprocess.run(
        [sys.executable, "-m", "edgecore", "check-config", "--config", str(good)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0
    no = subprocess.run(
        [sys.executable, "-m", "edgecore", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
    )
    assert no.returncode == 2
    lines = no.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("cache_size: ") and lines[1].startswith("workers: ")
    broken = tmp_path / "broken.toml"
    broken.write_text("upstream = [")
    r = subprocess.run(
        [sys.executable, "-m", "edgecore", "check-config", "--config", str(broken)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stdout.startswith("config: ")


def test_serve_refuses_bad_config_with_exit_2():
    r = subprocess.run(
        [sys.executable, "-m", "edgecore", "serve", "--cache-size", "big"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "cache_size" in r.stderr and "upstream" in r.stderr


def test_serve_on_a_taken_admin_port_says_so_and_exits_2():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        port = s.getsockname()[1]
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgecore",
                "serve",
                "--upstream",
                "http://127.0.0.1:1",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        s.close()
    assert r.returncode == 2
    line = [x for x in r.stderr.splitlines() if "in use" in x]
    assert len(line) == 1 and f"admin address 127.0.0.1:{port} is already in use" in line[0], r.stderr


def test_security_keys():
    """issue 11: underscores_in_headers, max_request_line, cache_set_cookie, cache_client_errors."""
    cfg = config.build(
        {
            "upstream": ["http://a:1"],
            "underscores_in_headers": "true",
            "max_request_line": "4KiB",
            "cache_set_cookie": "strip",
            "cache_client_errors": "never",
        }
    )
    assert (cfg.underscores_in_headers, cfg.max_request_line) == (True, 4096)
    assert (cfg.cache_set_cookie, cfg.cache_client_errors) == ("strip", "never")
    d = config.build({"upstream": ["http://a:1"]})
    assert (d.underscores_in_headers, d.max_request_line) == (False, 8192)
    assert (d.cache_set_cookie, d.cache_client_errors) == ("pass", "explicit")
    with pytest.raises(ConfigErrors) as ei:
        config.build(
            {
                "upstream": ["http://a:1"],
                "cache_set_cookie": "keep",
                "cache_client_errors": "always",
                "max_request_line": "100B",
                "underscores_in_headers": "maybe",
            }
        )
    problems = {p.key: p.why for p in ei.value.problems}
    assert sorted(problems) == [
        "cache_client_errors",
        "cache_set_cookie",
        "max_request_line",
        "underscores_in_headers",
    ]
    assert "pass" in problems["cache_set_cookie"] and "explicit" in problems["cache_client_errors"]
    assert "256B" in problems["max_request_line"]


def test_upstream_tables_and_balancing_keys(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(
        'lb = "least_request"\nhealth_check_path = "/health"\nretry_budget = 0.5\n'
        '[[upstreams]]\nurl = "http://b:2"\nweight = 3\n[[upstreams]]\nurl = "http://c:3"\n'
    )
    c = config.load(str(f), {"upstream": ["http://a:1"]}, environ={"EDGECORE_MAX_FAILS": "4"})
    assert [(u.authority, u.weight) for u in c.upstream] == [("a:1", 1), ("b:2", 3), ("c:3", 1)]
    assert (c.lb, c.health_check_path, c.retry_budget, c.max_fails) == ("least_request", "/health", 0.5, 4)
    d = config.Config()
    assert (d.lb, d.retries, d.retry_budget, d.ready_requires_upstream) == ("round_robin", 1, 0.2, False)


@pytest.mark.parametrize(
    ("values", "key", "why"),
    [
        ({"upstreams": [{"url": "http://b:2", "weight": 0}]}, "upstreams", "weight"),
        ({"upstreams": [{"url": "http://b:2", "wieght": 2}]}, "upstreams", "unknown field"),
        ({"upstreams": [{"weight": 2}]}, "upstreams", "url"),
        ({"upstreams": "http://b:2"}, "upstreams", "tables"),
        ({"lb": "random"}, "lb", "round_robin"),
        ({"retry_budget": 1.5}, "retry_budget", "range"),
        ({"health_check_path": "health"}, "health_check_path", "starts with /"),
        ({"healthy_threshold": 0}, "healthy_threshold", "range"),
        ({"max_upstream_requests": 0}, "max_upstream_requests", "range"),
        ({"ready_requires_upstream": "maybe"}, "ready_requires_upstream", "boolean"),
        ({"upstreams": [{"url": "http://a:1"}]}, "upstream", "twice"),
    ],
)
def test_balancing_key_errors_name_the_key(values, key, why):
    with pytest.raises(ConfigErrors) as ei:
        config.build({"upstream": ["http://a:1"], **values})
    assert [p.key for p in ei.value.problems] == [key]
    assert why in ei.value.problems[0].why


# -- issue 12 point 5: integers, "did you mean", memory and CPUs of the machine or container


@pytest.mark.parametrize(
    "value, ok",
    [(1.5, False), ("1.5", False), (2.0, True), ("3", True), (0, True), (True, False), (-1, False)],
)
def test_workers_must_be_a_whole_number(value, ok):
    if ok:
        assert config.build({"workers": value, "upstream": ["http://a:1"]}).workers == int(value)
    else:
        with pytest.raises(ConfigErrors) as ei:
            config.build({"workers": value, "upstream": ["http://a:1"]})
        assert [p.key for p in ei.value.problems] == ["workers"]


@pytest.mark.parametrize(
    "key, hint",
    [("cache_siz", "cache_size"), ("grace_perod", "grace_period"), ("upstreem", "upstream"), ("zzz", None)],
)
def test_unknown_key_suggests_the_nearest(key, hint):
    with pytest.raises(ConfigErrors) as ei:
        config.build({key: 1, "upstream": ["http://a:1"]})
    (p,) = ei.value.problems
    assert p.key == key and p.why.startswith("unknown key")
    assert (f"did you mean {hint!r}" in p.why) if hint else "did you mean" not in p.why


def _tree(tmp_path, files):
    for rel, text in files.items():
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return str(tmp_path)


MEMINFO = "MemTotal:       24683652 kB\nMemFree:  1000 kB\n"


@pytest.mark.parametrize(
    "files, limit, what",
    [
        ({"proc/meminfo": MEMINFO}, 24683652 * 1024, "MemTotal"),
        # cgroup v2: the smallest memory.max on the process's path
        (
            {
                "proc/meminfo": MEMINFO,
                "proc/self/cgroup": "0::/a/b\n",
                "sys/fs/cgroup/a/b/memory.max": "max",
                "sys/fs/cgroup/a/memory.max": str(2 << 30),
            },
            2 << 30,
            "memory.max",
        ),
        ({"proc/meminfo": MEMINFO, "sys/fs/cgroup/memory.max": str(512 << 20)}, 512 << 20, "memory.max"),
        # cgroup v1: limit_in_bytes, "unlimited" (a huge number) ignored
        (
            {
                "proc/meminfo": MEMINFO,
                "proc/self/cgroup": "4:memory:/pod\n0::/\n",
                "sys/fs/cgroup/memory/pod/memory.limit_in_bytes": str(1 << 30),
                "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712",
            },
            1 << 30,
            "limit_in_bytes",
        ),
        (
            {"proc/meminfo": MEMINFO, "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712"},
            24683652 * 1024,
            "MemTotal",
        ),
        ({}, 0, ""),
    ],
)
def test_memory_limit(tmp_path, files, limit, what):
    n, where = config.memory_limit(_tree(tmp_path, files))
    assert n == limit and what in where


@pytest.mark.parametrize(
    "files, affinity, n",
    [
        ({}, 8, 8),
        ({"sys/fs/cgroup/cpu.max": "max 100000"}, 8, 8),
        ({"sys/fs/cgroup/cpu.max": "200000 100000"}, 8, 2),
        ({"sys/fs/cgroup/cpu.max": "150000 100000"}, 8, 2),  # 1.5 CPUs: rounded up
        ({"sys/fs/cgroup/cpu.max": "50000 100000"}, 8, 1),
        ({"sys/fs/cgroup/cpu.max": "400000 100000"}, 2, 2),  # the affinity mask is smaller
        (
            {"proc/self/cgroup": "0::/k/p\n", "sys/fs/cgroup/k/cpu.max": "300000 100000"},
            16,
            3,
        ),
        (
            {
                "proc/self/cgroup": "1:cpu,cpuacct:/d\n",
                "sys/fs/cgroup/cpu/d/cpu.cfs_quota_us": "200000",
                "sys/fs/cgroup/cpu/d/cpu.cfs_period_us": "100000",
            },
            8,
            2,
        ),
        ({"sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1", "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000"}, 4, 4),
    ],
)
def test_available_cpus_honours_quota_and_affinity(tmp_path, files, affinity, n):
    assert config.available_cpus(_tree(tmp_path, files), affinity=affinity) == n


def test_available_cpus_on_this_machine_is_within_the_affinity_mask():
    import os

    assert 1 <= config.available_cpus() <= len(os.sched_getaffinity(0))


def test_cache_size_above_the_memory_limit_is_a_config_error(monkeypatch):
    monkeypatch.setattr(config, "memory_limit", lambda: (1 << 30, "the cgroup memory limit (memory.max)"))
    with pytest.raises(ConfigErrors) as ei:
        config.build({"cache_size": "2GiB", "upstream": ["http://a:1"]})
    (p,) = ei.value.problems
    assert p.key == "cache_size" and str(1 << 30) in p.why and "memory.max" in p.why
    assert config.build({"cache_size": "512MiB", "upstream": ["http://a:1"]}).cache_size == 512 << 20


def test_serve_with_a_cache_larger_than_the_machine_exits_2_naming_cache_size():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgecore",
            "serve",
            "--upstream",
            "http://127.0.0.1:1",
            "--cache-size",
            "65536GiB",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2, r.stderr
    assert "cache_size" in r.stderr and "memory" in r.stderr and "Traceback" not in r.stderr


def test_sources_name_each_layer():
    src = config.sources({"workers": 2, "lb": "least_request"}, {"workers": "3"}, {"listen": "127.0.0.1:1"})
    assert (src["workers"], src["lb"], src["listen"], src["admin"]) == ("env", "file", "cli", "default")
    assert set(src) == set(config.KEYS)


def test_drain_delay_key():
    assert config.Config().drain_delay == 5.0
    assert config.build({"drain_delay": "0", "upstream": ["http://a:1"]}).drain_delay == 0
    with pytest.raises(ConfigErrors) as ei:
        config.build({"drain_delay": "-1", "upstream": ["http://a:1"]})
    assert [p.key for p in ei.value.problems] == ["drain_delay"]
