"""The documentation site builds in strict mode, with the API reference from the docstrings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_builds_strict_with_the_api_reference(tmp_path):
    pytest.importorskip("mkdocstrings", reason="the docs extra: pip install -e '.[docs]'")
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(site)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    api = (site / "api" / "index.html").read_text()
    for name in ("assign_labels", "sinkhorn_codes", "Bounds", "Assignment", "register"):
        assert f'id="equipart.{name}"' in api or f'id="equipart.backends.{name}"' in api, name
    assert "warm_start" in api  # parameters come from the numpydoc sections
