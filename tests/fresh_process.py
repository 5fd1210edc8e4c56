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

SCORE_WITHOUT_PACKAGE = WITHOUT_PACKAGE + textwrap.dedent(
    """
    import torch
    from transformers import AutoConfig, AutoModel

    folder, model_type, items, out = sys.argv[1:5]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert AutoConfig.from_pretrained(folder, trust_remote_code=True).model_type == model_type
    with torch.no_grad():
        torch.save(model(torch.load(items)).scores, out)
    """
)


def fresh_env(tmp_path: Path) -> dict[str, str]:
    """Offline, with an empty `HF_HOME` under `tmp_path` and no `PYTHONPATH`."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), TRANSFORMERS_VERBOSITY="error")
    env.pop("PYTHONPATH", None)
    return env


def scores_without_package(folder: Path, model_type: str, item_seq: torch.Tensor, tmp_path: Path) -> torch.Tensor:
    """`AutoModel.from_pretrained(folder, trust_remote_code=True)(item_seq).scores` computed in a fresh process."""
    torch.save(item_seq, tmp_path / "items.pt")
    script = tmp_path / "load.py"
    script.write_text(SCORE_WITHOUT_PACKAGE)
    command = [sys.executable, str(script), str(folder), model_type, str(tmp_path / "items.pt")]
    # cwd is not the repository: nothing is importable from the working directory.
    subprocess.run([*command, str(tmp_path / "scores.pt")], check=True, cwd=tmp_path, env=fresh_env(tmp_path))
    return torch.load(tmp_path / "scores.pt")
