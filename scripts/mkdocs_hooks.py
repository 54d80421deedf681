"""MkDocs hook of the documentation site (mkdocs.yml `hooks:`).

The docstrings use reST cross-reference roles (:class:`~brainsparse.x.Y`, :func:`f`); the API
pages render docstrings as Markdown, where a role would show as literal text. This drops the role
and the leading ``~``, leaving the name as code.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|py:\w+):(<code>)~?")


def on_page_content(html: str, **_kwargs) -> str:
    return _ROLE.sub(r"\1", html)
