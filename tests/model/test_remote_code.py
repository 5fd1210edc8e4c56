"""Save -> fresh process -> load, with and without the package installed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import REPO, fresh_env, pretraining, random_histories, rec, run_without_package, tiny_model

from modeling_missrec import MISSRecModel

AUTO_MAP = {
    "AutoConfig": "configuration_missrec.MISSRecConfig",
    "AutoModel": "modeling_missrec.MISSRecModel",
    "AutoModelForPreTraining": "modeling_missrec.MISSRecForPreTraining",
    "AutoModelForSequentialRecommendation": "modeling_missrec.MISSRecForSequentialRecommendation",
}


@pytest.mark.parametrize(
    "overrides",
    [{}, {"id_mode": "transductive", "item_mm_fusion": "dynamic_instance", "seq_mm_fusion": "contextual"}],
)
def test_remote_code_round_trip_in_a_fresh_process_is_bit_identical(tmp_path, overrides):
    """A head's folder (what train.py saves) loads, without the package, as the head and as the base."""
    model = tiny_model(**overrides)
    folder = tmp_path / "model"
    rec(model).save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["auto_map"] == AUTO_MAP
    saved = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "modeling_missrec.py", "configuration_missrec.py", "interest_missrec.py"} <= saved
    assert {"layers_missrec.py", "scoring_missrec.py"} <= saved

    items, _ = random_histories(8, 10, 40)
    head = run_without_package(folder, "missrec", {"item_seq": items}, tmp_path, "AutoModelForSequentialRecommendation")
    base = run_without_package(folder, "missrec", {"item_seq": items}, tmp_path, "AutoModel")
    with torch.no_grad():
        assert head["class"] == "MISSRecForSequentialRecommendation" and base["class"] == "MISSRecModel"
        assert torch.equal(head["scores"], rec(model)(items).scores)
        assert torch.equal(base["sequence_embeddings"], model(items).sequence_embeddings)


def test_a_base_folder_loads_as_the_pre_training_head_in_a_fresh_process(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["auto_map"] == AUTO_MAP
    items, _ = random_histories(8, 10, 40, seed=1)
    batch = {"item_seq": items, "labels": torch.arange(1, 9), "augmented_item_seq": items.flip(0)}
    out = run_without_package(tmp_path / "model", "missrec", batch, tmp_path, "AutoModelForPreTraining")
    with torch.no_grad():
        expected = pretraining(model).eval()(**batch)
    assert out["class"] == "MISSRecForPreTraining"
    for field in ("loss", "seq_item_loss", "seq_seq_loss", "scores"):
        assert torch.equal(out[field], expected[field]), field


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
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=fresh_env(tmp_path),
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
        assert torch.equal(rec(loaded)(items, lengths).scores, rec(model)(items, lengths).scores)


def test_a_folder_saved_before_the_heads_loads_into_every_class(tmp_path):
    """Folders written before the heads existed (a `MISSRecModel` whose `auto_map` names only AutoConfig and
    AutoModel) load as the base, as either head and in the pipeline, with the same scores."""
    from transformers import AutoModelForPreTraining, pipeline

    from modeling_missrec import AutoModelForSequentialRecommendation, MISSRecForPreTraining

    model = tiny_model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {k: v for k, v in config["auto_map"].items() if k in ("AutoConfig", "AutoModel")}
    (tmp_path / "config.json").write_text(json.dumps(config))
    items, lengths = random_histories(5, 6, 40)
    head = AutoModelForSequentialRecommendation.from_pretrained(tmp_path).eval()
    assert type(AutoModelForPreTraining.from_pretrained(tmp_path)) is MISSRecForPreTraining
    with torch.no_grad():
        expected = rec(model)(items, lengths).scores
        assert torch.equal(head(items, lengths).scores, expected)
        assert torch.equal(rec(MISSRecModel.from_pretrained(tmp_path).eval())(items, lengths).scores, expected)
    served = pipeline("sequential-recommendation", model=str(tmp_path))(items[0, : lengths[0]].tolist(), top_k=3)
    top = head.recommend(items[:1], lengths[:1], top_k=3)
    assert [r["item_id"] for r in served] == top.item_ids[0].tolist()


def test_readme_using_the_model_snippets_run(tmp_path, monkeypatch):
    """docs/design.md's "Using the model" code runs as written, given a catalogue, histories and a collator."""
    import re

    import datasets
    from modeling_missrec.pipelines.data.collator import SequenceCollator

    page = (REPO / "docs" / "design.md").read_text()
    section = page.split("## Using the model", 1)[1].split("\n## ", 1)[0]
    model_code, trainer_code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:2]
    monkeypatch.chdir(tmp_path)
    generator = torch.Generator().manual_seed(0)
    items, lengths = random_histories(6, 5, 30)
    scope = {
        "text": torch.randn(30, 512, generator=generator),
        "image": torch.randn(30, 512, generator=generator),
        "item_seq": items,
        "targets": torch.randint(1, 31, (6,), generator=generator),
    }
    exec(model_code, scope)
    assert scope["out"].scores.shape == (6, 31) and scope["top"].item_ids.shape == (6, 10)
    assert type(scope["head"].missrec).__name__ == "MISSRecModel"
    histories = [row[:n].tolist() for row, n in zip(items, lengths)]
    rows = datasets.Dataset.from_dict({"history": histories, "target": scope["targets"].tolist()})
    scope["collator"] = SequenceCollator(rows, 5)
    exec(trainer_code, scope)
    before = {k: v.clone() for k, v in scope["head"].state_dict().items()}
    scope["trainer"].train()  # trains the head of the first snippet, interests re-discovered every epoch
    assert any(not torch.equal(v, before[k]) for k, v in scope["head"].state_dict().items())


# ------------------------------------------------------------------ the remote-code rule
PACKAGE = REPO / "modeling_missrec"
PACKAGE_GLUE = {"__init__.py", "auto.py", "demo.py"}  # registrations and entry points: never copied into a folder
THIRD_PARTY = {"torch", "numpy", "safetensors", "transformers", "peft", "faiss"}  # peft, faiss: optional


def test_remote_code_files_import_only_each_other():
    """Every flat module of `modeling_missrec/` but the glue travels with a saved model (docs/design.md, "Remote
    code"): it imports only the standard library, the libraries a transformers user has, and its siblings."""
    import ast

    remote = {p.name for p in PACKAGE.glob("*.py")} - PACKAGE_GLUE
    for name in sorted(remote):
        for node in ast.walk(ast.parse((PACKAGE / name).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                where = f"{name}: from {'.' * node.level}{node.module}"
                assert node.level == 1 and f"{node.module}.py" in remote, where
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                for module in modules:
                    top = module.split(".")[0]
                    assert top in THIRD_PARTY or top in sys.stdlib_module_names, f"{name} imports {module}"


def test_what_save_pretrained_copies_is_exactly_the_remote_code_files():
    """The files transformers copies for the model classes and the pipeline are the remote-code set: nothing in it
    is unused by saved folders, and nothing they need is outside it."""
    from transformers.dynamic_module_utils import get_relative_import_files

    copied = set()
    for entry in ("modeling_missrec.py", "modeling_sasrec.py", "pipeline_missrec.py"):
        copied |= {entry, *(p.rsplit("/", 1)[-1] for p in get_relative_import_files(str(PACKAGE / entry)))}
    assert copied == {p.name for p in PACKAGE.glob("*.py")} - PACKAGE_GLUE
