"""Save -> fresh process -> load, with and without the package installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import random_histories, tiny_model

from modeling_missrec import MISSRecModel

# Runs in a fresh interpreter whose imports of the `modeling_missrec` package fail, as on a machine that
# only has transformers: everything must come from the saved folder.
LOAD_WITHOUT_PACKAGE = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "modeling_missrec" or name.startswith("modeling_missrec."):
                raise ImportError("the package must not be needed: " + name)

    sys.meta_path.insert(0, Block())
    import torch
    from transformers import AutoConfig, AutoModel

    folder, items, out = sys.argv[1], sys.argv[2], sys.argv[3]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert AutoConfig.from_pretrained(folder, trust_remote_code=True).model_type == "missrec"
    with torch.no_grad():
        torch.save(model(torch.load(items)).scores, out)
    """
)


def fresh_env(tmp_path) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), TRANSFORMERS_VERBOSITY="error")
    env.pop("PYTHONPATH", None)
    return env


@pytest.mark.parametrize(
    "overrides",
    [{}, {"id_mode": "transductive", "item_mm_fusion": "dynamic_instance", "seq_mm_fusion": "contextual"}],
)
def test_remote_code_round_trip_in_a_fresh_process_is_bit_identical(tmp_path, overrides):
    model = tiny_model(**overrides)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_missrec.MISSRecConfig",
        "AutoModel": "modeling_missrec.MISSRecModel",
    }
    saved = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "modeling_missrec.py", "configuration_missrec.py", "interest_missrec.py"} <= saved
    assert "layers_missrec.py" in saved

    items, _ = random_histories(8, 10, 40)
    torch.save(items, tmp_path / "items.pt")
    script = tmp_path / "load.py"
    script.write_text(LOAD_WITHOUT_PACKAGE)
    subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "items.pt"), str(tmp_path / "scores.pt")],
        check=True,
        cwd=tmp_path,  # not the repository: nothing importable from the working directory
        env=fresh_env(tmp_path),
    )
    with torch.no_grad():
        expected = model(items).scores
    assert torch.equal(torch.load(tmp_path / "scores.pt"), expected)


def test_installed_package_loads_without_trust_remote_code(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    code = (
        "import sys, torch, modeling_missrec\n"
        "from transformers import AutoModel\n"
        "m = AutoModel.from_pretrained(sys.argv[1]).eval()\n"
        "assert type(m) is modeling_missrec.MISSRecModel, type(m)\n"
        "print(m.config.num_items, m.config.num_interests)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "model")],
        check=True, capture_output=True, text=True, cwd=tmp_path, env=fresh_env(tmp_path),
    )
    assert result.stdout.split() == [str(model.config.num_items), str(model.config.num_interests)]


def test_in_process_reload_keeps_catalogue_and_interests(tmp_path):
    model = tiny_model(id_mode="transductive")
    model.save_pretrained(tmp_path)
    loaded = MISSRecModel.from_pretrained(tmp_path).eval()
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, dict(loaded.named_buffers())[name]), name
    items, lengths = random_histories(5, 6, 40)
    with torch.no_grad():
        assert torch.equal(loaded(items, lengths).scores, model(items, lengths).scores)
