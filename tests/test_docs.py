"""docs/models.md: its generated tables match the registry, and its hand-written parameter-count
table matches the expected counts of tests/mixers/test_param_counts.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import ssmlab
from tests.mixers.test_param_counts import CASES

ROOT = Path(__file__).resolve().parent.parent
MODELS_MD = ROOT / "docs" / "models.md"


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_models_md_is_up_to_date(capsys):
    assert _generator().main(["--check", str(MODELS_MD)]) == 0, capsys.readouterr().err


def test_check_mode_catches_a_stale_table_and_writing_fixes_it(tmp_path, capsys):
    generate = _generator()
    page = tmp_path / "models.md"
    text = MODELS_MD.read_text()
    page.write_text(text.replace("| `mamba` |", "| `mamba-old` |", 1))
    assert generate.main(["--check", str(page)]) == 1
    assert "out of date in mixers; run: python docs/generate.py" in capsys.readouterr().err
    assert generate.main([str(page)]) == 0 and page.read_text() == text
    page.write_text("# Models\n\nno markers\n")
    assert generate.main(["--check", str(page)]) == 1
    page.write_text("<!-- generated:colours -->\n<!-- /generated -->\n")
    with pytest.raises(ValueError, match="unknown generated section 'colours'"):
        generate.main(["--check", str(page)])


def _official_rows() -> list[list[str]]:
    section = MODELS_MD.read_text().split("## Parameter counts against the official code", 1)[1].split("\n## ")[0]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| `")]


@pytest.mark.parametrize("name, d_model, options, official", CASES)
def test_official_count_table_matches_the_tests(name, d_model, options, official):
    """The hand-written table gives, for each case, the official count the test expects, the count ssmlab
    has now, and their difference."""
    rows = [r for r in _official_rows() if f"`{name}`" in r[0] and r[2].startswith(f"{official:,}")]
    assert len(rows) == 1, f"docs/models.md: no single row for {name} with official count {official:,}"
    ours = sum(p.numel() for p in ssmlab.create_mixer(name, d_model, **options).parameters() if p.requires_grad)
    difference = 100 * (ours - official) / official
    assert rows[0][4].startswith(f"{ours:,} "), f"docs/models.md: {name} has {ours:,} parameters: {rows[0][4]}"
    assert rows[0][5] == ("0.00%" if round(difference, 2) == 0 else f"{difference:+.2f}%"), rows[0][5]
