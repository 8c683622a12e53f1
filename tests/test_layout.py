"""docs/layout.md lists the package as it is: every module, nothing that is gone."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(\S+)\s{2,}(\S.*)$")


def _listed() -> dict[str, str]:
    text = (ROOT / "docs" / "layout.md").read_text()
    block = text.split("```")[1]
    found = {}
    for line in block.strip().splitlines():
        match = LINE.match(line)
        assert match, f"docs/layout.md: {line!r} is not 'path  description'"
        found[match[1]] = match[2]
    return found


def test_the_layout_page_lists_every_module_and_no_other():
    listed = {p for p in _listed() if p.endswith(".py")}
    actual = {p.relative_to(ROOT).as_posix() for p in (ROOT / "keras_prune_guard").rglob("*.py")}
    assert listed - actual == set(), "listed but not in the tree"
    assert actual - listed == set(), "in the tree but not in docs/layout.md"


def test_the_layout_page_lists_the_top_level_folders_that_exist():
    folders = {p for p in _listed() if p.endswith("/")}
    assert {"tests/", "benchmarks/", "examples/", "docs/"} <= folders
    for folder in folders:
        assert (ROOT / folder).is_dir(), folder


def test_every_room_says_what_it_is_for():
    for init in (ROOT / "keras_prune_guard").glob("*/__init__.py"):
        assert init.read_text().startswith('"""'), init
