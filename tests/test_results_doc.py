"""``docs/results.md`` is what ``obs report`` makes of its result files and notes."""

from __future__ import annotations

from itertools import zip_longest
from pathlib import Path

from launch.cmd_report import write_report

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_results_md_is_regenerated_from_its_json_and_notes(tmp_path: Path) -> None:
    """A round written into results.md alone would be lost at the next regeneration
    (``obs report --results docs/results/json --out docs/results.md --figures
    docs/results --notes docs/results/notes.md``): notes.md is where it belongs."""
    out = tmp_path / "docs" / "results.md"
    write_report(DOCS / "results" / "json", out, tmp_path / "docs" / "results",
                 DOCS / "results" / "notes.md")
    made = out.read_text().replace(f"`{(DOCS / 'results' / 'json').as_posix()}`",
                                   "`docs/results/json`")
    kept = (DOCS / "results.md").read_text()
    if made != kept:
        pairs = zip_longest(made.splitlines(), kept.splitlines())
        line = next(i for i, (a, b) in enumerate(pairs, 1) if a != b)
        raise AssertionError(f"docs/results.md differs from obs report's output at line "
                             f"{line}: edit docs/results/notes.md (or the JSON) and "
                             f"regenerate it")
