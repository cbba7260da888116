"""A Griffe extension for the API reference (mkdocs.yml, mkdocstrings' ``extensions``).

The docstrings of ``sessions`` are written for reading in the source and with
``help()``: Sphinx-style roles (``:class:`~sessions.Deferred```), double-backtick
literals and ``::`` before an indented literal block. Markdown renders the literals as
code and an indented block as a code block already; this turns each role into the code
span it stands for (``~`` keeps the last name only, as in Sphinx) and a paragraph's
closing ``::`` into ``:`` (a ``::`` of its own disappears), as Sphinx shows them.
Nothing in ``sessions`` changes.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const):`(~?)([^`]+)`")
_LITERAL = re.compile(r"(\S?)[ \t]*::[ \t]*$(?=\n[ \t]*\n)", re.MULTILINE)


def plain(text: str) -> str:
    """``text`` with every Sphinx role replaced by a code span of its target."""

    def code(match: re.Match[str]) -> str:
        target = match[2].strip()
        if match[1]:
            target = target.rsplit(".", 1)[-1]
        return f"`{target}`"

    def colon(match: re.Match[str]) -> str:
        return f"{match[1]}:" if match[1] else ""

    return _LITERAL.sub(colon, _ROLE.sub(code, text))


class RstRoles(Extension):
    """Rewrite Sphinx roles in every docstring to Markdown code spans."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
