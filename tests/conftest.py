"""Fixtures: a real origin on 127.0.0.1:0 and a real edgecore process in front of it.

End-to-end tests run once per path (`path`: "fast", "general"): "general" starts edgecore with
EDGECORE_NO_FASTPATH=1, so the general Python path answers everything that the C fast paths (fresh hits in
HitPath.serve, plain misses in PlainMiss) answer on "fast"; both are held to the same assertions. Run one
path only with `--path fast` or `--path general` (tests that are not per path run either way). With
EDGECORE_NO_FASTPATH=1 in pytest's own environment, "fast" and the tests of the C path itself (the
`fast_only` marker, the spies on PlainMiss) skip.
"""

from __future__ import annotations

import itertools
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from client import Edge, path_env  # noqa: E402
from origin import Origin  # noqa: E402

from edgecore.config import fastpath_disabled  # noqa: E402

_ids = itertools.count()

PATHS = ("fast", "general")
NO_FASTPATH_SET = "EDGECORE_NO_FASTPATH is set for this run: the C fast paths are off"
# modules that test the C fast path itself (not owned here, so marked here)
FAST_ONLY_MODULES = {"test_hitpath.py": "tests HitPath.serve, the C fast path itself"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--path", choices=PATHS, default=None, help="run the per-path (end-to-end) tests on this path only"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fast_only(reason): tests the C fast path itself; skipped when EDGECORE_NO_FASTPATH is set"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    only = config.getoption("--path")
    keep, drop = [], []
    for item in items:
        reason = FAST_ONLY_MODULES.get(item.path.name)
        if reason is not None:
            item.add_marker(pytest.mark.fast_only(reason))
        callspec = getattr(item, "callspec", None)
        on = callspec.params.get("path", only) if callspec is not None else only
        (keep if only is None or on == only else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_runtest_setup(item: pytest.Item) -> None:
    m = item.get_closest_marker("fast_only")
    if m is not None and fastpath_disabled():
        pytest.skip(f"{NO_FASTPATH_SET} ({m.args[0] if m.args else 'fast path only'})")


@pytest.fixture(scope="module", params=PATHS)
def path(request: pytest.FixtureRequest) -> str:
    """Which path answers: "fast" (the C fast paths on) or "general" (EDGECORE_NO_FASTPATH=1)."""
    if request.param == "fast" and fastpath_disabled():
        pytest.skip(f"the fast path: {NO_FASTPATH_SET}")
    return request.param


@pytest.fixture
def on_path(path: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """For tests that build a protocol Context in process: the env make_hitpath reads, set for `path`."""
    monkeypatch.setenv("EDGECORE_NO_FASTPATH", path_env(path)["EDGECORE_NO_FASTPATH"])
    return path


@pytest.fixture(scope="module")
def origin():
    o = Origin()
    yield o
    o.close()


@pytest.fixture(scope="module")
def edge(origin, path):
    e = Edge(origin.url, path=path)
    yield e
    e.stop()


@pytest.fixture
def uniq():
    """A path prefix no other test uses, so module-scoped servers never mix tests' cache entries."""
    return f"/t{next(_ids)}-{os.getpid()}"
