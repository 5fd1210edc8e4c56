"""Folders exported before the package restructure (tests/fixtures/exported-e2f43f5) still load and serve the
same top-10, through the installed package and through their own remote code."""

from __future__ import annotations

import json
import textwrap

import pytest
from helpers import FIXTURES, run_script_without_package
from transformers import AutoModel, pipeline

import modeling_missrec  # noqa: F401  (registers the pipeline task)

FIXTURE = FIXTURES / "exported-e2f43f5"
EXPECTED = json.loads((FIXTURE / "expected_top10.json").read_text())
TASK = "sequential-recommendation"


def served(pipe) -> dict[str, list[list[int]]]:
    histories = [list(h) for h in EXPECTED["histories"]]
    ids = {}
    for suffix, exclude in (("", True), ("_exclude_history_false", False)):
        rows = pipe(histories, top_k=10, exclude_history=exclude)
        ids[suffix] = [[r["item_id"] for r in row] for row in rows]
    return ids


@pytest.mark.parametrize("with_adapter", [False, True], ids=["model", "adapter"])
def test_old_export_serves_the_same_top10_with_the_package(with_adapter):
    kwargs = {"adapter": str(FIXTURE / "adapter")} if with_adapter else {}
    model = AutoModel.from_pretrained(FIXTURE / "model")  # the package's classes, no remote code
    assert type(model).__module__.startswith("modeling_missrec")
    ids = served(pipeline(TASK, model=model, **kwargs))
    name = "adapter" if with_adapter else "model"
    for suffix, expected in ids.items():
        assert expected == EXPECTED[name + suffix]


@pytest.mark.slow
def test_old_export_serves_the_same_top10_with_its_own_remote_code(tmp_path):
    script = textwrap.dedent(
        """
        import json
        from transformers import pipeline

        folder, adapter, histories = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        out = {}
        for name, kwargs in (("model", {}), ("adapter", {"adapter": adapter})):
            pipe = pipeline("sequential-recommendation", model=folder, trust_remote_code=True, **kwargs)
            base = pipe.model.get_base_model() if hasattr(pipe.model, "peft_config") else pipe.model
            assert type(base).__module__.startswith("transformers_modules"), type(base).__module__
            for suffix, exclude in (("", True), ("_exclude_history_false", False)):
                rows = pipe([list(h) for h in histories], top_k=10, exclude_history=exclude)
                out[name + suffix] = [[r["item_id"] for r in row] for row in rows]
        print(json.dumps(out))
        """
    )
    stdout = run_script_without_package(
        script, tmp_path, str(FIXTURE / "model"), str(FIXTURE / "adapter"), json.dumps(EXPECTED["histories"])
    )
    served_ids = json.loads(stdout.strip().splitlines()[-1])
    assert served_ids == {key: value for key, value in EXPECTED.items() if key != "histories"}
