"""Save -> fresh process -> load, with and without the package installed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import random_histories, tiny_model
from fresh_process import fresh_env, scores_without_package

from modeling_missrec import MISSRecModel


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
    scores = scores_without_package(folder, "missrec", items, tmp_path)
    with torch.no_grad():
        assert torch.equal(scores, model(items).scores)


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
