"""Every example of the README and the docs site is executed: a document cannot drift
from the code.

Every document is covered: ``README.md`` and every ``docs/**/*.md`` (a new page is
picked up without touching this file).

* The ```python blocks of a document, in order, make one script, run in a fresh
  directory in a subprocess (``sys.executable``, this checkout first on
  ``PYTHONPATH``). It must exit 0.
* Each ```toml block is a config file: it is checked as ``sessions check FILE`` would
  (``sessions._tools.cli.main(["check", FILE])``, in this process) and must be valid.

An HTML comment on the line just before a fence changes what happens to the block:

* ``<!-- test: file NAME -->``: the block is written to ``NAME`` (a relative path)
  beside the script instead of being run. A ``.py`` file is a module the script, or a
  config, imports (``NAME.py`` is module ``NAME``); a ``.toml`` file is a config the
  script loads, and is checked too.
* ``<!-- test: output -->``: the fence (```text) is what the python blocks before it
  (after the previous output block) print, exactly; a line ``...`` stands for any
  number of lines, ``...`` inside a line for any text.
* ``<!-- test: console -->`` on a ```text block: a terminal session. Each line
  ``$ COMMAND`` is run (after the script, in its directory, where ``examples/`` is
  copied too; ``sessions`` is ``python -m sessions``) and the lines up to the next
  ``$`` are its output (stdout and stderr together), matched as for ``output``.
* ``<!-- test: check [--connect] [invalid] [NAME=VALUE ...] -->`` on a toml block:
  checked with these environment variables set (the value of a required ``${NAME}``);
  with ``--connect`` each resource is also opened once (``sessions check --connect``);
  ``invalid``: the block shows a broken config, and the check must reject it (exit 2).
  ``file NAME.toml`` takes the same options after the name.
* ``<!-- test: skip REASON -->``: the block is not run or checked, for the reason given
  (a reason is required: say what it needs, e.g. hardware). Prefer runnable blocks.
* ``<!-- test: layers -->``: the layer picture of docs/architecture.md, checked against
  the ``layers`` contracts of ``[tool.importlinter]`` in pyproject.toml.

A comment on a line of its own, not before a fence, sets up the whole document:

* ``<!-- test: servers NAME ... -->``: throwaway servers (``tests/fixtures_servers.py``)
  for the document's script and its ``--connect`` checks, given to them as environment
  variables: ``redis`` -> ``REDIS_URL`` (emptied), ``postgres`` -> ``DB_URL`` (a fresh
  database), ``kafka`` -> ``KAFKA_BOOTSTRAP``, ``http`` -> ``API_URL`` (the test HTTP
  server of ``tests/servers.py``). A missing server binary skips the document's script
  (fails it in CI), as for every server test.

Blocks in other languages (```sh, ```text, ```json) are not run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
TIMEOUT = 150.0
"""Seconds one document's script may take (most take a few; Kafka's group joins more)."""

SERVERS = {
    # name in the directive: (fixture of tests/fixtures_servers.py, environment variable)
    "redis": ("redis_url", "REDIS_URL"),
    "postgres": ("postgres_url", "DB_URL"),
    "kafka": ("kafka_server", "KAFKA_BOOTSTRAP"),
    "http": ("http_server", "API_URL"),
}

_COMMENT = re.compile(r"^[ \t]*<!--\s*test:\s*(?P<directive>[^>]*?)\s*-->[ \t]*$", re.MULTILINE)
_FENCE = re.compile(
    r"(?:^[ \t]*<!--\s*test:\s*(?P<directive>[^>]*?)\s*-->[ \t]*\n)?"
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.DOTALL | re.MULTILINE,
)


def documents() -> list[Path]:
    """README.md and every page of the docs site."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def _name(doc: Path) -> str:
    return doc.relative_to(ROOT).as_posix() if doc.is_relative_to(ROOT) else doc.name


@dataclass(frozen=True)
class Block:
    lang: str
    directive: str
    body: str
    line: int
    doc: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def words(self) -> list[str]:
        return self.directive.split()


def blocks(doc: Path) -> list[Block]:
    """Every fenced block of ``doc`` (indented ones dedented) with its directive or ""."""
    text = doc.read_text(encoding="utf-8")
    found = []
    for m in _FENCE.finditer(text):
        indent = m["indent"]
        body = "".join(
            line[len(indent):] if line.startswith(indent) else line.lstrip()
            for line in m["body"].splitlines(keepends=True))
        found.append(Block(m["lang"], (m["directive"] or "").strip(), body,
                           text.count("\n", 0, m.start("body")) + 1, _name(doc)))
    return found


