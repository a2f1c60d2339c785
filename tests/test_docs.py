"""The documentation names files, commands and sections that exist: README.md, docs/*.md and bench/README.md."""

import re

import pytest

from tests.support.live_server import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
TOP_LEVEL = {path.name for path in ROOT.iterdir() if not path.name.startswith(".")}
FILE_ENDINGS = (".py", ".md", ".cpp", ".sh", ".txt", ".toml", ".json", ".html", ".js", ".css")


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(heading) for heading in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_the_paths_a_page_names_exist(page):
    project_files = {path.name for path in ROOT.rglob("*") if ".venv" not in path.parts}
    missing = []
    for span in code_spans(page.read_text()):
        if " " in span or "*" in span or "<" in span or "{" in span:
            continue
        first = span.split("/")[0]
        if "/" in span and first in TOP_LEVEL:
            if not (ROOT / span).exists():
                missing.append(span)
        elif "/" not in span and span.endswith(FILE_ENDINGS) and span not in project_files:
            missing.append(span)
    assert missing == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_bench_commands_name_modules_that_exist(page):
    text = page.read_text()
    assert not re.findall(r"python3? bench/\w+\.py", text), "bench scripts run as modules: python -m bench.X"
    for module in re.findall(r"python3? -m ((?:bench|loupe|tests)\.[\w.]+)", text):
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), module


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_links_between_the_pages_lead_somewhere(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and anchor not in anchors(linked)):
            broken.append(target)
    assert broken == []
