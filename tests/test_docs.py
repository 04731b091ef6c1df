"""The documentation site (docs/, mkdocs.yml): every Python block on it runs as written, every object the API
pages render has a docstring (as have its public methods), and ``mkdocs build --strict`` passes and fails on a
broken cross-reference."""

import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
NEEDS = {"curation.md": ("transformers",), "own-model.md": ("transformers",)}


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def test_the_site_has_the_pages_the_issue_asks_for():
    names = {p.relative_to(DOCS).as_posix() for p in PAGES}
    assert {"index.md", "convention.md", "own-model.md", "curation.md", "theory.md", "cli.md"} <= names
    assert any(n.startswith("api/") for n in names)
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(n in nav for n in names)  # every page is on the site's navigation


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_every_python_block_runs(page, tmp_path, monkeypatch):
    for module in NEEDS.get(page.name, ()):
        pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)  # blocks that write (scores/, out/) write here
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, block in enumerate(python_blocks(page)):  # in order, one namespace per page
            exec(compile(block, f"{page.name}[block {k}]", "exec"), namespace)


def rendered_objects() -> list[str]:
    """Every ``::: path`` of the API pages, and ``path.member`` for each member an options block lists."""
    out = []
    for page in PAGES:
        for block in re.split(r"^(?=::: )", page.read_text(), flags=re.M):
            head = re.match(r"::: ([\w.]+)", block)
            if head:
                out.append(head.group(1))
                out += [f"{head.group(1)}.{m}" for m in re.findall(r"^ {8}- (\w+)$", block, flags=re.M)]
    return out


def test_every_rendered_object_has_a_docstring():
    griffe = pytest.importorskip("griffe")
    loader = griffe.GriffeLoader(search_paths=[str(ROOT)])
    for package in ("influence", "theory"):
        loader.load(package)
    loader.resolve_aliases(implicit=False, external=False)
    missing = []
    for path in rendered_objects():
        obj = loader.modules_collection.get_member(path)
        if not obj.docstring:
            missing.append(path)
        if obj.is_class:
            missing += [f"{path}.{n}" for n, m in obj.members.items()
                        if not n.startswith("_") and m.is_function and not m.docstring]
    assert len(rendered_objects()) >= 20 and not missing, missing


def mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, timeout=300, cwd=config.parent)


def test_site_builds_strict_and_a_broken_reference_fails(tmp_path):
    pytest.importorskip("mkdocstrings")
    ok = mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "site" / "api" / "influence" / "index.html").is_file()
    copy = tmp_path / "copy"
    for name in ("docs", "influence", "theory"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs" / "convention.md"
    page.write_text(page.read_text() + "\nSee [nothing][influence.no_such_function].\n")
    bad = mkdocs(copy / "mkdocs.yml", tmp_path / "bad-site")
    assert bad.returncode != 0 and "influence.no_such_function" in bad.stderr
