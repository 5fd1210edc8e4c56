"""A non-editable install ships every subpackage and the presets, recipes and card templates (the explicit
`packages` / `package-dir` lists of pyproject.toml must name them)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
from helpers import REPO

SUBPACKAGES = [
    "modeling_missrec",
    "modeling_missrec.configuration",
    "modeling_missrec.pipelines",
    "modeling_missrec.pipelines.data",
    "modeling_missrec.pipelines.training",
    "modeling_missrec.pipelines.evaluation",
    "modeling_missrec.pipelines.conversion",
    "modeling_missrec.hub_cards",
    "modeling_missrec.hub_cards.space",
]


@pytest.mark.slow
def test_the_wheel_holds_every_subpackage_and_its_data_and_installs_outside_the_tree(tmp_path):
    build = [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("missrec_hf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    for package in SUBPACKAGES:
        assert package.replace(".", "/") + "/__init__.py" in names, f"the wheel lacks {package}"
    shipped = {
        "configuration/models": "*.json",
        "configuration/recipes": "*.yaml",
        "configuration/accelerate": "*.yaml",
        "configuration/search": "*.yaml",
        "hub_cards": "*_template.md",
    }
    for folder, pattern in shipped.items():
        for path in (REPO / folder).glob(pattern):
            assert f"modeling_missrec/{folder}/{path.name}" in names, f"the wheel lacks {folder}/{path.name}"
    assert not any(name.startswith(("tests/", "bench/")) for name in names)

    # Installed into a fresh environment, away from the source tree: every subpackage imports from the wheel.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)]
    subprocess.run(install, check=True, capture_output=True)
    code = (
        "import importlib, json\n"
        f"files = {{name: importlib.import_module(name).__file__ for name in {SUBPACKAGES!r}}}\n"
        "from modeling_missrec.configuration import available_presets, default_recipe_path\n"
        "print(json.dumps({'files': files, 'presets': available_presets(), 'recipe': str(default_recipe_path())}))\n"
    )
    result = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout)
    assert all(path.startswith(str(venv)) for path in found["files"].values()), found["files"]
    assert {"missrec-base", "missrec-tiny", "missrec-tuned"} <= set(found["presets"])
    assert found["recipe"].startswith(str(venv)) and found["recipe"].endswith("demo.yaml")
