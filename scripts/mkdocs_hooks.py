"""MkDocs hooks of the documentation site (mkdocs.yml `hooks:`).

* ``<!-- help: COMMAND -->`` on a page becomes a collapsed block holding the current
  ``brainsparse COMMAND --help`` text (``<!-- help: -->`` for the top-level help), so the
  command-line page shows every option as the parser defines it. An unknown command fails the build.
* The docstrings use reST cross-reference roles (:class:`~brainsparse.x.Y`, :func:`f`); the API
  pages render docstrings as Markdown, where a role would show as literal text. The role and the
  leading ``~`` are dropped, leaving the name as code.
"""

from __future__ import annotations

import os
import re
import textwrap

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|py:\w+):(<code>)~?")
_HELP = re.compile(r"^<!-- help:[ \t]*(?P<command>[\w-]*)[ \t]*-->[ \t]*$", re.M)


def _help_text(command: str) -> str:
    from brainsparse.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width: make it the same everywhere
    try:
        parser = build_parser()
        if command:
            choices = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse keeps them here
            if command not in choices:
                raise ValueError(f"<!-- help: {command} -->: no such brainsparse command; known: {', '.join(choices)}")
            parser = choices[command]
        return parser.format_help()
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous


def on_page_markdown(markdown: str, **_kwargs) -> str:
    def block(match: re.Match) -> str:
        command = match["command"]
        title = f"brainsparse {command} --help" if command else "brainsparse --help"
        body = textwrap.indent("```text\n" + _help_text(command).rstrip() + "\n```", "    ")
        return f'??? note "{title}"\n\n{body}\n'

    return _HELP.sub(block, markdown)


def on_page_content(html: str, **_kwargs) -> str:
    return _ROLE.sub(r"\1", html)
