"""Every Python snippet in README.md runs, in the order it appears, each with its own fresh globals (so a
snippet that uses a name without importing it fails).

They run in a folder laid out as the README's examples assume: ``photos/`` and ``train/`` (synthetic
labeled shapes with their COCO files) and the home ``my-home``. The one substitution: the official
``"vit_b"`` becomes ``"tiny-random"`` (no checkpoint can be downloaded here).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SUBSTITUTIONS = {'"vit_b"': '"tiny-random"'}
README = Path(__file__).resolve().parents[1] / "README.md"


def _snippets() -> list[tuple[int, str]]:
    text = README.read_text()
    out = []
    for m in re.finditer(r"^```python\n(.*?)^```", text, re.M | re.S):
        line = text[: m.start()].count("\n") + 1
        out.append((line, m.group(1)))
    return out


def test_the_readme_has_python_snippets_and_closes_every_fence():
    text = README.read_text()
    assert len(_snippets()) >= 5
    assert len(re.findall(r"^```", text, re.M)) % 2 == 0


@pytest.mark.slow
def test_every_python_snippet_in_the_readme_runs(tmp_path, monkeypatch):
    from samsearch.data.synthetic import make_dataset

    make_dataset(tmp_path / "photos", n_images=6, seed=1)
    make_dataset(tmp_path / "train", n_images=6, seed=2)
    monkeypatch.chdir(tmp_path)
    for line, code in _snippets():
        for old, new in SUBSTITUTIONS.items():
            code = code.replace(old, new)
        try:
            exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
        except Exception as exc:  # name the snippet: the traceback's file is README.md:<line>
            raise AssertionError(f"README.md snippet at line {line} failed: {exc!r}") from exc
    assert (tmp_path / "clusters.html").exists() and (tmp_path / "maps" / "legend.json").exists()


def _cli_options() -> list[tuple[str, str]]:
    """(command, --option) for every option of every samsearch command."""
    from typer.main import get_command

    from samsearch.cli import app

    out = []

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])
        out.extend((" ".join(path), o) for p in cmd.params for o in getattr(p, "opts", []) if o.startswith("--"))

    walk(get_command(app), [])
    return out


def test_every_cli_option_is_in_the_readme():
    text = README.read_text()
    missing = [f"{cmd} {opt}" for cmd, opt in _cli_options() if opt not in text]
    assert not missing, f"options the README does not mention: {missing}"
    assert ("bank build", "--from-clusters") in _cli_options()
    assert "samsearch bank build --from-clusters RUN --name NAME" in text
