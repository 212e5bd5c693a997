"""MkDocs hooks (``hooks:`` in mkdocs.yml): the metrics page's field tables and the repository files docs link to.

- A page line ``<!-- metrics-schema-tables -->`` is replaced by tables built from
  ``fedkper_monai/metrics_schema.py`` at build time, so the docs cannot drift from the schema the server writes by.
- A docs link that leaves ``docs/`` for a file of the repository (``../benchmarks/RESULTS.md``) works on GitHub as
  it is; for the built site the file (and, for a Markdown file, what it links to in turn) is added under its
  repository path and the link rewritten to it, so ``mkdocs build --strict`` still checks that it exists.
"""

from __future__ import annotations

import importlib.util
import posixpath
import re
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "fedkper_monai" / "metrics_schema.py"
MARKER = "<!-- metrics-schema-tables -->"
# Inline links and images, not inside code: ``[text](target)`` with a relative target.
_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def load_schema() -> ModuleType:
    """``fedkper_monai/metrics_schema.py`` of this checkout, loaded by path (standard library only, so the docs
    build needs neither torch nor an installed package)."""
    name = "_docs_metrics_schema"
    spec = importlib.util.spec_from_file_location(name, SCHEMA_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def _cell(text: str) -> str:
    """Table-cell text: a pipe would end the cell, a ``*`` (``*_dice``) would start emphasis."""
    return text.replace("|", "\\|").replace("*", "\\*").replace("\n", " ")


def _table(rows: list[tuple[str, str, str]]) -> str:
    """A field table; without kinds (the header's fields) it has no value column."""
    if not any(kind for _, kind, _ in rows):
        lines = ["| field | meaning |", "|---|---|"]
        return "\n".join(lines + [f"| `{name}` | {_cell(meaning)} |" for name, _, meaning in rows])
    lines = ["| field | value | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {_cell(kind)} | {_cell(meaning)} |" for name, kind, meaning in rows]
    return "\n".join(lines)


def schema_tables(schema: ModuleType | None = None) -> str:
    """Markdown tables of every line kind and field of ``metrics.jsonl``, in the writer's order."""
    schema = schema or load_schema()

    def fields(table) -> list[tuple[str, str, str]]:
        return [(item.name, item.kind, item.meaning) for item in table]

    header = [(name, "", meaning) for name, meaning in schema.HEADER_FIELDS.items()]
    header += [(name, "", f"(optional) {meaning}") for name, meaning in schema.OPTIONAL_HEADER_FIELDS.items()]
    sections = [
        ("Header line `{\"run\": {...}}`", "The first line; the report reads these as they are.", header),
        ("Train line: what the site sends", "After `round`, `site`, `task` (`\"train\"`), in this order.", fields(schema.SITE_TRAIN_FIELDS)),
        ("Train line: what the server adds", "After the site's fields.", fields(schema.SERVER_TRAIN_FIELDS)),
        ("Segmentation site fields", "A segmentation site sends `*_dice` where a classification site sends `*_acc`.", fields(schema.DENSE_SITE_FIELDS)),
        ("Validate line", "After `round`, `site`, `task` (`\"validate\"`): the global model made in that `round`.", fields(schema.VALIDATE_FIELDS)),
        ("Failed site line", "A train or validate task that failed, timed out or died (with `weight` 0 for train).", fields(schema.FAILED_SITE_FIELDS)),
        ("Round line", "After `round` (no `site`).", fields(schema.ROUND_FIELDS)),
    ]
    parts = []
    for title, note, rows in sections:
        parts += [f"### {title}", "", note, "", _table(rows), ""]
    dropped = ["| field | why it is left out |", "|---|---|"]
    dropped += [f"| `{name}` | {_cell(reason)} |" for name, reason in schema.DROPPED_SITE_FIELDS.items()]
    parts += ["### Site fields left out on purpose", "", "\n".join(dropped), ""]
    return "\n".join(parts)


def repository_links(text: str, page_uri: str) -> list[tuple[str, str]]:
    """(link as written, repository path) of each relative link in ``text`` that leaves ``docs/``.

    ``page_uri`` is the page's path as MkDocs names it; a page of ``docs/`` is ``docs/<uri>`` in the repository,
    a file added by :func:`on_files` is its repository path."""
    found = []
    for _, target, _ in _LINK.findall(_without_code(text)):
        path = target.split("#", 1)[0]
        if not path or re.match(r"^[a-z][a-z0-9+.-]*:", path) or path.startswith("/"):
            continue
        repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(page_uri), path))
        if not repo_path.startswith("docs/"):
            found.append((target, repo_path))
    return found


def _without_code(text: str) -> str:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _repository_uri(page_uri: str, added: set[str]) -> str:
    return page_uri if page_uri in added else f"docs/{page_uri}"


def on_files(files, config):
    """Add the repository files the docs link to (and, from Markdown files, what those link to)."""
    from mkdocs.structure.files import File

    added: set[str] = set()
    pending = [f"docs/{file.src_uri}" for file in files if file.src_uri.endswith(".md")]
    while pending:
        repo_page = pending.pop()
        text = (ROOT / repo_page).read_text(encoding="utf-8")
        for _, repo_path in repository_links(text, repo_page):
            if repo_path in added or repo_path.startswith("../") or not (ROOT / repo_path).is_file():
                continue  # a missing target stays a broken link: MkDocs reports it
            added.add(repo_path)
            files.append(File(repo_path, str(ROOT), config["site_dir"], config["use_directory_urls"]))
            if repo_path.endswith(".md"):
                pending.append(repo_path)
    config["_repository_files"] = added
    return files


def on_page_markdown(markdown, page, config, files):
    """The schema tables in place of the marker; links out of ``docs/`` pointed at the files added above."""
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, schema_tables())
    added = config.get("_repository_files", set())
    page_uri = page.file.src_uri
    repo_page = _repository_uri(page_uri, added)
    for written, repo_path in repository_links(markdown, repo_page):
        if repo_path not in added:
            continue  # left as written: MkDocs reports the missing target
        anchor = written[len(written.split("#", 1)[0]):]
        relative = posixpath.relpath(repo_path, posixpath.dirname(page_uri) or ".")
        markdown = markdown.replace(f"]({written})", f"]({relative}{anchor})")
    return markdown
