#!/usr/bin/env python
"""Pre-train MISSRec on a mix of domains, or fine-tune it on one, beside SASRec and popularity.

    python train.py                                                    # fine-tune on the demo domain
    python train.py --config configuration/recipes/demo-pretrain.yaml  # pre-train on two demo domains
    python train.py --pretrained runs/demo-pretrain --strategy lora    # fine-tune a PEFT adapter on it
    python train.py --config configuration/recipes/scientific.yaml --epochs 10

It runs unchanged as `python train.py` and as `accelerate launch train.py` (several processes: DDP, the
interests discovered on the main process and broadcast, evaluation sharded with `gather_for_metrics`; mixed
precision and the device come from the Accelerate config). Settings come from a YAML recipe
(`configuration/recipes/`); any key is overridden with `--key value`. Data come from the project's `datasets`
builder (`load_domain`); a list of domains is mixed into one catalogue.

- `stage: pretrain`: the in-batch sequence->item and sequence->sequence contrastive losses over the mixed
  domains, with item-drop (and word-drop) augmented views, no item ids, interest ratio 0.02.
- `stage: finetune`: the full-catalogue cross-entropy on one domain, from a preset or from a `pretrained`
  folder with a strategy (`full`, `frozen`, or `lora`, which saves a PEFT adapter), inductive or transductive.

Every model re-discovers its interests before each epoch, stops early on validation NDCG@10, and keeps its
best weights, saved with `save_pretrained` (a remote-code folder) and evaluated on the test split with both
protocols. SASRec and popularity (and, with `baselines: [scratch]`, MISSRec from scratch under the same
budget) are trained and evaluated in the same harness and printed beside MISSRec. With `checkpointing_steps`
each model writes resumable checkpoints (`--resume_from_checkpoint latest` continues a killed run;
`latest-if-any` also starts one).
"""

from __future__ import annotations

from modeling_missrec.configuration import errors_in_one_line, parse_recipe_args
from modeling_missrec.pipelines.training import run_training


def main(argv: list[str] | None = None) -> dict:
    """Run the recipe of `--config` (default: the demo recipe) with its `--key value` overrides; an error in the
    input is one line (`--debug` keeps its traceback)."""
    with errors_in_one_line("train.py", argv):
        return run_training(parse_recipe_args(argv, description=__doc__))


if __name__ == "__main__":
    main()
