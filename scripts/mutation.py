"""Mutation testing of the runtime, one module at a time, with a score per module.

    .venv/bin/python scripts/mutation.py                      # every core module
    .venv/bin/python scripts/mutation.py sessions/_runtime/futures.py # one (path or dotted name)
    .venv/bin/python scripts/mutation.py --report             # scores of the last runs only

mutmut (configured in pyproject.toml, ``[tool.mutmut]``) copies the package to
``mutants/``, runs the fast server-free tests once to learn which tests reach which
function, then runs those tests against every mutant of the chosen module. A mutant
"survives" when no test fails. A survivor is either a gap in the tests (write the
test) or an equivalent mutant (no observable behaviour can tell it apart): those are
listed in ``mutation-equivalents.txt`` beside pyproject.toml, one line each:

    <mutant name> <function hash> <why it is equivalent>

The function hash ties the entry to the source it was judged on: when the function
changes, mutmut renumbers its mutants, so the entry is reported as stale and must be
judged again (``mutmut show <name>`` prints a mutant's diff).

The report also names the entries that no longer describe a survivor (killed by a
newer test, or judged on an earlier version of the function): drop or judge them again.

The score counts killed and timed-out mutants over all mutants; the adjusted score
leaves the listed equivalents out of the total. The target is 85 % adjusted, and
every survivor killed or listed. Exit status: 1 if any module misses either.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = ROOT / "mutation-equivalents.txt"
TARGET = 85.0
CORE = [
    "sessions/supervisor/_policy.py",
    "sessions/_runtime/breaker.py",
    "sessions/_runtime/stats.py",
    "sessions/_runtime/futures.py",
    "sessions/_runtime/inject.py",
    "sessions/_config.py",
    "sessions/_runtime/runner.py",
    "sessions/_runtime/contract.py",
    "sessions/supervisor/_tree.py",
    "sessions/_system.py",
]
KILLED = {1, 3}
TIMEOUT = {36, -24, 24, 152, 255}
SURVIVED = {0}


@dataclass(frozen=True)
class Equivalent:
    """One line of mutation-equivalents.txt."""

    name: str
    """The mutant, as mutmut names it."""
    function_hash: str
    """mutmut's hash of the function's source when the mutant was judged."""
    why: str
    """Why no behaviour can tell the mutant from the original."""


def read_equivalents() -> dict[str, Equivalent]:
    found: dict[str, Equivalent] = {}
    if not EQUIVALENTS.exists():
        return found
    for number, raw in enumerate(EQUIVALENTS.read_text("utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 3:
            raise SystemExit(f"{EQUIVALENTS.name}:{number}: expected '<mutant> <hash> <why>', "
                             f"got {raw!r}")
        found[parts[0]] = Equivalent(*parts)
    return found


def dotted(module: str) -> str:
    path = module.removesuffix(".py").replace("/", ".")
    if not path.startswith("sessions"):
        raise SystemExit(f"not a module of the package: {module!r}")
    return path


def meta_path(module: str) -> Path:
    return ROOT / "mutants" / (dotted(module).replace(".", "/") + ".py.meta")


def function_of(name: str) -> str:
    """``pkg.mod.xǁClassǁmethod__mutmut_3`` -> ``xǁClassǁmethod``."""
    return name.rsplit(".", 1)[1].rsplit("__mutmut_", 1)[0]


def report(module: str, equivalents: dict[str, Equivalent]) -> bool:
    meta = meta_path(module)
    if not meta.exists():
        print(f"{module}: no results (run it first)")
        return False
    data = json.loads(meta.read_text("utf-8"))
    prefix = dotted(module) + "."
    codes: dict[str, int | None] = {
        prefix + key if not key.startswith(prefix) else key: code
        for key, code in data["exit_code_by_key"].items()}
    hashes: dict[str, str] = data["hash_by_function_name"]
    counts = Counter(
        "killed" if c in KILLED else "timeout" if c in TIMEOUT else
        "survived" if c in SURVIVED else "not checked" if c is None else f"exit {c}"
        for c in codes.values())
    total = len(codes)
    caught = counts["killed"] + counts["timeout"]
    survivors = sorted(n for n, c in codes.items() if c in SURVIVED)
    listed, stale, open_ = [], [], []
    for name in survivors:
        entry = equivalents.get(name)
        if entry is None:
            open_.append(name)
        elif hashes.get(function_of(name), "")[:len(entry.function_hash)] != entry.function_hash:
            stale.append(name)
        else:
            listed.append(name)
    score = 100.0 * caught / total if total else 100.0
    judged = total - len(listed)
    adjusted = 100.0 * caught / judged if judged else 100.0
    others = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())
                       if k not in ("killed", "timeout", "survived"))
    print(f"{module}: {total} mutants, {counts['killed']} killed, {counts['timeout']} timeout, "
          f"{len(survivors)} survived ({len(listed)} listed equivalent)"
          f"{', ' + others if others else ''}; score {score:.1f} %, "
          f"adjusted {adjusted:.1f} %")
    for name in open_:
        print(f"  survived, not listed: {name}  (hash {hashes.get(function_of(name), '?')})")
    for name in stale:
        print(f"  listed, but the function changed since: {name}")
    # Entries of this module that no longer describe a survivor: killed since (a new
    # test), or judged on a function that has changed or is gone. Drop or judge again.
    for name, entry in sorted(equivalents.items()):
        if not name.startswith(prefix) or name in survivors:
            continue
        current = hashes.get(function_of(name))
        if current is None or current[:len(entry.function_hash)] != entry.function_hash:
            print(f"  listed, but judged on an earlier version of its function: {name}")
        elif codes.get(name) in KILLED | TIMEOUT:
            print(f"  listed, but killed now: {name}")
    return adjusted >= TARGET and not open_ and not stale and counts["not checked"] == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("modules", nargs="*", help="module paths or dotted names "
                        "(default: every core module)")
    parser.add_argument("--report", action="store_true", help="only print the last results")
    parser.add_argument("--max-children", type=int, default=2)
    args = parser.parse_args()
    modules = [m if m.endswith(".py") else m.replace(".", "/") + ".py"
               for m in args.modules] or CORE
    for module in modules:
        if not (ROOT / module).is_file():
            raise SystemExit(f"no such module: {module}")
    equivalents = read_equivalents()
    if not args.report:
        mutmut = Path(sys.executable).parent / "mutmut"
        for module in modules:
            run = subprocess.run([str(mutmut), "run", "--max-children",
                                  str(args.max_children), dotted(module) + ".*"],
                                 cwd=ROOT, check=False, capture_output=True, text=True)
            if "failed to collect stats" in run.stdout + run.stderr:
                # The tests fail without any mutant: nothing was measured.
                sys.stderr.write(run.stdout[-4000:] + run.stderr[-4000:])
                raise SystemExit(f"{module}: mutmut could not run the tests (above)")
    ok = [report(m, equivalents) for m in modules]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
