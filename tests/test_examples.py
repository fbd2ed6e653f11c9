"""Every gallery example runs (at its --quick settings) and draws its figure, so that the
scripts in docs/examples cannot rot; the committed figures exist and the gallery shows them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("[!_]*.py"))  # _gallery.py: shared helpers
GALLERY = ROOT / "docs" / "gallery.md"


def figures(example: Path) -> list[str]:
    """The PNG names an example writes, from its source."""
    return sorted(set(re.findall(r"([a-z_]+\.png)", example.read_text())))


def test_every_example_is_on_the_gallery_page_with_its_committed_figure():
    assert EXAMPLES
    page = GALLERY.read_text()
    for example in EXAMPLES:
        assert f'--8<-- "{example.name}"' in page, f"{example.name}: source not on the page"
        for png in figures(example):
            assert f"images/{png}" in page, f"{png} not shown on the gallery page"
            assert (ROOT / "docs" / "images" / png).is_file(), f"docs/images/{png} not committed"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.stem)
def test_example_runs_and_draws_its_figure(example, tmp_path):
    pytest.importorskip("matplotlib")
    if "sklearn" in example.read_text():
        pytest.importorskip("sklearn")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    run = subprocess.run(
        [sys.executable, str(example), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    for png in figures(example):
        image = tmp_path / png
        assert image.is_file() and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
