"""Load a saved folder in a fresh interpreter that cannot import this package, as a transformers-only user would."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

# The first lines of every fresh-process script: imports of the `modeling_missrec` package fail in the child,
# so everything must come from the saved folder.
WITHOUT_PACKAGE = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "modeling_missrec" or name.startswith("modeling_missrec."):
                raise ImportError("the package must not be needed: " + name)

    sys.meta_path.insert(0, Block())
    """
)

RUN_WITHOUT_PACKAGE = WITHOUT_PACKAGE + textwrap.dedent(
    """
    import torch
    import transformers
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    folder, model_type, auto_class, inputs, out = sys.argv[1:6]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert config.model_type == model_type, config.model_type
    if hasattr(transformers, auto_class):  # AutoModel, AutoModelForPreTraining
        model = getattr(transformers, auto_class).from_pretrained(folder, trust_remote_code=True)
    else:  # an Auto class transformers does not have: the class its auto_map entry names, from the folder
        model = get_class_from_dynamic_module(config.auto_map[auto_class], folder).from_pretrained(folder)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        output = model.eval()(**torch.load(inputs))
    torch.save({"class": type(model).__name__, **{k: v for k, v in output.items() if torch.is_tensor(v)}}, out)
    """
)


def fresh_env(tmp_path: Path) -> dict[str, str]:
    """Offline, with an empty `HF_HOME` under `tmp_path` and no `PYTHONPATH`."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), TRANSFORMERS_VERBOSITY="error")
    env.pop("PYTHONPATH", None)
    return env


def run_without_package(
    folder: Path, model_type: str, inputs: dict[str, torch.Tensor], tmp_path: Path, auto_class: str = "AutoModel"
) -> dict:
    """Load `folder` with `auto_class` (`trust_remote_code=True`) in a fresh process and run `model(**inputs)`:
    the output's tensors by field, and the loaded class's name under `"class"`."""
    torch.save(inputs, tmp_path / "inputs.pt")
    script = tmp_path / "load.py"
    script.write_text(RUN_WITHOUT_PACKAGE)
    command = [sys.executable, str(script), str(folder), model_type, auto_class, str(tmp_path / "inputs.pt")]
    # cwd is not the repository: nothing is importable from the working directory.
    subprocess.run([*command, str(tmp_path / "output.pt")], check=True, cwd=tmp_path, env=fresh_env(tmp_path))
    return torch.load(tmp_path / "output.pt")
