"""What scripts/test-core reads from pyproject.toml, so that no list is kept twice.

    .venv-core/bin/python scripts/project.py runtime-tests    # pytest args, one a line
    .venv-core/bin/python scripts/project.py check-core-venv  # exit 1 if a driver is in

``runtime-tests`` prints, one a line, the test selection of ``[tool.mutmut]``
(``pytest_add_cli_args_test_selection``): every test file but those needing a server, a
subprocess, a driver or a kind's simulator, which that list ignores one by one. A new
test file of the runtime is picked up without editing anything.

``check-core-venv`` fails if the interpreter running it has any distribution that an
extra brings (a driver, a server plugin, a linter) other than the core dependencies and
the ``test-core`` extra: the core stage of scripts/test proves nothing if one crept in.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # a core dependency of the package on 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CORE_EXTRA = "test-core"


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def _name(requirement: str) -> str:
    """The normalized distribution name of a requirement (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise SystemExit(f"pyproject.toml: cannot read the requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def runtime_tests() -> list[str]:
    selection: list[str] = _pyproject()["tool"]["mutmut"]["pytest_add_cli_args_test_selection"]
    return selection


def not_in_core_venv() -> set[str]:
    """Every distribution an extra names, less the core ones and the ``test-core`` extra."""
    project = _pyproject()["project"]
    own = _name(project["name"])
    extras: dict[str, list[str]] = project["optional-dependencies"]
    allowed = {_name(r) for r in project["dependencies"]}
    allowed |= {_name(r) for r in extras[CORE_EXTRA]}
    named = {_name(r) for reqs in extras.values() for r in reqs}
    return named - allowed - {own}


def check_core_venv() -> int:
    present = []
    for name in sorted(not_in_core_venv()):
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        present.append(name)
    if present:
        print(f"{sys.prefix} is not a core-only virtualenv: it has {', '.join(present)} "
              f"(remove it and run scripts/test again)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    if argv == ["runtime-tests"]:
        print("\n".join(runtime_tests()))
        return 0
    if argv == ["check-core-venv"]:
        return check_core_venv()
    print(__doc__.strip().splitlines()[0], file=sys.stderr)
    print("usage: project.py runtime-tests | check-core-venv", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
