"""What the docs tell a newcomer: how to install (there is no release to
install by name yet), where to look when something goes wrong, and a
performance page with one table of results."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.rst"))

# "pip install triopool", "pip install 'triopool[cloudpickle]'", ... : by name
# (a direct reference, "triopool[ray] @ git+...", names where to get it).
_BY_NAME = re.compile(
    r"""pip install\s+(?:-\S+\s+)*["']?triopool(?:\[[^\]]*\])?(?!\S*\s*@)"""
)


@pytest.mark.parametrize("path", [ROOT / "README.md", *PAGES], ids=lambda p: p.name)
def test_nothing_tells_users_to_install_triopool_by_name(path: Path) -> None:
    assert not _BY_NAME.findall(path.read_text()), path


def test_the_serialization_hint_does_not_install_triopool_by_name() -> None:
    source = (ROOT / "triopool" / "_serialize.py").read_text()
    assert not _BY_NAME.findall(source)


def test_getting_started_says_how_to_install_from_a_clone() -> None:
    text = (DOCS / "getting-started.rst").read_text()
    assert "pip install ." in text
    assert "pip install -e ." in text
    assert "git+" in text


def test_the_troubleshooting_page_is_listed_and_covers_the_usual_trouble() -> None:
    index = (DOCS / "index.rst").read_text()
    assert re.search(r"^\s+troubleshooting$", index, flags=re.M)
    page = (DOCS / "troubleshooting.rst").read_text()
    for topic in (
        "main guard",
        "cloudpickle",
        "Ctrl-C",
        "prints nothing",
        "ulimit -n",
        "macOS",
        "Windows",
        "3.13",
        "soft",
    ):
        assert topic in page, topic


def test_the_performance_page_has_one_table_of_results() -> None:
    page = (DOCS / "performance.rst").read_text()
    assert len(re.findall(r"^\.\. (?:list-table|table|csv-table)::", page, re.M)) == 1
    # Written for users, not as a log of targets met or missed.
    assert not re.search(r"\btargets? (?:met|missed|not met)\b", page, re.I)
