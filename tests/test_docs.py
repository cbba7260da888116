"""The docs' examples run: docs/architecture.md, docs/writing-a-kind.md and
docs/leases.md cannot drift from the code.

The ```python blocks of a document, in order, make one script, run in a fresh directory
in a subprocess (``sys.executable``, this checkout first on ``PYTHONPATH``). An HTML
comment just before a fence changes what happens to it:

* ``<!-- test: file NAME.py -->``: the block is written to ``NAME.py`` beside the
  script instead (the script imports it as module ``NAME``);
* ``<!-- test: output -->``: the fence (```text) is what the script must print, exactly;
* ``<!-- test: skip -->``: the block is not run (prefer runnable blocks);
* ``<!-- test: layers -->``: the layer picture of docs/architecture.md, checked against
  the ``layers`` contracts of ``[tool.importlinter]`` in pyproject.toml.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUNNABLE = ("architecture.md", "writing-a-kind.md", "leases.md")
TIMEOUT = 90.0
"""Seconds one document's script may take (it takes a few)."""

_FENCE = re.compile(
    r"(?:^<!--\s*test:\s*(?P<directive>[^>]*?)\s*-->[ \t]*\n)?"
    r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$",
    re.DOTALL | re.MULTILINE,
)


@dataclass(frozen=True)
class Block:
    lang: str
    directive: str
    body: str
    line: int


def blocks(doc: Path) -> list[Block]:
    """Every fenced block of ``doc`` with the test directive before it (or "")."""
    text = doc.read_text(encoding="utf-8")
    return [
        Block(m["lang"], (m["directive"] or "").strip(), m["body"],
              text.count("\n", 0, m.start("body")) + 1)
        for m in _FENCE.finditer(text)
    ]


@dataclass
class Program:
    script: str
    files: dict[str, str]
    expected: str | None


def program(doc: Path) -> Program:
    """The script, the module files and the expected output a document defines."""
    script: list[str] = []
    files: dict[str, str] = {}
    expected: str | None = None
    for block in blocks(doc):
        words = block.directive.split()
        where = f"{doc.name}:{block.line}"
        if words[:1] == ["skip"]:
            continue
        if words[:1] == ["output"]:
            assert expected is None, f"{where}: a second expected output"
            expected = block.body
        elif block.lang != "python":
            assert words[:1] in ([], ["layers"]), (
                f"{where}: test directive {block.directive!r} on a {block.lang or 'plain'} block")
        elif words[:1] == ["file"]:
            assert len(words) == 2 and words[1].endswith(".py"), f"{where}: file NAME.py"
            files[words[1]] = block.body
        else:
            assert not words, f"{where}: unknown test directive {block.directive!r}"
            script.append(f"# --- {where}\n{block.body}")
    return Program("\n".join(script), files, expected)


@pytest.mark.parametrize("name", RUNNABLE)
def test_examples_run(name: str, tmp_path: Path) -> None:
    prog = program(DOCS / name)
    assert prog.script.strip(), f"{name} has no runnable python block"
    assert prog.expected is not None, f"{name} shows no expected output (<!-- test: output -->)"
    for file, body in prog.files.items():
        (tmp_path / file).write_text(body, encoding="utf-8")
    main = tmp_path / "doc_example.py"
    main.write_text(prog.script, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(  # the module files, then this checkout's sessions
        [str(tmp_path), str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("PYTHONSTARTUP", None)
    done = subprocess.run(
        [sys.executable, str(main)], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=TIMEOUT, check=False,
    )
    assert done.returncode == 0, (
        f"{name}: the example exited with {done.returncode}\n--- stdout\n{done.stdout}"
        f"--- stderr\n{done.stderr}")
    assert _lines(done.stdout) == _lines(prog.expected), (
        f"{name}: the example printed something else than the document shows\n"
        f"--- printed\n{done.stdout}--- stderr\n{done.stderr}")


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def test_the_directives_are_known() -> None:
    """A ```python block is run unless marked: a typo in a directive fails loudly."""
    for name in RUNNABLE:
        program(DOCS / name)  # raises on an unknown directive


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
