"""A Griffe extension for the API reference (mkdocs.yml, mkdocstrings' ``extensions``).

The docstrings of ``sessions`` are written for reading in the source and with
``help()``: Sphinx-style roles (``:class:`~sessions.Deferred```) and double-backtick
literals. Markdown renders the literals as code already; this turns each role into the
code span it stands for (``~`` keeps the last name only, as in Sphinx), so the rendered
reference shows ``Deferred`` rather than the markup. Nothing in ``sessions`` changes.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const):`(~?)([^`]+)`")


def plain(text: str) -> str:
    """``text`` with every Sphinx role replaced by a code span of its target."""

    def code(match: re.Match[str]) -> str:
        target = match[2].strip()
        if match[1]:
            target = target.rsplit(".", 1)[-1]
        return f"`{target}`"

    return _ROLE.sub(code, text)


class RstRoles(Extension):
    """Rewrite Sphinx roles in every docstring to Markdown code spans."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
