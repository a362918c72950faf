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
