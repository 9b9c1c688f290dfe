"""A griffe extension for the API reference: reStructuredText idioms become Markdown.

granite_storage's docstrings use reStructuredText roles (``:class:`StorageError```,
``:meth:`~StorageBackend.aopen```) and ``::`` before literal blocks, which Markdown
would print as they are. This extension rewrites them before mkdocstrings renders the
docstrings:

* a role becomes ``<autoref identifier="full.path" optional><code>Name</code></autoref>``,
  a link when the target is documented and plain code when it is not (``optional``
  keeps an undocumented target from failing ``mkdocs build --strict``);
* ``~`` shortens the text to the last component, as in Sphinx;
* a paragraph ending in ``::`` ends in ``:``, and the indented block after it becomes
  a fenced Python block (highlighted);
* ``:raises ~pkg.mod.Error:`` becomes ``:raises Error:``.

Loaded by mkdocs.yml (``extensions: [docs/griffe_roles.py]``); not part of the package.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|data|exc|mod|obj|const):`(?P<target>[^`]+)`")
_RAISES = re.compile(r"^(\s*:raises\s+)~?(?:[\w.]+\.)?(?P<name>\w+):", re.MULTILINE)
_PACKAGE = "granite_storage"


def _identifier(obj: Object, target: str) -> str | None:
    """The full path of ``target`` as seen from ``obj``, when it is in the package."""
    if target.startswith(_PACKAGE + "."):
        return target
    head, _, rest = target.partition(".")
    try:
        resolved = obj.resolve(head)
    except Exception:  # not resolvable from this scope: left as plain code
        return None
    path = f"{resolved}.{rest}" if rest else resolved
    return path if path.startswith(_PACKAGE + ".") else None


def _literal_blocks(text: str) -> str:
    """``Paragraph::`` + an indented block -> ``Paragraph:`` + a fenced Python block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not (line.rstrip().endswith("::") and line.strip() != "::"):
            out.append(line)
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        out.append(line.rstrip()[:-1])  # "...::" -> "...:"
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        block: list[str] = []
        while j < len(lines) and (
            not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent
        ):
            block.append(lines[j])
            j += 1
        while block and not block[-1].strip():
            block.pop()
        if not block:
            i += 1
            continue
        fence = " " * indent
        code = textwrap.dedent("\n".join(block)).split("\n")
        out.extend(["", f"{fence}```python", *(fence + c if c else c for c in code), f"{fence}```"])
        out.append("")
        i = j
    return "\n".join(out)


def _rewrite(obj: Object, text: str) -> str:
    def role(match: re.Match[str]) -> str:
        target = match["target"].strip()
        short = target.startswith("~")
        target = target.lstrip("~")
        title = target.rsplit(".", 1)[-1] if short else target
        identifier = _identifier(obj, target)
        if identifier is None:
            return f"`{title}`"
        return f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>'

    text = _RAISES.sub(lambda m: f"{m[1]}{m['name']}:", text)
    text = _literal_blocks(text)
    return _ROLE.sub(role, text)


class SphinxRolesExtension(Extension):
    """Rewrite reStructuredText idioms in every docstring of the loaded package."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _rewrite(obj, obj.docstring.value)
