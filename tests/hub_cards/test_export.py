"""Export of runs (model, LoRA adapter) and domains to Hub-ready folders, their cards, and the push to the Hub."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from helpers import REPO, fresh_env, rec, run_script_without_package, tiny_config
from huggingface_hub import DatasetCard, HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from modeling_missrec.hub_cards.export import export_model, item_popularity, main
from modeling_missrec.hub_cards.push import HubPushError, push_folder
from modeling_missrec.pipelines.data.collator import SequenceCollator, catalogue_features
from modeling_missrec.pipelines.data.loading import load_domain
from modeling_missrec.pipelines.evaluation.full_ranking import PopularityRecommender, evaluate_ranking
from modeling_missrec.pipelines.training.finetuning import apply_finetuning_strategy
from transformers import pipeline

from modeling_missrec import MISSRecModel
from modeling_missrec.index_missrec import INDEX_FILE
from modeling_missrec.pipeline_missrec import TASK
from modeling_missrec.served_files_missrec import load_item_metadata

try:  # the HTTP client huggingface_hub uses (httpx2 in 2.x, httpx in 1.x)
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx
DEMO = {"num_items": 60, "num_users": 100, "seed": 0}


def demo_domain():
    return load_domain("demo", demo_num_items=DEMO["num_items"], demo_num_users=DEMO["num_users"], demo_seed=0)


def evaluate(model, domain, prefix: str = "") -> dict:
    test = SequenceCollator(domain.sequences["test"], 12)
    metrics = evaluate_ranking(model, test, batch_size=64, protocols=("official", "exclude_history"))
    return {f"{prefix}test": metrics["official"], f"{prefix}test_exclude_history": metrics["exclude_history"]}


def write_run(folder: Path, model, domain, recipe: dict) -> dict:
    """A run folder in train.py's shape: the saved model (or adapter) and a metrics.json measured on `domain`."""
    model.save_pretrained(folder)
    train = SequenceCollator(domain.sequences["train"], 12)
    metrics = {
        "recipe": {**recipe, "output_dir": str(folder)},
        "num_processes": 1,
        "epochs": [{"epoch": 1, "loss": 4.2, "ndcg@10": 0.05}],
        **evaluate(rec(model), domain),
        **evaluate(PopularityRecommender(train.targets, len(domain.items)), domain, "popularity_"),
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return metrics


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A tiny MISSRec trained for a few steps on the small demo domain, saved as train.py would."""
    domain = demo_domain()
    torch.manual_seed(0)
    model = MISSRecModel(tiny_config(text_feature_dim=512, image_feature_dim=512))
    model.set_catalogue(**catalogue_features(domain.items))
    model.discover_interests()
    model.eval()
    folder = tmp_path_factory.mktemp("run")
    recipe = {
        "domain": "demo",
        "data_dir": None,
        **DEMO,
        "preset": "missrec-tiny",
        "pretrained": None,
        "strategy": "full",
        "id_mode": "inductive",
        "epochs": 1,
        "batch_size": 64,
        "learning_rate": 0.001,
    }
    metrics = write_run(folder, model, domain, recipe)
    return folder, model, domain, metrics


def snippet(card_path: Path) -> str:
    blocks = re.findall(r"```python\n(.*?)```", card_path.read_text(), flags=re.S)
    assert blocks, "the card has no python usage snippet"
    return blocks[0]


def printed_ids(stdout: str) -> list[int]:
    return [int(line.split()[0]) for line in stdout.strip().splitlines()]


def test_exported_model_folder_is_servable_and_its_card_carries_the_run(demo_run, tmp_path):
    run, model, domain, metrics = demo_run
    out = export_model(run, tmp_path / "export")
    files = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "modeling_missrec.py",
        "configuration_missrec.py",
        "layers_missrec.py",
        "interest_missrec.py",
        "pipeline_missrec.py",
        "served_files_missrec.py",
        "utils_missrec.py",
        "item_metadata.json",
        "metrics.json",
        "README.md",
    } <= files
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_missrec.MISSRecModel"
    assert config["custom_pipelines"][TASK]["impl"] == "pipeline_missrec.SequentialRecommendationPipeline"
    metadata = load_item_metadata(out)
    assert metadata["source_ids"] == domain.items["source_id"] and metadata["texts"] == domain.items["text"]
    assert metadata["popularity"] == item_popularity(domain).tolist()

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and "custom_code" in card.data.tags
    by_name = {(r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
    for key, protocol in (("test", "official"), ("test_exclude_history", "exclude_history")):
        for metric, value in metrics[key].items():
            assert by_name[metric, protocol] == pytest.approx(value, abs=1e-6)
    assert (
        f"{metrics['test']['ndcg@10']:.4f}" in card.text and f"{metrics['popularity_test']['hr@10']:.4f}" in card.text
    )
    assert card.text.index("| MISSRec | exclude history |") < card.text.index("| MISSRec | official |")  # users first
    # Issue 35, defect 12: nothing of the training machine's file system (the run's absolute output_dir) is shared.
    for text in ((out / "metrics.json").read_text(), (out / "README.md").read_text()):
        assert str(run) not in text
    assert json.loads((out / "metrics.json").read_text())["recipe"]["output_dir"] == run.name
    for section in ("## Intended use", "## Training data", "## Training recipe", "## Limitations", "synthetic"):
        assert section in card.text

    # The card's snippet runs as written, without the package, and recommends what the model recommends.
    code = snippet(out / "README.md")
    assert str(out.resolve()) in code
    stdout = run_script_without_package(code, tmp_path)
    history = re.search(r"history = (\[.*\])", code).group(1)
    expected = pipeline(TASK, model=model, item_metadata=metadata)(json.loads(history.replace("'", '"')), top_k=5)
    assert printed_ids(stdout) == [r["item_id"] for r in expected]


def test_exported_adapter_serves_on_its_base_and_its_card_names_the_base(demo_run, tmp_path):
    run, base, domain, _ = demo_run
    base_export = export_model(run, tmp_path / "base")
    model = apply_finetuning_strategy(MISSRecModel.from_pretrained(run), "lora", lora_rank=4)
    with torch.no_grad():  # an adapter that changes the scores (LoRA B starts at zero)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    model.get_base_model().discover_interests()
    model.eval()
    recipe = {"domain": "demo", **DEMO, "pretrained": str(run), "strategy": "lora", "id_mode": "inductive"}
    metrics = write_run(tmp_path / "lora-run", model, domain, recipe)

    with pytest.raises(ValueError, match="has no custom_pipelines"):
        export_model(tmp_path / "lora-run", tmp_path / "refused")  # the raw run folder of the base is not servable
    out = export_model(tmp_path / "lora-run", tmp_path / "adapter", base_model=str(base_export))
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "catalogue.safetensors",
        "item_metadata.json",
        "README.md",
        "metrics.json",
    } <= {p.name for p in out.iterdir()}
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_export)
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == str(base_export)
    values = {(r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
    assert values["ndcg@10", "official"] == pytest.approx(metrics["test"]["ndcg@10"], abs=1e-6)

    stdout = run_script_without_package(snippet(out / "README.md"), tmp_path)
    history = json.loads(re.search(r"history = (\[.*\])", snippet(out / "README.md")).group(1).replace("'", '"'))
    metadata = load_item_metadata(out)
    expected = pipeline(TASK, model=model, item_metadata=metadata)(history, top_k=5)
    assert printed_ids(stdout) == [r["item_id"] for r in expected]
    assert printed_ids(stdout) != [
        r["item_id"] for r in pipeline(TASK, model=base, item_metadata=metadata)(history, top_k=5)
    ]


@pytest.mark.parametrize(
    ("page", "heading"), [("README.md", "## Load and recommend"), ("docs/serving.md", "## Serving recommendations")]
)
def test_load_and_recommend_example_runs(demo_run, tmp_path, page, heading):
    run, model, _, _ = demo_run
    section = (REPO / page).read_text().split(heading, 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    assert len(code.strip().splitlines()) <= 5
    out = export_model(run, tmp_path / "exports" / "missrec-demo")
    stdout = run_script_without_package(code.replace("exports/missrec-demo", str(out)), tmp_path)
    assert len(stdout.strip().splitlines()) == 2  # one history, then a batch of two
    single = ast.literal_eval(stdout.splitlines()[0])
    assert len(single) == 5 and all({"item_id", "source_id", "score"} <= set(r) for r in single)


# ------------------------------------------------------------------ push
def test_push_uploads_through_hfapi(tmp_path):
    (tmp_path / "README.md").write_text("card")
    with mock.patch.object(HfApi, "create_repo") as create, mock.patch.object(HfApi, "upload_folder") as upload:
        upload.return_value = mock.Mock(commit_url="https://huggingface.co/org/name/commit/abc")
        url = push_folder(tmp_path, "org/name", private=True, token="hf_x")
    create.assert_called_once_with("org/name", repo_type="model", private=True, exist_ok=True)
    assert upload.call_args.kwargs["folder_path"] == str(tmp_path) and upload.call_args.kwargs["repo_id"] == "org/name"
    assert url.endswith("/commit/abc")
    # Issue 35, defect 11: an exported Space (`export model --space --push_to_hub`) is pushed as a Gradio Space.
    with mock.patch.object(HfApi, "create_repo") as create, mock.patch.object(HfApi, "upload_folder") as upload:
        upload.return_value = mock.Mock(commit_url="https://huggingface.co/spaces/org/demo/commit/abc")
        push_folder(tmp_path, "org/demo", repo_type="space")
    create.assert_called_once_with("org/demo", repo_type="space", private=None, exist_ok=True, space_sdk="gradio")
    assert upload.call_args.kwargs["repo_type"] == "space"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (OfflineModeIsEnabled("offline"), "offline mode is on"),
        (httpx.ConnectError("no route"), "the Hub cannot be reached \\(ConnectError"),
        (
            HfHubHTTPError("401", response=httpx.Response(401, request=httpx.Request("POST", "https://hf.co"))),
            "not authenticated or no write access \\(HTTP 401\\)",
        ),
        (
            HfHubHTTPError("500", response=httpx.Response(500, request=httpx.Request("POST", "https://hf.co"))),
            "answered HTTP 500",
        ),
    ],
)
def test_push_failures_say_why(tmp_path, error, message):
    (tmp_path / "README.md").write_text("card")
    with mock.patch.object(HfApi, "create_repo", side_effect=error), pytest.raises(HubPushError, match=message):
        push_folder(tmp_path, "org/name")
    with pytest.raises(ValueError, match="not an exported folder"):
        push_folder(tmp_path / "missing", "org/name")


def test_cli_exports_a_dataset_and_reports_an_offline_push_clearly(tmp_path, capsys):
    def help_of(*command: str) -> str:
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        return capsys.readouterr().out

    assert "{model,base,dataset}" in help_of()
    assert all(flag in help_of("model") for flag in ("--run_dir", "--base_model", "--push_to_hub", "--output_dir"))
    assert all(flag in help_of("base") for flag in ("--run_dir", "--transfer_results", "--push_to_hub"))
    small_demo = ["dataset", "--domain", "demo", "--demo_num_items", "60", "--demo_num_users", "100"]
    command = [
        *[sys.executable, "-m", "modeling_missrec.hub_cards.export", *small_demo],
        *["--output_dir", str(tmp_path / "data"), "--push_to_hub", "org/missrec-demo-data"],
    ]
    env = {**fresh_env(tmp_path), "PYTHONPATH": ""}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 1, result.stderr
    assert "exported to" in result.stdout
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in result.stderr and "Traceback" not in result.stderr
    card = DatasetCard.load(tmp_path / "data" / "README.md")
    assert card.data.configs[0]["config_name"] == "demo-sequences"
    assert main([*small_demo, "--output_dir", str(tmp_path / "data2")]) == 0
    with pytest.raises(ValueError, match="not empty"):
        main(["dataset", "--domain", "demo", "--output_dir", str(tmp_path / "data2")])


def test_export_space_serves_the_demo_page_without_the_package(demo_run, tmp_path):
    """`export model --space` adds the demo page as the folder's app: its files, the card's Space settings, and in a
    fresh process that cannot import this package, the app builds over the folder's own code and recommends what
    the pipeline recommends."""
    run, model, _, _ = demo_run
    out = tmp_path / "space"
    assert main(["model", "--run_dir", str(run), "--output_dir", str(out), "--space"]) == 0
    assert {"app.py", "missrec_demo.py", "requirements.txt"} <= {p.name for p in out.iterdir()}
    requirements = (out / "requirements.txt").read_text().split()
    assert any(r.startswith("gradio") for r in requirements) and any(r.startswith("transformers") for r in requirements)
    card = ModelCard.load(out / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(out)!r})\n"
        "from missrec_demo import build_app, load_recommender\n"
        f"pipe = load_recommender({str(out)!r})\n"
        "app = build_app(pipe)\n"
        "print([r['item_id'] for r in pipe([3, 9, 4], top_k=5)])\n"
    )
    stdout = run_script_without_package(code, tmp_path)
    expected = [r["item_id"] for r in pipeline(TASK, model=model)([3, 9, 4], top_k=5)]
    assert ast.literal_eval(stdout.strip().splitlines()[-1]) == expected


def test_an_exported_item_index_is_served_from_the_folder(demo_run, tmp_path):
    """`export model --item_index approximate` saves the index beside the weights; `pipeline(..., index=FOLDER)`
    serves it in a fresh load without building it, with the top-k of the exact index."""
    run, model, _, _ = demo_run
    out = tmp_path / "export"
    assert main(["model", "--run_dir", str(run), "--output_dir", str(out), "--item_index", "approximate"]) == 0
    assert (out / INDEX_FILE).is_file()
    served = pipeline(TASK, model=str(out), index=str(out))
    assert served.index.kind == "approximate"
    histories = [[1, 2, 3], [7], [4, 9, 11, 5]]
    assert served(histories, top_k=5) == pipeline(TASK, model=str(out))(histories, top_k=5)
    with pytest.raises(ValueError, match="must be one of"):
        pipeline(TASK, model=str(out), index=str(tmp_path / "missing"))
