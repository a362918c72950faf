"""Fixtures: a real origin on 127.0.0.1:0 and a real edgecore process in front of it."""

from __future__ import annotations

import itertools
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from client import Edge  # noqa: E402
from origin import Origin  # noqa: E402

_ids = itertools.count()


@pytest.fixture(scope="module")
def origin():
    o = Origin()
    yield o
    o.close()


@pytest.fixture(scope="module")
def edge(origin):
    e = Edge(origin.url)
    yield e
    e.stop()


@pytest.fixture
def uniq():
    """A path prefix no other test uses, so module-scoped servers never mix tests' cache entries."""
    return f"/t{next(_ids)}-{os.getpid()}"
