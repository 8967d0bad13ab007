"""Every code block in README.md and docs/ is run, loaded or parsed here.

A block's info string says what it is (the first word is the language, as
Markdown renderers read it):

- ``sh``: run with bash in a copy of the repository, against a receiver this module
  starts (``http://127.0.0.1:8080`` in the text is replaced by its address; the
  shell's ``KEY`` is a routing key it accepts); it must exit 0.
- ``sh not-runnable: REASON``, ``python not-runnable: REASON`` and so on: not
  run, for the reason given (a cluster, a container engine, a foreground server).
- ``yaml rules``: a rule file, loaded by the rule loader; ``yaml rule-test``: a
  rule test run against the shipped rules; ``yaml settings``: a settings file,
  loaded by the settings loader; ``yaml alertmanager``: an Alertmanager
  ``receivers`` snippet, checked by ``amtool check-config``; ``yaml
  prometheus-rules``: alerting rules, checked by ``promtool check rules``;
  ``yaml k8s-role-rules``: Role rules, compared with the steps' declared RBAC;
  ``yaml helm-values``: chart values, validated by the chart's values schema.
  An untagged ``yaml`` block is a rule file when its top level has
  ``playbooks``, ``rules`` or ``incidents``, a rule test when it has ``tests``,
  a settings file when every key is a setting, and chart values when every key
  is a value of the chart.
- ``json``: parsed; ``python``: compiled.
- ``text``, ``markdown`` or no language: output shown to the reader, not run.

Also here: links between the pages resolve, no page speaks of internal issue
numbers, the README stays short, and every setting is in docs/settings.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from peers import poll, require_binary, run_receiver

from receiver.cli import main
from receiver.rulebook.loader import load_rulebook
from receiver.settings import Settings, load_settings
from receiver.steps.catalog import builtin_registry

STEP_TYPES = builtin_registry().steps

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
VALUES_SCHEMA = ROOT / "helm" / "receiver" / "values.schema.json"
ROUTING_KEY = "feedfacefeedfacefeedfacefeedface"
SHOWN = frozenset({"", "text", "markdown"})
YAML_KINDS = frozenset(
    {
        "rules",
        "rule-test",
        "settings",
        "alertmanager",
        "prometheus-rules",
        "k8s-role-rules",
    }
)
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int
    lang: str
    tag: str
    marked: bool  # not-runnable, with ``reason``
    reason: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def parse_blocks(page: Path) -> list[Block]:
    found: list[Block] = []
    lines = page.read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
        start = FENCE.match(lines[i])
        if start is None:
            i += 1
            continue
        indent, fence, info = start["indent"], start["fence"], start["info"].strip()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            body.append(lines[j].removeprefix(indent))
            j += 1
        words, marked, reason = info.partition("not-runnable:")
        lang, _, tag = words.strip().partition(" ")
        found.append(
            Block(
                page,
                i + 1,
                lang,
                tag.strip(),
                bool(marked),
                reason.strip(),
                "\n".join(body),
            )
        )
        i = j + 1
    return found


BLOCKS = [block for page in PAGES for block in parse_blocks(page)]


def ids(blocks: list[Block]) -> list[str]:
    return [b.id for b in blocks]


def test_every_block_says_what_it_is():
    """Each block has a known language; a not-runnable one says why."""
    known = {"sh", "yaml", "json", "python", *SHOWN}
    assert not [b.id for b in BLOCKS if b.lang not in known], "unknown language"
    for block in BLOCKS:
        if block.marked:
            assert len(block.reason) >= 10, f"{block.id}: say why it cannot run"
        elif block.lang == "yaml" and block.tag:
            assert block.tag in YAML_KINDS, f"{block.id}: unknown kind {block.tag}"


def _yaml_kind(block: Block) -> str:
    """The block's tag; untagged: what its top-level keys say it is."""
    if block.tag:
        return block.tag
    loaded = yaml.safe_load(block.text)
    assert isinstance(loaded, dict), f"{block.id}: tag the block ({YAML_KINDS})"
    keys = set(loaded)
    if keys & {"playbooks", "rules", "incidents"}:
        return "rules"
    if "tests" in keys:
        return "rule-test"
    if keys <= set(Settings.model_fields):
        return "settings"
    chart = json.loads(VALUES_SCHEMA.read_text(encoding="utf-8"))["properties"]
    assert keys <= set(chart), f"{block.id}: tag the block ({YAML_KINDS})"
    return "helm-values"


