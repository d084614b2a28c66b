"""The READMEs keep up with the code: every setting in both settings tables, every page of
docs/ linked from both, and no claim that a shipped feature is missing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jangdok.settings import environment_variables

ROOT = Path(__file__).resolve().parents[1]
READMES = {"README.md": "| setting | environment variable | default |",
           "README.ko.md": "| 설정 | 환경 변수 (`.env`에도 쓸 수 있음) | 기본값 |"}


def _table_after(text: str, header: str) -> str:
    lines = text.splitlines()
    start = lines.index(header)
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return "\n".join(rows)


@pytest.mark.parametrize("readme", READMES)
def test_the_settings_table_names_every_setting(readme: str) -> None:
    table = _table_after((ROOT / readme).read_text(encoding="utf-8"), READMES[readme])
    named = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    assert set(environment_variables()) - named == set()


@pytest.mark.parametrize("readme", READMES)
def test_every_page_of_docs_is_linked(readme: str) -> None:
    text = (ROOT / readme).read_text(encoding="utf-8")
    pages = sorted(path.name for path in (ROOT / "docs").glob("*.md"))
    assert pages and [page for page in pages if f"](docs/{page})" not in text] == []


def test_the_korean_guide_does_not_call_the_local_tier_unavailable() -> None:
    text = (ROOT / "README.ko.md").read_text(encoding="utf-8")
    assert "CACHE_LOCAL_DIR" in text and "아직 제공되지 않습니다" not in text