def page_directives(doc: Path) -> list[list[str]]:
    """The directives on lines of their own (not just before a fence)."""
    text = doc.read_text(encoding="utf-8")
    before_fence = {m.start() for m in _FENCE.finditer(text) if m["directive"] is not None}
    return [m["directive"].split() for m in _COMMENT.finditer(text)
            if m.start() not in before_fence]


def servers_of(doc: Path) -> list[str]:
    names: list[str] = []
    for words in page_directives(doc):
        assert words[:1] == ["servers"] and len(words) > 1, (
            f"{_name(doc)}: unknown document directive {' '.join(words)!r} "
            "(a block directive must be on the line just before its fence)")
        for name in words[1:]:
            assert name in SERVERS, f"{_name(doc)}: unknown server {name!r} ({sorted(SERVERS)})"
            names.append(name)
    return names


@dataclass
class CheckOptions:
    connect: bool = False
    invalid: bool = False
    env: dict[str, str] = field(default_factory=dict)


def _check_options(block: Block, words: list[str]) -> CheckOptions:
    options = CheckOptions()
    for word in words:
        if word == "--connect":
            options.connect = True
        elif word == "invalid":
            options.invalid = True
        elif re.fullmatch(r"[A-Za-z_]\w*=\S*", word):
            key, value = word.split("=", 1)
            options.env[key] = value
        else:
            raise AssertionError(f"{block.where}: unknown check option {word!r}")
    return options


@dataclass
class Program:
    """What a document defines: its script, its files, its expected outputs, its configs."""

    script: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    outputs: list[Block] = field(default_factory=list)
    configs: list[tuple[Block, CheckOptions]] = field(default_factory=list)
    consoles: list[Block] = field(default_factory=list)
    skipped: list[tuple[Block, str]] = field(default_factory=list)


_MARK = "\x1edoc-output-{}\x1e"


def program(doc: Path) -> Program:
    """Read ``doc``'s blocks and directives; raises AssertionError on a bad directive."""
    prog = Program()
    for block in blocks(doc):
        words = block.words
        verb = words[0] if words else ""
        if verb == "skip":
            reason = " ".join(words[1:])
            assert reason, f"{block.where}: skip needs a reason (<!-- test: skip REASON -->)"
            prog.skipped.append((block, reason))
        elif verb == "output":
            assert len(words) == 1, f"{block.where}: output takes no argument"
            assert block.lang in ("text", ""), f"{block.where}: output on a {block.lang} block"
            prog.script.append(f"print({_MARK.format(len(prog.outputs))!r}, flush=True)")
            prog.outputs.append(block)
        elif verb == "console":
            assert len(words) == 1, f"{block.where}: console takes no argument"
            assert block.lang == "text", f"{block.where}: console on a {block.lang} block"
            assert block.body.startswith("$ "), f"{block.where}: a console starts with '$ '"
            prog.consoles.append(block)
        elif verb == "layers":
            assert block.lang == "text", f"{block.where}: layers on a {block.lang} block"
        elif verb == "file":
            assert len(words) >= 2, f"{block.where}: file NAME"
            name = words[1]
            assert not Path(name).is_absolute() and ".." not in Path(name).parts, (
                f"{block.where}: file {name!r} must be a relative path inside the directory")
            assert name not in prog.files, f"{block.where}: a second file {name!r}"
            assert block.lang in ("python", "toml"), f"{block.where}: file on a {block.lang}"
            assert (block.lang == "python") == name.endswith(".py"), (
                f"{block.where}: a {block.lang} block written to {name!r}")
            prog.files[name] = block.body
            if block.lang == "toml":
                prog.configs.append((block, _check_options(block, words[2:])))
            else:
                assert len(words) == 2, f"{block.where}: file NAME.py takes no option"
        elif verb == "check":
            assert block.lang == "toml", f"{block.where}: check on a {block.lang} block"
            prog.configs.append((block, _check_options(block, words[1:])))
        elif verb:
            raise AssertionError(f"{block.where}: unknown test directive {block.directive!r}")
        elif block.lang == "python":
            prog.script.append(f"# --- {block.where}\n{block.body}")
        elif block.lang == "toml":
            prog.configs.append((block, CheckOptions()))
    return prog


# -- the servers a document asks for -----------------------------------------------------