YAML_BLOCKS = [b for b in BLOCKS if b.lang == "yaml"]


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=ids(YAML_BLOCKS))
def test_yaml_blocks_load(block: Block, tmp_path: Path, capsys):
    """A YAML block parses and loads as the kind of file it shows."""
    loaded = yaml.safe_load(block.text)
    if block.marked:
        return
    kind = _yaml_kind(block)
    if kind == "rules":
        path = tmp_path / "doc.yaml"
        path.write_text(block.text, encoding="utf-8")
        load_rulebook([path], steps=builtin_registry())
    elif kind == "rule-test":
        _run_rule_test(block, tmp_path, capsys)
    elif kind == "settings":
        path = tmp_path / "settings.yaml"
        path.write_text(block.text, encoding="utf-8")
        assert isinstance(load_settings(path, environ={}), Settings)
    elif kind == "alertmanager":
        _amtool(loaded, tmp_path)
    elif kind == "prometheus-rules":
        _promtool(loaded, tmp_path)
    elif kind == "k8s-role-rules":
        _role_matches_the_steps(loaded)
    elif kind == "helm-values":
        schema = json.loads(VALUES_SCHEMA.read_text(encoding="utf-8"))
        jsonschema.validate(loaded, schema)


def _run_rule_test(block: Block, tmp_path: Path, capsys: Any) -> None:
    tests = tmp_path / "rules" / "tests"
    tests.mkdir(parents=True)
    runbook = (ROOT / "rules" / "runbook.yaml").read_text(encoding="utf-8")
    (tmp_path / "rules" / "runbook.yaml").write_text(runbook, encoding="utf-8")
    path = tests / "doc.test.yaml"
    path.write_text(block.text, encoding="utf-8")
    capsys.readouterr()
    code = main(["rules", "test", str(path)])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert "0 failed" in out.out


