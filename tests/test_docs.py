"""The documentation site: every example runs, every Python block on a page is an example file,
every ``brainsparse`` command shown (pages and README) parses, the README's Python blocks run, and
the site builds with ``mkdocs build --strict``."""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brainsparse.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = sorted((DOCS / "examples").glob("*.py"))
PAGES = sorted(p for p in DOCS.rglob("*.md") if "examples" not in p.relative_to(DOCS).parts)
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
                   re.M | re.S)
SNIPPET = re.compile(r'^--8<-- "(?P<path>[^"]+)"$')
#: commands announced in issue 16 whose subcommands may land after the page that names them
PENDING_COMMANDS = {"recipes", "reproduce"}


def _blocks(page: Path) -> list[tuple[str, str]]:
    return [(m["lang"].lower(), m["body"]) for m in FENCE.finditer(page.read_text(encoding="utf-8"))]


def test_there_are_pages_and_examples():
    assert len(PAGES) >= 10 and len(EXAMPLES) >= 8


def test_every_python_block_is_an_included_example():
    """A Python block on a page must be exactly one ``--8<-- "examples/NAME.py"`` line, so that
    the code shown is the code :func:`test_example_runs` runs; every example is shown somewhere."""
    shown = set()
    problems = []
    for page in PAGES:
        for lang, body in _blocks(page):
            if lang not in ("python", "py", "python3", "pycon"):
                continue
            lines = [line.strip() for line in body.strip().splitlines()]
            match = SNIPPET.match(lines[0]) if len(lines) == 1 else None
            if match is None or not match["path"].startswith("examples/"):
                problems.append(f"{page.relative_to(ROOT)}: a python block that is not an included example:\n{body}")
                continue
            target = DOCS / match["path"]
            if not target.is_file():
                problems.append(f"{page.relative_to(ROOT)}: includes {match['path']}, which does not exist")
            shown.add(target)
    assert not problems, "\n".join(problems)
    assert not set(EXAMPLES) - shown, f"examples on no page: {sorted(p.name for p in set(EXAMPLES) - shown)}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(example, tmp_path, monkeypatch):
    for framework in ("transformers", "lightning"):
        if framework in example.read_text():
            pytest.importorskip(framework)
    monkeypatch.chdir(tmp_path)  # whatever an example writes lands here
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(example), run_name="__main__")
    seconds = time.perf_counter() - start
    assert out.getvalue().strip(), f"{example.name} printed nothing"
    assert seconds < 60, f"{example.name} took {seconds:.1f} s; examples must stay small"


def _commands(page: Path) -> list[str]:
    """The ``brainsparse ...`` command lines of a page's bash blocks (continuations joined)."""
    found = []
    for lang, body in _blocks(page):
        if lang not in ("bash", "sh", "shell", "console"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for i, word in enumerate(words):
                if word == "brainsparse" or word.endswith("/brainsparse"):
                    found.append(" ".join(shlex.quote(w) for w in words[i + 1:]))
                    break
    return found


def test_every_command_shown_parses():
    parser = build_parser()
    known = set(parser._subparsers._group_actions[0].choices)  # noqa: SLF001 - argparse keeps them here
    checked, problems = 0, []
    for page in [ROOT / "README.md", *PAGES]:
        for command in _commands(page):
            argv = shlex.split(command)
            if argv and (argv[0].isupper() or (argv[0] in PENDING_COMMANDS and argv[0] not in known)):
                continue  # a placeholder (brainsparse COMMAND --help), or a command still to land
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    parser.parse_args(argv)
            except SystemExit as exc:  # --help, --version: exit 0
                if exc.code != 0:
                    problems.append(f"{page.relative_to(ROOT)}: brainsparse {command}\n  {err.getvalue().strip()}")
            except Exception as exc:  # noqa: BLE001 - the parser's own error type
                problems.append(f"{page.relative_to(ROOT)}: brainsparse {command}\n  {exc}")
            checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 20


def test_cli_page_covers_every_command():
    parser = build_parser()
    known = set(parser._subparsers._group_actions[0].choices)  # noqa: SLF001
    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    missing = sorted(name for name in known if f"`brainsparse {name}`" not in page)
    assert not missing, f"docs/cli.md has no section for: {missing}"


def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict``: no broken link, anchor, snippet or API reference."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e .[docs])")
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e .[docs])")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is not installed")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    api = (tmp_path / "site" / "api" / "engine" / "index.html").read_text(encoding="utf-8")
    assert "DynamicSparseEngine" in api and ":class:" not in api


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    """The README is not on the site, but its Python blocks run too (in order, one namespace)."""
    blocks = [body for lang, body in _blocks(ROOT / "README.md") if lang == "python"]
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    with contextlib.redirect_stdout(io.StringIO()):
        for body in blocks:
            exec(compile(body, str(ROOT / "README.md"), "exec"), namespace)  # noqa: S102
