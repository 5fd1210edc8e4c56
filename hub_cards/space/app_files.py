"""Turn an exported model folder into a Hub Space: the demo page (`demo.py` beside this file, which
`python -m modeling_missrec.demo` opens) as its app.

The Space runs without this package: `missrec_demo.py` (a copy of the demo module) imports nothing of it, and the
model's code comes from the folder itself (remote code), so `requirements.txt` lists only public packages.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
from pathlib import Path

from huggingface_hub import ModelCard

from . import demo

APP = '''"""This Space: the missrec-hf demo page over the model in this folder (see missrec_demo.py)."""

from missrec_demo import main

main(["--model", ".", "--host", "0.0.0.0"])
'''
SPACE_PACKAGES = ("torch", "transformers", "peft", "huggingface_hub", "safetensors", "numpy", "gradio")


def space_requirements() -> list[str]:
    """The Space's `requirements.txt` lines: the package's own version ranges of what the page and the model's
    remote code import (torch's range admits the CPU build Spaces install)."""
    ranges = {}
    for requirement in importlib.metadata.requires("missrec-hf") or []:
        name = re.split(r"[ ;<>=!~\[]", requirement, maxsplit=1)[0]
        if name in SPACE_PACKAGES and name not in ranges:
            ranges[name] = requirement.split(";")[0].strip()
    return [ranges.get(name, name) for name in SPACE_PACKAGES]


def write_space_files(folder: str | os.PathLike) -> Path:
    """Add `app.py`, `missrec_demo.py` and `requirements.txt` to an exported model or adapter folder, and the
    Space settings (`sdk: gradio`, `app_file`) to its card, so the folder can be pushed as a Space."""
    folder = Path(folder)
    adapter_config = folder / "adapter_config.json"
    if adapter_config.is_file():
        base = json.loads(adapter_config.read_text()).get("base_model_name_or_path", "")
        if os.path.isdir(base):
            raise ValueError(
                f"the adapter's base {base} is a local folder, which a Space cannot reach: export with "
                "--base_model_id ORG/BASE (the base's Hub id)"
            )
    (folder / "app.py").write_text(APP)
    shutil.copy2(demo.__file__, folder / "missrec_demo.py")
    (folder / "requirements.txt").write_text("\n".join(space_requirements()) + "\n")
    card = ModelCard.load(folder / "README.md")
    card.data.sdk = "gradio"
    card.data.app_file = "app.py"
    try:
        card.data.sdk_version = importlib.metadata.version("gradio")
    except importlib.metadata.PackageNotFoundError:
        pass
    card.save(folder / "README.md")
    return folder
