"""The documentation site builds with warnings as errors, and the docs agree with the code.

``mkdocs build --strict`` runs into a temporary folder. While a page named in mkdocs.yml's nav is
not written yet, the rest of the site is still built strictly (with a placeholder for that page, in
the temporary copy only) and the test is then skipped naming the missing pages, so the gap shows
in the test summary instead of hiding.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import warppack

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def _config() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((REPO / "mkdocs.yml").read_text())


def _nav_pages(nav) -> list:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _build(config_path: Path, site: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config_path), "-d", str(site)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, NO_COLOR="1"),
    )


def _copied_config(tmp_path: Path, config: dict, edits: dict) -> Path:
    """mkdocs.yml for a copy of docs/ in ``tmp_path`` with ``edits`` (page -> text) written over it."""
    yaml = pytest.importorskip("yaml")
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    for page, text in edits.items():
        (docs / page).write_text(text)
    config = dict(config, docs_dir=str(docs), site_dir=str(tmp_path / "site"))
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            plugin["mkdocstrings"]["handlers"]["python"]["paths"] = [str(REPO)]
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_strict_build_fails_on_a_warning(tmp_path):
    # The strict build above is only a check if a warning really fails it (``--quiet`` once hid them).
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[test]'")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed: pip install -e '.[test]'")
    index = (DOCS / "index.md").read_text() + "\n[a page that does not exist](no-such-page.md)\n"
    built = _build(_copied_config(tmp_path, _config(), {"index.md": index}), tmp_path / "site", tmp_path)
    assert built.returncode != 0 and "no-such-page.md" in built.stdout + built.stderr


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[test]'")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed: pip install -e '.[test]'")
    config = _config()
    pages = _nav_pages(config["nav"])
    missing = [page for page in pages if not (DOCS / page).is_file()]
    site = tmp_path / "site"
    if not missing:
        built = _build(REPO / "mkdocs.yml", site, REPO)
    else:
        pages_to_add = {page: f"# {page}\n\nNot written yet.\n" for page in missing}
        built = _build(_copied_config(tmp_path, config, pages_to_add), site, tmp_path)
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{built.stdout}\n{built.stderr}"
    assert (site / "index.html").is_file()
    for page in pages:
        html = site / (page[: -len(".md")] + "/index.html" if page != "index.md" else "index.html")
        assert html.is_file(), f"{page} was not rendered"

    # the API reference documents every exported name
    api = (site / "api" / "index.html").read_text()
    undocumented = [
        name
        for name in warppack.__all__
        if not name.startswith("__") and not re.search(rf'id="warppack(\.\w+)*\.{name}"', api)
    ]
    assert not undocumented, f"docs/api.md renders no entry for {undocumented}"
    if missing:
        pytest.skip(f"mkdocs.yml's nav names pages not written yet: {', '.join('docs/' + p for p in missing)} "
                    f"(the rest of the site builds with --strict)")


def test_figures_are_up_to_date():
    run = subprocess.run([sys.executable, str(DOCS / "_scripts" / "figures.py"), "--check"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_every_markdown_page_is_in_the_nav():
    pages = set(_nav_pages(_config()["nav"]))
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if "_scripts" not in p.parts}
    assert on_disk <= pages, f"pages missing from mkdocs.yml's nav: {sorted(on_disk - pages)}"


def test_cli_page_documents_every_command_and_exit_code():
    from warppack.cli.errors import EXIT_CODES
    from warppack.cli.main import build_parser

    text = (DOCS / "cli.md").read_text()
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for command in commands:
        assert f"warppack {command}" in text, f"docs/cli.md does not describe `warppack {command}`"
    table = dict(re.findall(r"^\|\s*`?(\d+)`?\s*\|\s*([^|]+)\|", text, flags=re.M))
    assert {int(code) for code in table} == set(EXIT_CODES), f"docs/cli.md's exit-code table: {sorted(table)}"


def test_changelog_names_the_current_version():
    changelog = (REPO / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[?(\d+\.\d+\.\d+[^\]\s]*)\]?", changelog, flags=re.M)
    assert versions, "CHANGELOG.md has no '## X.Y.Z' section"
    assert versions[0] == warppack.__version__, f"CHANGELOG.md's latest is {versions[0]}, the package is {warppack.__version__}"
    pyproject = (REPO / "pyproject.toml").read_text()
    match = re.search(r'^version\s*=\s*"([^"]+)"', pyproject, flags=re.M)
    if match:  # a static version in pyproject must agree too
        assert match.group(1) == warppack.__version__


def test_readme_setup_commands_are_what_ci_runs():
    """The README opens with the two setup commands, and .ci/run runs the second one verbatim."""
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    assert len(commands) >= 2, "README.md lost its two ```bash setup commands"
    setup = readme[readme.index("## Set up"):]
    setup = setup[: setup.find("\n## ", 1) if "\n## " in setup[1:] else len(setup)]
    in_setup = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    assert in_setup == commands[:2], "the first two ```bash blocks of README.md must be the ones under '## Set up'"
    assert all(len(c.strip().splitlines()) == 1 for c in in_setup), f"each setup command is one line: {in_setup}"
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    runs = [line.strip() for line in ci if line.strip() and not line.lstrip().startswith(("#", "set ", "cd ", "export "))]
    assert runs == [in_setup[1].strip()], f".ci/run runs {runs}, the README's test command is {in_setup[1].strip()!r}"