def _amtool(loaded: Any, tmp_path: Path) -> None:
    amtool = require_binary("amtool", package="prometheus-alertmanager")
    token = tmp_path / "token"
    token.write_text("t")
    for receiver in loaded["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            auth = hook.get("http_config", {}).get("authorization", {})
            if "credentials_file" in auth:
                auth["credentials_file"] = str(token)
    config = {"route": {"receiver": loaded["receivers"][0]["name"]}, **loaded}
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    done = subprocess.run(
        [amtool, "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _promtool(loaded: Any, tmp_path: Path) -> None:
    promtool = require_binary("promtool", package="prometheus")
    path = tmp_path / "rules.yml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "doc", "rules": loaded}]}),
        encoding="utf-8",
    )
    done = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _role_matches_the_steps(loaded: Any) -> None:
    """The Role grants exactly what the Kubernetes steps and verifies declare."""
    from receiver.rulebook.steps import PodsReadyVerify, RolloutStatusVerify  # noqa: PLC0415

    shown = {
        (group, resource, verb)
        for rule in loaded["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    models = [m for n, m in STEP_TYPES.items() if n.startswith("k8s.")]
    models += [RolloutStatusVerify, PodsReadyVerify]
    declared = {
        (group, resource, verb)
        for model in models
        for group, resource, verbs in model.rbac
        for verb in verbs
    }
    assert shown == declared


JSON_BLOCKS = [b for b in BLOCKS if b.lang == "json"]


@pytest.mark.parametrize("block", JSON_BLOCKS, ids=ids(JSON_BLOCKS))
def test_json_blocks_parse(block: Block):
    """A JSON block is JSON."""
    json.loads(block.text)


PYTHON_BLOCKS = [b for b in BLOCKS if b.lang == "python"]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=ids(PYTHON_BLOCKS))
def test_python_blocks_compile(block: Block):
    """A Python block is valid Python (run ones are marked with the reason not)."""
    compile(block.text, block.id, "exec")


SHELL_BLOCKS = [b for b in BLOCKS if b.lang == "sh" and not b.marked]


@pytest.fixture(scope="module")
def receiver_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A receiver on a free port, on the shipped rules, accepting ROUTING_KEY."""
    tmp = tmp_path_factory.mktemp("docs")
    env = {
        # One process (no worker child to wait for); the docs need no durability.
        "RECEIVER_STORE": "sqlite://:memory:",
        "RECEIVER_ROUTING_KEYS": ROUTING_KEY,
    }
    with run_receiver(tmp, rules=ROOT / "rules", env=env) as peer:
        yield peer.url


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository's files, so a block that writes changes nothing."""
    copy = tmp_path_factory.mktemp("repo")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, tracked.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = copy / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for tool in (".venv", ".tools"):
        if (ROOT / tool).exists():
            (copy / tool).symlink_to(ROOT / tool)
    return copy


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=ids(SHELL_BLOCKS))
def test_shell_blocks_run(block: Block, receiver_url: str, workdir: Path):
    """A shell block runs in a copy of the repository and exits 0."""
    script = block.text.replace("http://127.0.0.1:8080", receiver_url)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=workdir,
        env={**os.environ, "KEY": ROUTING_KEY},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{block.id}\n{done.stdout}\n{done.stderr}"


def test_the_first_alert_is_decided_as_the_readme_says(receiver_url: str):
    """examples/send.sh then the decisions list show sark-api-down, P0, api-down."""
    send = subprocess.run(
        ["examples/send.sh", receiver_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    payload_id = json.loads(send.stdout.strip().splitlines()[-1])["id"]
    url = f"{receiver_url}/api/v1/decisions"

    def decided() -> list[Any]:
        found = httpx.get(url, params={"payload_id": payload_id}).json()
        return list(found["decisions"])

    # The shared wait helper: the decision is the worker's, made after the 202.
    assert poll(decided, timeout=60)
    [decision] = decided()
    [match] = decision["matches"]
    assert (match["rule"], match["severity"], match["playbook"]) == (
        "sark-api-down",
        "P0",
        "api-down",
    )
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(`sark-api-down`)" in readme
    assert "`P0`" in readme
    assert "`api-down` playbook" in readme


def test_the_quick_start_commands_exist_as_the_readme_says():
    """`make run` serves rules/ on the defaults; `make test` runs every CI check."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    run = re.search(r"^run:.*\n\t(.*)$", makefile, re.MULTILINE)
    assert run is not None
    assert run.group(1) == "$(BIN)/receiver serve --rules rules"
    defaults = Settings()
    assert (defaults.server.host, defaults.server.port, defaults.engine.mode) == (
        "127.0.0.1",
        8080,
        "dry-run",
    )
    test = re.search(r"^test: (.*?)(  ##|$)", makefile, re.MULTILINE)
    assert test is not None
    assert test.group(1).split() == ["lint", "typecheck", "rules-check", "unit"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make run     #" in readme
    assert "make test    #" in readme


# ----------------------------------------------------------------- the pages


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    out: set[str] = set()
    fence = False
    for line in page.read_text(encoding="utf-8").split("\n"):
        if FENCE.match(line):
            fence = not fence
        elif not fence and line.startswith("#"):
            out.add(_slug(line.lstrip("#")))
    return out


def _prose(page: Path) -> str:
    """The page without its code blocks."""
    out: list[str] = []
    fence = False
    for line in page.read_text(encoding="utf-8").split("\n"):
        if FENCE.match(line):
            fence = not fence
        elif not fence:
            out.append(line)
    return "\n".join(out)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_links_between_pages_resolve(page: Path):
    """Every relative link names a file that exists and, with #, a heading in it."""
    for target in LINK.findall(_prose(page)) + IMAGE.findall(_prose(page)):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: {target} does not exist"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{page.name}: no heading #{anchor}"


def test_pages_the_code_points_people_to_exist():
    """An error or skip reason that says "see docs/X.md" names a page that exists.

    Two did not: a sink not configured pointed to docs/steps-and-sinks.md, a
    Kubernetes 403 to docs/kubernetes.md.
    """
    root = Path(__file__).resolve().parents[1]
    named = {
        (source.relative_to(root), page)
        for source in (root / "receiver").rglob("*.py")
        for page in re.findall(r"docs/[\w./-]+\.md", source.read_text("utf-8"))
    }
    assert named, "the code names no page: the pattern is wrong"
    missing = sorted(
        f"{src}: {page}" for src, page in named if not (root / page).exists()
    )
    assert not missing, missing


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_no_page_speaks_of_internal_issues(page: Path):
    """Docs speak to users: no issue numbers, no notes to the maintainers."""
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"(?i)\bissues?\s*#?\d+", text)
    assert "Material for the README" not in text


def test_the_readme_is_a_short_entry_point():
    """Under 200 lines, one console screenshot, links to every docs page."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    assert IMAGE.findall(readme) == ["docs/console-approvals.png"]
    assert (ROOT / "docs" / "console-approvals.png").exists()
    linked = {Path(t).name for t in LINK.findall(readme) if t.startswith("docs/")}
    pages = {p.name for p in DOCS.glob("*.md")}
    assert pages <= linked, pages - linked


def _setting_names(model: type[Any], prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        inner = field.annotation
        if isinstance(inner, type) and hasattr(inner, "model_fields"):
            yield from _setting_names(inner, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_every_setting_is_in_the_settings_reference():
    """docs/settings.md has a row for each setting the receiver reads."""
    doc = (DOCS / "settings.md").read_text(encoding="utf-8")
    rows = {
        name
        for line in doc.splitlines()
        if line.startswith("| `")
        for name in re.findall(r"`([a-z_.]+)`", line.split("|")[1])
    }
    # A row may name a grouped setting in full (``server.host``) or by its
    # last part (``host``).
    last = {row.split(".")[-1] for row in rows}
    missing = [
        n
        for n in _setting_names(Settings)
        if n not in rows and n.split(".")[-1] not in last
    ]
    assert not missing


def test_every_make_target_the_docs_name_exists():
    """`make NAME` (in code or a command line) names a target of the Makefile."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.MULTILINE))
    named = {
        (page.name, name)
        for page in PAGES
        for name in re.findall(
            r"(?:`|^)make ([a-z][a-z-]*)", page.read_text("utf-8"), re.MULTILINE
        )
    }
    assert named, "the pages name make targets"
    assert not {(page, name) for page, name in named if name not in targets}
