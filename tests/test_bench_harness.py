"""The pure parts of the benchmark harness (bench/): wrk output parsing, /proc CPU accounting, statistics,
table rendering. No load is generated and nothing listens: these run in the normal test run in well under a
second."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, where bench/ lives

from bench import procstat, report, stats  # noqa: E402
from bench.servers import edgecore_hit, render_template, write_bodies  # noqa: E402
from bench.wrkrun import WrkError, _ms, parse_wrk, parse_wrk_json, parse_wrk_text, wrk_command  # noqa: E402

# ---------------------------------------------------------------- wrk output

WRK_TEXT = """Running 5s test @ http://127.0.0.1:8080/b1k.json
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   612.34us  200.12us   8.00ms   90.00%
    Req/Sec    98.12k     5.00k  110.00k    80.00%
  Latency Distribution
     50%  580.00us
     75%  700.00us
     90%  800.00us
     99%    1.20ms
  490123 requests in 5.00s, 560.50MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 10
Requests/sec:  98024.60
Transfer/sec:    112.10MB
"""

WRK_JSON_LINE = (
    'WRKJSON {"requests":490123,"duration_us":5000000,"bytes":587726848,"err_connect":0,"err_read":3,'
    '"err_write":0,"err_status":0,"err_timeout":2,"mean_us":612.3,"max_us":8000,"p50_us":580,"p99_us":1200,'
    '"p999_us":4100}'
)


def test_wrk_json_line_is_parsed_with_p999_and_errors():
    r = parse_wrk_json(WRK_TEXT + WRK_JSON_LINE + "\n")
    assert r is not None
    assert r.requests == 490123 and r.duration_s == 5.0
    assert r.rps == pytest.approx(98024.6)
    assert (r.p50_ms, r.p99_ms, r.p999_ms, r.max_ms) == (0.58, 1.2, 4.1, 8.0)
    assert r.errors == {"read": 3, "timeout": 2}


def test_wrk_json_absent_returns_none_and_parse_wrk_falls_back_to_text():
    assert parse_wrk_json(WRK_TEXT) is None
    r = parse_wrk(WRK_TEXT)
    assert r.requests == 490123
    assert r.duration_s == 5.0
    assert r.p50_ms == pytest.approx(0.58) and r.p99_ms == pytest.approx(1.2)
    assert r.p999_ms == 0.0  # wrk does not print it
    assert r.mean_ms == pytest.approx(0.61234) and r.max_ms == 8.0
    assert r.errors == {"read": 3, "timeout": 2, "status": 10}
    assert r.bytes == int(560.5 * (1 << 20))


def test_wrk_text_without_summary_is_an_error():
    with pytest.raises(WrkError):
        parse_wrk_text("unable to connect to 127.0.0.1:1 Connection refused\n")


@pytest.mark.parametrize(
    "text,ms", [("250.00us", 0.25), ("1.50ms", 1.5), ("2.00s", 2000.0), ("1.00m", 60000.0)]
)
def test_wrk_duration_units(text, ms):
    assert _ms(text) == pytest.approx(ms)


def test_wrk_command_is_pinned_and_loopback_only():
    cmd = wrk_command(
        "http://127.0.0.1:9000/x",
        duration=5,
        connections=64,
        cpus=[0],
        script="s.lua",
        script_args=["a", "b"],
    )
    assert cmd[:3] == ["taskset", "-c", "0"]
    assert "-c64" in cmd and "-d5s" in cmd and "--latency" in cmd
    assert cmd[-3:] == ["--", "a", "b"]
    with pytest.raises(ValueError):
        wrk_command("http://10.0.0.1:80/", duration=1, connections=1)


# ---------------------------------------------------------------- /proc accounting


def test_pid_stat_parsing_survives_parentheses_and_spaces_in_the_name():
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
    text = "4242 (we(ird) n)ame) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000\n"
    assert procstat.parse_pid_stat(text) == (17, 300)


PROC_STAT_A = """cpu  100 0 100 800 0 0 0 0 0 0
cpu0 50 0 50 400 0 0 0 0 0 0
cpu1 50 0 50 400 0 0 0 0 0 0
intr 1 2 3
"""
PROC_STAT_B = """cpu  300 0 200 1000 0 0 0 0 0 0
cpu0 60 0 60 480 0 0 0 0 0 0
cpu1 200 0 90 400 10 0 0 10 0 0
"""


def test_proc_stat_per_core_busy_and_steal():
    a, b = procstat.parse_proc_stat(PROC_STAT_A), procstat.parse_proc_stat(PROC_STAT_B)
    assert sorted(a) == [0, 1]  # the aggregate "cpu" line is not a core
    use = procstat.core_use(a, b)
    assert use[0].busy == pytest.approx(20 / 100) and use[0].steal == 0
    # cpu1: 210 ticks elapsed, 10 of them iowait (idle), 10 stolen
    assert use[1].busy == pytest.approx(1 - 10 / 210)
    assert use[1].steal == pytest.approx(10 / 210)


def test_process_tree_from_parent_links():
    def stat(pid, ppid, ticks=0):
        return f"{pid} (x) S {ppid} 0 0 0 0 0 0 0 0 0 {ticks} 0 0 0\n"

    stats_ = {
        1: stat(1, 0),
        10: stat(10, 1),
        11: stat(11, 10),
        12: stat(12, 10),
        13: stat(13, 12),
        20: stat(20, 1),
    }
    kids = procstat.children_map(stats_)
    assert sorted(procstat.descendants(10, kids)) == [10, 11, 12, 13]
    assert procstat.descendants(13, kids) == [13]


def test_tree_cpu_delta_drops_exited_and_counts_new_processes():
    before = {10: 100, 11: 50, 12: 30}  # 12 exits during the run
    after = {10: 150, 11: 60, 13: 40}  # 13 is a new worker
    assert procstat.tree_delta_seconds(before, after, clk_tck=100) == pytest.approx((50 + 10 + 40) / 100)
    # a recycled PID whose counter went backwards is not negative CPU
    assert procstat.tree_delta_seconds({10: 500}, {10: 20}, clk_tck=100) == 0


SCHED = """python (4242, #threads: 1)
-------------------------------------------------------------------
se.exec_start                                :       1358921.955195
se.vruntime                                  :        218294.008556
se.sum_exec_runtime                          :          1234.567891
nr_switches                                  :                  110
"""


def test_sched_runtime_has_ns_precision():
    assert procstat.parse_sched_runtime(SCHED) == pytest.approx(1.234567891)
    assert procstat.parse_sched_runtime("nr_switches : 3\n") is None
    assert procstat.runtime_delta_seconds({1: 1.0, 2: 5.0}, {1: 1.25, 3: 0.5}) == pytest.approx(0.75)


def test_live_tree_ticks_sees_this_process():
    sum(i * i for i in range(200_000))  # burn a little CPU
    ticks = procstat.tree_ticks([os.getpid()])
    assert os.getpid() in ticks and ticks[os.getpid()] >= 0
    rt = procstat.tree_runtime([os.getpid()])
    assert rt is None or sum(rt.values()) > 0
    tasks, cpus = procstat.tree_affinity(os.getpid())
    assert tasks >= 1 and cpus


# ---------------------------------------------------------------- statistics


def test_median_spread_percentile():
    assert stats.median([3, None, 1, 2]) == 2
    assert stats.median([]) is None
    assert stats.spread([90, 100, 110]) == pytest.approx(0.2)
    assert stats.spread([100]) is None
    xs = list(range(1, 1001))
    assert stats.percentile(xs, 50) == 500
    assert stats.percentile(xs, 99) == 990
    assert stats.percentile(xs, 99.9) == 999
    assert stats.percentile([7.0], 99.9) == 7.0
    assert stats.percentile([], 50) is None


def test_per_round_ratios_use_matching_rounds_only():
    vals = {0: 10.0, 1: 20.0, 2: 30.0}
    refs = {0: 5.0, 1: 10.0, 3: 1.0}
    assert sorted(stats.per_round_ratios(vals, refs)) == [2.0, 2.0]
    assert stats.median_ratio(vals, refs) == 2.0
    assert stats.median_ratio({0: 1.0}, {0: 0.0}) is None


def test_noise_warnings():
    assert stats.noise_warnings([100, 101, 99], [0.01, 0.02, 0.0]) == []
    w = stats.noise_warnings([100, 150, 90], [0.01, 0.5, None])
    assert any(x.startswith("noisy") for x in w) and any(x.startswith("disturbed") for x in w)


# ---------------------------------------------------------------- report


def _run(system, scenario, rnd, rps, cpu_us, upstream=0, p99=1.0):
    requests = int(rps * 5)
    return {
        "system": system,
        "scenario": scenario,
        "round": rnd,
        "rps": rps,
        "requests": requests,
        "p50_ms": 0.5,
        "p99_ms": p99,
        "p999_ms": p99 * 2,
        "max_ms": 9.0,
        "cpu_us_per_req": cpu_us,
        "upstream": upstream,
        "upstream_per_req": upstream / requests,
        "errors": {},
        "other_cpu": 0.0,
        "wrk_cpu": 0.5,
        "cpu_s": cpu_us * requests / 1e6,
    }


RUNS = [
    *(_run("nginx", "hit-1k", r, 60000 + 1000 * r, 15.0) for r in range(3)),
    *(_run("ceiling", "hit-1k", r, 120000, 7.5) for r in range(3)),
    *(_run("edgecore", "hit-1k", r, 90000, 10.0) for r in range(3)),
    *(_run("nginx", "zipf", r, 25000, 30.0, upstream=25000 * 5 * 3 // 10) for r in range(3)),
    *(_run("edgecore", "zipf", r, 30000, 20.0, upstream=30000 * 5 // 10) for r in range(3)),
    *(_run("nginx", "storm", r, 250, 150.0, upstream=1, p99=1000.0) for r in range(3)),
]


def test_summarise_medians_and_ratios():
    rows = report.summarise(RUNS)
    assert list(rows) == ["hit-1k", "zipf", "storm"]
    hit = {r.system: r for r in rows["hit-1k"]}
    assert [r.system for r in rows["hit-1k"]] == ["edgecore", "nginx", "ceiling"]
    assert hit["nginx"].rps == 61000
    assert hit["edgecore"].cpu_vs_nginx == pytest.approx(10 / 15)
    assert hit["edgecore"].cpu_vs_ceiling == pytest.approx(10 / 7.5)
    assert hit["nginx"].cpu_vs_nginx == 1.0
    zipf = {r.system: r for r in rows["zipf"]}
    assert zipf["nginx"].hit_ratio == pytest.approx(0.7)
    assert zipf["edgecore"].hit_ratio == pytest.approx(0.9)
    assert zipf["edgecore"].cpu_vs_ceiling is None  # no ceiling runs in this scenario


def test_markdown_table_and_noise_warning():
    noisy = RUNS + [_run("varnish", "hit-1k", r, rps, 20.0) for r, rps in enumerate((30000, 50000, 45000))]
    md = report.render_markdown(
        noisy,
        {"date": "2026-01-01", "commit": "abc1234", "machine": "2 CPUs"},
        {"edgecore|hit-1k": "OK", "varnish|hit-1k": "FAIL 2nd response is not a hit"},
    )
    assert md.startswith("# edgecore bench: 2026-01-01, commit abc1234")
    line = next(ln for ln in md.splitlines() if ln.startswith("| edgecore |") and "90,000" in ln)
    assert "| 0.67 |" in line  # CPU/req ÷ nginx
    assert "warning: the machine was noisy" in md
    assert "FAIL 2nd response is not a hit" in md
    assert "| hit ratio |" in md and "90.0%" in md
    storm = next(
        ln for ln in md.splitlines() if ln.startswith("| nginx proxy_cache | 750 |") or "| 1 |" in ln
    )
    assert storm


def test_readme_section_is_replaced_not_appended(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# bench\n\nintro\n\n{report.README_START}\nold table\n{report.README_END}\n\nfooter\n"
    )
    md_path = tmp_path / "results" / "x.md"
    md_path.parent.mkdir()
    for table in ("first", "second"):
        md = f"# title\n\n- chart: [x.png](x.png)\n\n## {table}\n"
        report.update_readme(readme, md_path, md_path.with_suffix(".png"), md, {"date": "d"})
    text = readme.read_text()
    assert "old table" not in text and "first" not in text and "#### second" in text
    assert text.count(report.README_START) == 1 and "footer" in text and "intro" in text
    assert "![CPU per request and latency per system](results/x.png)" in text
    assert "- chart: [x.png](results/x.png)" in text


def test_chart_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "c.png"
    report.render_chart(RUNS, {"date": "d", "commit": "c"}, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- servers' pure helpers


def test_templates_must_be_filled_completely():
    assert render_template("listen @PORT@;", {"PORT": 8080}) == "listen 8080;"
    with pytest.raises(ValueError, match="@RUN@"):
        render_template("root @RUN@/www; listen @PORT@;", {"PORT": 1})


def test_shipped_nginx_configs_have_only_known_placeholders():
    conf = Path(__file__).resolve().parents[1] / "bench" / "conf"
    values = {
        "RUN": "/r",
        "PORT": 1,
        "ORIGIN_PORT": 2,
        "SLOW_PORT": 3,
        "WORKERS": 1,
        "CACHE_SIZE": "1k",
        "KEYS_ZONE": "1m",
        "USER_LINE": "",
    }
    for name in ("origin.nginx.conf", "cache.nginx.conf"):
        assert "127.0.0.1:" in render_template((conf / name).read_text(), values)


def test_bodies_have_exact_sizes(tmp_path):
    bodies = write_bodies(tmp_path)
    assert {k: len(v) for k, v in bodies.items()} == {
        "1k": 1024,
        "16k": 16384,
        "256k": 262144,
        "1m": 1_000_000,
    }
    assert (tmp_path / "b16k.json").stat().st_size == 16384


@pytest.mark.parametrize(
    "header,hit",
    [
        ("edgecore; hit; ttl=42", True),
        ("other; fwd=miss, edgecore; hit", True),
        ("edgecore; fwd=miss; stored", False),
        ("edgecorex; hit", False),
        ("", False),
    ],
)
def test_edgecore_hit_reads_rfc9211_cache_status(header, hit):
    assert edgecore_hit({"cache-status": header}) is hit


def test_outage_summary_splits_the_run_into_phases() -> None:
    """bench/outage.py: error rate and latency per phase (before / outage / after) from the raw samples."""
    from bench.outage import Result, Sample, build_parser, render, summarise

    samples = [
        Sample(0.5, True, 1.0),
        Sample(1.5, False, 900.0),
        Sample(1.6, True, 2.0),
        Sample(2.5, True, 3.0),
    ]
    ph = summarise(samples, (1.0, 2.0, 3.0))
    assert (ph["before"]["requests"], ph["before"]["errors"]) == (1, 0)
    assert (ph["outage"]["requests"], ph["outage"]["errors"], ph["outage"]["error_rate"]) == (2, 1, 0.5)
    assert ph["outage"]["p99"] == 900.0 and ph["after"]["requests"] == 1
    md = render([Result("edgecore", "defaults", ph)], build_parser().parse_args([]))
    assert "| edgecore | defaults | 2 | 1 (50.00 %) | 900.0 / 900.0 |" in md
