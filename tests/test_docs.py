"""The documentation site builds in strict mode, with the API reference from the docstrings,
and every Python snippet of the user guide runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = [ROOT / "docs" / "index.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
FENCE = re.compile(r"^\s*```(\S*)", re.M)


def test_docs_site_builds_strict_with_the_api_reference(tmp_path):
    pytest.importorskip("mkdocstrings", reason="the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="the docs extra: pip install -e '.[docs]'")
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
    gallery = (site / "gallery" / "index.html").read_text()
    for example in sorted((ROOT / "docs" / "examples").glob("[!_]*.py")):
        assert example.stem in gallery, f"{example.name} is not on the gallery page"


def python_blocks(page: Path) -> list[str]:
    """The page's ```python blocks, in order; every fence in the guide is python, bash or
    text, unindented, so that no Python snippet escapes this test."""
    text = page.read_text()
    fences = FENCE.findall(text)
    languages = set(fences[::2])  # every other fence opens a block
    assert languages <= {"python", "bash", "text"}, f"{page.name}: fences {languages}"
    blocks = PYTHON_BLOCK.findall(text)
    assert len(blocks) == fences[::2].count("python"), f"{page.name}: an indented python block"
    return blocks


# Pages whose Python blocks no test runs yet (their signatures and fragments need objects
# the page does not build); every other page's blocks run here or in test_examples.py.
NOT_RUN = {"backends.md", "cluster.md"}


def test_every_python_block_on_the_site_is_run():
    """Guide pages and index.md run here, the gallery's included sources in
    test_examples.py; no other page may hold a Python block that nothing executes."""
    run_here = {page.resolve() for page in GUIDE}
    for page in sorted((ROOT / "docs").rglob("*.md")):
        if page.resolve() in run_here or page.name in NOT_RUN:
            continue
        # first lines of every python block, indented or not
        firsts = re.findall(r"^\s*```python\n\s*(.*)$", page.read_text(), re.M)
        if page.name == "gallery.md":
            assert firsts and all(line.startswith("--8<--") for line in firsts), firsts
        else:
            assert not firsts, f"{page.relative_to(ROOT)}: a Python block no test runs"


def test_the_guide_has_every_topic():
    names = {page.stem for page in GUIDE}
    for topic in ("quickstart", "marginals", "rounding", "training-loop", "gpu", "distributed",
                  "out-of-core", "codes", "trainer"):  # fmt: skip
        assert topic in names, topic


@pytest.mark.parametrize("page", GUIDE, ids=lambda page: page.stem)
def test_guide_snippets_run(page, tmp_path):
    """Each page's snippets run in order, as one script file (so that multiprocessing can
    spawn from it), in a fresh process and an empty working folder (some write files)."""
    blocks = python_blocks(page)
    if not blocks:
        pytest.skip(f"{page.name} has no Python snippet")
    script = tmp_path / f"{page.stem.replace('-', '_')}_snippets.py"
    script.write_text("\n\n".join(blocks))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "sela")])}
    run = subprocess.run(
        [sys.executable, script.name], capture_output=True, text=True, cwd=tmp_path, env=env,
        timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, f"{page.name}:\n{run.stderr[-3000:]}"
