"""The library around the model, one subpackage per concern (installed as `modeling_missrec.pipelines`).

- `data`: the data a model trains on: the three sources (MISSRec folders, RecBole atomic files, raw Amazon
  reviews) and the demo generator, the `datasets` builder, loading and mixing domains, feature extraction and the
  training collator.
- `training`: the training loop `train.py` and `tune.py` run, fine-tuning strategies, checkpoints, interest
  discovery as a training step, and tracking.
- `evaluation`: full-ranking metrics and evaluation, and the popularity baseline.
- `conversion`: importing checkpoints of the official MISSRec code.

The serving pipeline is not here: it travels with every saved model, so it lives with the model's remote code
in `modeling_missrec/` (`pipeline_missrec.py`, `served_files_missrec.py`).
"""
