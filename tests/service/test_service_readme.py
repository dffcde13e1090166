"""README.md and README.ja.md document every setting and stay in step with each other."""

from __future__ import annotations

import re
from pathlib import Path

from slotq.settings import KNOBS
from worker.settings import _INTEGER_KNOBS

ROOT = Path(__file__).resolve().parents[2]
VARIABLES = {knob.env for knob in KNOBS} | {variable for _, variable, _, _ in _INTEGER_KNOBS} | {"SLOTQ_WORKER_POOL"}


def documented(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    return set(re.findall(r"^\| `(SLOTQ_[A-Z_]+)` \|", text, flags=re.MULTILINE))


def test_readme_lists_every_setting() -> None:
    assert documented(ROOT / "README.md") == VARIABLES


def test_japanese_guide_lists_every_setting() -> None:
    assert documented(ROOT / "README.ja.md") == VARIABLES


def test_guides_show_same_commands() -> None:
    def commands(path: Path) -> list[str]:
        return re.findall(r"^(?:make|slotq) [^#\n]*?(?=\s*(?:#|$))", path.read_text(encoding="utf-8"), flags=re.MULTILINE)

    assert commands(ROOT / "README.md") == commands(ROOT / "README.ja.md")
