"""docs/architecture.md stays true: what it names exists, and nothing points outside the
repository for the design.

- every backticked project path (``deltaferry/x.py``, ``flows/``, ...) exists;
- every backticked ``path.py:name`` (``deltaferry/commit.py:put_manifest``,
  ``deltaferry/state.py:StateStore.commit_checkpoint``) imports and resolves;
- the module map names every production module;
- the in-page links and the code comments' "docs/architecture.md, section N "Title""
  name sections that exist;
- no file of the repository refers to a design document outside it;
- ``deltaferry --help`` names every source kind, not SQL databases alone.
"""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
# the folders whose paths the doc names (project-relative)
TOP = (
    "deltaferry/",
    "flows/",
    "sources/",
    "destinations/",
    "contracts/",
    "deployments/",
    "tests/",
    "docs/",
    "bench/",
    ".ci/",
)
# the packages whose every module the module map lists
MAPPED = ("deltaferry", "flows", "sources", "destinations", "contracts")
# written in parts so that this file does not match itself
OUTSIDE = ("DESIGN" + ".md", ".." + "/shared")


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def doc_refs(text: str) -> list[tuple[str, str | None]]:
    """(path, attribute or None) for every backticked project path in ``text``; paths with
    placeholders (``sources/<kind>/``) are left out."""
    out = []
    for token in re.findall(r"`([^`\s]+)`", text):
        if not token.startswith(TOP) or any(c in token for c in "<>{}*"):
            continue
        path, _, attr = token.partition(":")
        out.append((path, attr or None))
    return out


def module_name(path: str) -> str:
    parts = Path(path).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(path: str, attr: str) -> object:
    """Import the module at ``path`` and follow ``attr`` (dotted) on it."""
    obj: object = importlib.import_module(module_name(path))
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def repo_files() -> list[Path]:
    """Tracked and untracked (not ignored) files, outside .venv and .git."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode().split("\0")
        files = [ROOT / f for f in listed if f]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        files = [p for p in ROOT.rglob("*") if p.is_file()]
    skip = {".venv", ".git"}
    return [p for p in files if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


# --- the checks themselves can fail -----------------------------------------------------


def test_checks_catch_what_they_should():
    refs = doc_refs("see `deltaferry/nope.py`, `flows/sync.py:sync_job`, `sources/<kind>/`")
    assert refs == [("deltaferry/nope.py", None), ("flows/sync.py", "sync_job")]
    assert not (ROOT / refs[0][0]).exists()
    with pytest.raises(AttributeError):
        resolve("deltaferry/commit.py", "no_such_function")
    with pytest.raises(AttributeError):
        resolve("deltaferry/state.py", "StateStore.no_such_method")
    assert module_name("contracts/__init__.py") == "contracts"
    assert slug("3 Commit protocol and recovery") == "3-commit-protocol-and-recovery"


# --- the doc ------------------------------------------------------------------------------


def test_every_path_in_the_doc_exists():
    refs = doc_refs(_text())
    assert len({p for p, _ in refs}) >= 60, "the doc names fewer paths than expected"
    missing = sorted({p for p, _ in refs if not (ROOT / p).exists()})
    assert missing == [], f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_function_in_the_doc_resolves():
    refs = sorted({(p, a) for p, a in doc_refs(_text()) if a})
    assert len(refs) >= 60, "the doc names fewer functions than expected"
    broken = []
    for path, attr in refs:
        assert path.endswith(".py"), f"`{path}:{attr}`: only modules have attributes"
        try:
            resolve(path, attr)
        except (ImportError, AttributeError) as e:
            broken.append(f"{path}:{attr} ({type(e).__name__}: {e})")
    assert broken == [], "docs/architecture.md names what does not exist:\n" + "\n".join(broken)


def _production_modules() -> list[str]:
    return sorted(
        str(p.relative_to(ROOT))
        for p in repo_files()
        if p.suffix == ".py" and p.relative_to(ROOT).parts[0] in MAPPED
    )


def test_module_map_lists_every_module():
    section = _text().split("## 8 Module map", 1)[1].split("\n## ", 1)[0]
    named = {p for p, _ in doc_refs(section)}
    modules = _production_modules()
    assert len(modules) > 40
    unlisted = [m for m in modules if m not in named]
    assert unlisted == [], f"add these to the module map of docs/architecture.md: {unlisted}"


def test_links_and_section_pointers_name_existing_sections():
    text = _text()
    anchors = {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}
    titles = {h.strip() for h in re.findall(r"^## \d+ (.+)$", text, flags=re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links and [a for a in links if a not in anchors] == []
    pointers = []
    for p in repo_files():
        if p.suffix != ".py":
            continue
        pointers += re.findall(
            r'docs/architecture\.md, section \d+ "([^"]+)"', p.read_text(errors="replace")
        )
    assert pointers, "no code comment points to docs/architecture.md"
    assert [t for t in pointers if t not in titles] == []


def test_nothing_points_outside_the_repository():
    found = []
    for p in repo_files():
        data = p.read_bytes()
        found += [f"{p.relative_to(ROOT)}: {n}" for n in OUTSIDE if n.encode() in data]
    assert found == [], (
        "the design lives in docs/architecture.md; these point outside the repository:\n"
        + "\n".join(found)
    )


# --- the CLI ------------------------------------------------------------------------------


def test_cli_help_names_every_source_kind():
    from deltaferry.cli import cli
    from deltaferry.config import source_kinds

    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    says = {"sql_database": "SQL databases", "rest_api": "REST APIs", "files": "file drops"}
    assert set(source_kinds()) <= set(says), f"describe the new source kind here: {source_kinds()}"
    assert [k for k in source_kinds() if says[k] not in text] == [], text
