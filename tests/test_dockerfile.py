"""The container image, checked without a Docker engine (none runs on these machines): the Dockerfile's
structure follows the official Python image conventions, and what it copies and runs exists."""

from __future__ import annotations

import json
import os
import re
import shlex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _instructions() -> list[tuple[str, str]]:
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_multi_stage_build_and_slim_runtime():
    froms = [rest for op, rest in _instructions() if op == "FROM"]
    assert len(froms) >= 2
    assert froms[0].endswith(" AS build") and "python:" in froms[0]
    assert "slim" in froms[-1]
    copies = [rest for op, rest in _instructions() if op == "COPY"]
    assert any(c.startswith("--from=build") for c in copies)


def test_copied_sources_exist():
    for op, rest in _instructions():
        if op == "COPY" and not rest.startswith("--from"):
            for src in shlex.split(rest)[:-1]:
                assert os.path.exists(os.path.join(ROOT, src)), src


def test_non_root_user_listens_on_all_interfaces_with_healthcheck():
    ins = _instructions()
    users = [rest for op, rest in ins if op == "USER"]
    assert users and not users[-1].startswith(("root", "0"))
    env = " ".join(rest for op, rest in ins if op == "ENV")
    assert "EDGECORE_LISTEN=0.0.0.0:8080" in env and "EDGECORE_ADMIN=0.0.0.0:9901" in env
    health = [rest for op, rest in ins if op == "HEALTHCHECK"]
    assert health and "/healthz" not in health[0]  # (checked below: it follows the configured admin port)
    assert any(op == "EXPOSE" and "8080" in rest for op, rest in ins)
    entry = [rest for op, rest in ins if op == "ENTRYPOINT"]
    assert entry and "edgecore" in entry[0]


def test_container_environment_makes_a_valid_config():
    """The ENV of the image, plus the upstream an operator passes, is a config edgecore accepts."""
    env = {}
    for op, rest in _instructions():
        if op == "ENV":
            for m in re.finditer(r"(\w+)=(\S+)", rest):
                env[m.group(1)] = m.group(2)
    from edgecore import config

    cfg = config.build({}, config.from_env({**env, "EDGECORE_UPSTREAM": "http://api:8000"}), {})
    assert cfg.listen == ("0.0.0.0", 8080) and cfg.admin == ("0.0.0.0", 9901)


def _env() -> dict[str, str]:
    out = {}
    for op, rest in _instructions():
        if op == "ENV":
            for item in shlex.split(rest):
                k, _, v = item.partition("=")
                out[k] = v
    return out


def test_healthcheck_follows_the_configured_admin_port():
    """issue 12 point 7: no port written into the check: `edgecore health` reads EDGECORE_ADMIN (its behaviour
    against a live admin listener is tested in test_cli.test_health_follows_the_configured_admin_address)."""
    (health,) = [rest for op, rest in _instructions() if op == "HEALTHCHECK"]
    cmd = json.loads(health[health.index("CMD") + 3 :].strip())
    assert cmd[:2] == ["edgecore", "health"] and "9901" not in health
    from edgecore import cli

    args = cli.build_parser().parse_args(cmd[1:])  # (the image's command line parses)
    assert args.func is cli.cmd_health and args.admin is None  # so EDGECORE_ADMIN decides
    m = re.search(r"--timeout=(\d+)s", health)
    assert m and args.timeout < int(m.group(1))  # the check gives up before Docker kills it


def test_stop_fits_the_default_docker_stop_timeout():
    """drain_delay + grace_period + the supervisor's 2 s kill margin fit in docker stop's default 10 s."""
    from edgecore import config

    env = _env()
    cfg = config.build({}, config.from_env(env), {}, require_upstream=False)
    assert "EDGECORE_DRAIN_DELAY" in env and "EDGECORE_GRACE_PERIOD" in env
    assert cfg.drain_delay > 0
    assert cfg.drain_delay + cfg.grace_period + 2.0 < 10.0
    assert ("STOPSIGNAL", "SIGTERM") in _instructions()
