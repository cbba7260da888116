"""MkDocs hooks (``hooks:`` in mkdocs.yml): every page of docs/ is in the navigation.

A page that ``nav:`` does not list yet (one added by a later change) is appended to the
navigation under "More", by its path, so no page is ever unreachable; list it in
``nav:`` to place it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _listed(nav: Any) -> set[str]:
    """Every page path ``nav`` names, at any depth."""
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_listed(v) for v in nav.values()))
    if isinstance(nav, list):
        return set().union(*(_listed(v) for v in nav))
    return set()


def on_config(config: Any) -> Any:
    """Append the pages ``nav:`` leaves out, sorted, under "More"."""
    nav = config.get("nav")
    if not nav:
        return config  # no nav: MkDocs lists every page by itself
    docs = Path(config["docs_dir"])
    pages = sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.md"))
    missing = [p for p in pages if p not in _listed(nav)]
    if missing:
        nav.append({"More": missing})
    return config