def _server_env(request: pytest.FixtureRequest, names: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name in names:
        fixture, variable = SERVERS[name]
        value = request.getfixturevalue(fixture)
        if name == "kafka":
            value = value.bootstrap
        elif name == "http":
            value = value.url
        env[variable] = str(value)
    return env


# -- python: each document's script ------------------------------------------------------


def _runnable() -> list[str]:
    return [_name(doc) for doc in documents()
            if program(doc).script or program(doc).consoles]


@pytest.mark.timeout(TIMEOUT + 60)
@pytest.mark.parametrize("name", _runnable())
def test_examples_run(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    doc = ROOT / name
    prog = program(doc)
    env = dict(os.environ)
    env.update(_server_env(request, servers_of(doc)))
    for file, body in prog.files.items():
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file).write_text(body, encoding="utf-8")
    env["PYTHONPATH"] = os.pathsep.join(  # the module files, then this checkout's sessions
        [str(tmp_path), str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("PYTHONSTARTUP", None)
    env["PYTHONUNBUFFERED"] = "1"
    if prog.script:
        _run_script(name, prog, tmp_path, env)
    if prog.consoles:
        shutil.copytree(ROOT / "examples", tmp_path / "examples", dirs_exist_ok=True)
    for block in prog.consoles:
        _run_console(block, tmp_path, env)


def _run_script(name: str, prog: Program, tmp_path: Path, env: dict[str, str]) -> None:
    main = tmp_path / "doc_example.py"
    main.write_text("\n".join(prog.script), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(main)], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=TIMEOUT, check=False,
    )
    assert done.returncode == 0, (
        f"{name}: the examples exited with {done.returncode}\n--- stdout\n{done.stdout}"
        f"--- stderr\n{done.stderr}")
    printed = done.stdout.split("\n")
    segments: list[list[str]] = [[]]
    for line in printed:
        if re.fullmatch(_MARK.format(r"\d+"), line):
            segments.append([])
        else:
            segments[-1].append(line)
    assert len(segments) == len(prog.outputs) + 1, f"{name}: an output mark is missing"
    for block, segment in zip(prog.outputs, segments, strict=False):
        assert matches(block.body, "\n".join(segment)), (
            f"{block.where}: the examples printed something else than the document shows\n"
            f"--- printed\n{chr(10).join(segment)}\n--- expected\n{block.body}"
            f"--- stderr\n{done.stderr}")


def _run_console(block: Block, cwd: Path, env: dict[str, str]) -> None:
    """Run each ``$ COMMAND`` of a console block; compare what it prints."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.body.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    for command, expected in steps:
        argv = shlex.split(command)
        if argv[0] == "sessions":
            argv = [sys.executable, "-m", "sessions", *argv[1:]]
        done = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT,
                              check=False)
        assert matches("\n".join(expected), done.stdout), (
            f"{block.where}: `{command}` printed something else than the document shows "
            f"(exit {done.returncode})\n--- printed\n{done.stdout}--- expected\n"
            + "\n".join(expected))


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def matches(expected: str, printed: str) -> bool:
    """Whether ``printed`` is ``expected``, line by line (trailing blanks ignored), where
    a line ``...`` stands for any lines and ``...`` inside a line for any text."""
    parts = []
    for line in _lines(expected):
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(r"[^\n]*?".join(map(re.escape, line.split("..."))) + r"\n")
    pattern = re.compile("".join(parts))
    return pattern.fullmatch("".join(f"{line}\n" for line in _lines(printed))) is not None


def test_output_patterns() -> None:
    assert matches("a\nb\n", "a\nb  \n\n")
    assert not matches("a\nb", "a\nc")
    assert matches("a\n...\nd", "a\nb\nc\nd")
    assert matches("a\n...\nd", "a\nd")
    assert matches("x=..., y=2", "x=[1, 2], y=2")
    assert not matches("x=..., y=2", "x=1\n, y=2")
    assert matches("it said: wait...", "it said: wait...")


# -- toml: every config block is `sessions check`ed ---------------------------------------


def _configs() -> list[str]:
    return [block.where for doc in documents() for block, _ in program(doc).configs]


@contextlib.contextmanager
def _importable(directory: Path, files: dict[str, str]) -> Iterator[None]:
    """The document's module files importable from ``directory``, forgotten afterwards."""
    for file, body in files.items():
        if file.endswith(".py"):
            (directory / file).parent.mkdir(parents=True, exist_ok=True)
            (directory / file).write_text(body, encoding="utf-8")
    before = set(sys.modules)
    sys.path.insert(0, str(directory))
    try:
        yield
    finally:
        sys.path.remove(str(directory))
        for module in set(sys.modules) - before:
            spec_file = getattr(sys.modules[module], "__file__", None) or ""
            if spec_file.startswith(str(directory)):
                del sys.modules[module]


@pytest.mark.parametrize("where", _configs())
def test_configs_check(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest,
) -> None:
    from sessions._tools.cli import main  # noqa: PLC0415

    name, line = where.rsplit(":", 1)
    doc = ROOT / name
    prog = program(doc)
    block, options = next((b, o) for b, o in prog.configs if b.line == int(line))
    env = dict(options.env)
    if options.connect:
        env.update(_server_env(request, servers_of(doc)))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / f"{doc.stem}-{block.line}.toml"
    path.write_text(block.body, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with _importable(tmp_path, prog.files):
        code = main(["check", str(path), *(["--connect"] if options.connect else [])])
    out, err = capsys.readouterr()
    expected = 2 if options.invalid else 0  # 2: the config is invalid
    assert code == expected, (
        f"{where}: sessions check exited {code}, not {expected}\n--- stdout\n{out}"
        f"--- stderr\n{err}")


# -- every block accounted for -------------------------------------------------------------


def test_the_directives_are_known() -> None:
    """A typo in a directive fails loudly, and so does a skip without a reason."""
    for doc in documents():
        program(doc)
        servers_of(doc)


def test_every_python_and_toml_block_runs_or_says_why_not() -> None:
    """Each ```python block is run (or written as a module file), each ```toml block
    checked, unless skipped with a reason; the tally is the docs' own claim."""
    for doc in documents():
        prog = program(doc)
        accounted = {b.line for b, _ in prog.skipped} | {b.line for b, _ in prog.configs}
        for block in blocks(doc):
            if block.lang == "python" and not block.words:
                assert f"# --- {block.where}\n" in "\n".join(prog.script)
            elif block.lang in ("python", "toml") and block.words[:1] != ["file"]:
                assert block.line in accounted, f"{block.where}: neither run nor checked"


def test_readme_opens_with_the_two_commands() -> None:
    """The README's first lines: the main job on embedded defaults, then the whole
    test suite; nothing else before them but the title."""
    text = README.read_text(encoding="utf-8")
    first = blocks(README)[0]
    assert text[: text.index("```")].strip().splitlines() == ["# sessions"]
    commands = [line.split("#", 1)[0].strip() for line in first.body.splitlines()]
    assert first.lang == "sh"
    assert [c for c in commands if c] == ["bash scripts/demo", "bash scripts/test"]


# -- docs/architecture.md: the layer picture ---------------------------------------------


def _layer_lines(picture: str, layer: str) -> int:
    """The line of ``picture`` naming every module of one import-linter layer."""
    modules = [m.strip() for m in re.split(r"[|:]", layer)]
    for number, line in enumerate(picture.splitlines()):
        words = set(re.findall(r"[\w.]+", line))
        if all(m in words for m in modules):
            return number
    raise AssertionError(f"docs/architecture.md: no line of the layer picture names {layer!r}")


def test_layer_picture_matches_import_linter() -> None:
    """Each ``layers`` contract appears in the picture, top layer first, one line per
    layer naming all its modules."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
        "tool"]["importlinter"]["contracts"]
    pictures = [b.body for b in blocks(DOCS / "architecture.md") if b.directive == "layers"]
    assert pictures, "docs/architecture.md: no block marked <!-- test: layers -->"
    picture = "\n".join(pictures)
    layered = [c for c in contracts if c["type"] == "layers"]
    assert layered
    for contract in layered:
        lines = [_layer_lines(picture, layer) for layer in contract["layers"]]
        assert lines == sorted(lines) and len(set(lines)) == len(lines), (
            f"docs/architecture.md: the layers of {contract['name']!r} are not drawn in "
            f"the contract's order: {contract['layers']}")


def test_indented_fences_are_found(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(textwrap.dedent("""\
        * a list item:

          <!-- test: skip shown only -->
          ```toml
          [a]
            b = 1
          ```
        """), encoding="utf-8")
    (found,) = blocks(doc)
    assert (found.lang, found.words, found.body) == ("toml", ["skip", "shown", "only"],
                                                     "[a]\n  b = 1\n")
