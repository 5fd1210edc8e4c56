"""MISSRec trains with a stock `transformers.Trainer`: the interest lifecycle is a callback, not hidden state."""

from __future__ import annotations

import copy

import pytest
import torch
from modeling_missrec.configuration import parse_recipe_args
from modeling_missrec.configuration.presets import load_preset
from modeling_missrec.pipelines.data.collator import catalogue_features, catalogue_modalities
from modeling_missrec.pipelines.training import loop
from modeling_missrec.pipelines.training.interest_discovery import InterestDiscoveryCallback
from transformers import Trainer, TrainingArguments

from modeling_missrec import MISSRecForSequentialRecommendation, MISSRecModel


@pytest.fixture
def train():
    """The training loop's module, whose names the tests patch."""
    return loop


def dropout_free_model(features: dict[str, torch.Tensor]) -> MISSRecModel:
    """The demo recipe's model without dropout, so that the two loops draw no random numbers of their own."""
    dims = {f"{name.removesuffix('_features')}_feature_dim": table.shape[1] for name, table in features.items()}
    config = load_preset(
        "missrec-tiny",
        modalities=catalogue_modalities(features),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        interest_ratio=0.5,
        **dims,
    )
    torch.manual_seed(0)
    model = MISSRecModel(config)
    model.set_catalogue(**features)
    return model


def test_hf_trainer_with_the_interest_callback_trains_as_train_py(train, tmp_path, monkeypatch, fresh_accelerate_state):
    """Same seed, same batch order, same optimiser: `Trainer` + `InterestDiscoveryCallback` ends with the weights
    and interests of `train.py`'s loop, and without the callback it does not (it would train on stale interests)."""
    from accelerate import Accelerator

    tiny = ["--num_users", "60", "--num_items", "40", "--baselines", "[]", "--epochs", "2", "--batch_size", "32"]
    args = parse_recipe_args([*tiny, "--output_dir", str(tmp_path / "run")])
    domain = train.load_training_data(args)
    features = catalogue_features(domain.items)
    base = dropout_free_model(features)
    untouched = copy.deepcopy(base)
    collator = train.training_collator(args, domain, base.config.max_seq_length)
    valid = train.SequenceCollator(domain.sequences["validation"], base.config.max_seq_length)

    real_evaluate, rising = train.evaluate_ranking, iter([0.1, 0.2])

    def rising_validation(*a, **k):  # every epoch improves: fit keeps the last epoch, as Trainer does
        metrics = real_evaluate(*a, **k)
        metrics["official"]["ndcg@10"] = next(rising)
        return metrics

    monkeypatch.setattr(train, "evaluate_ranking", rising_validation)
    looped, _, _ = train.fit(Accelerator(), "MISSRec", train.training_head(args, base), collator, valid, args)
    looped = Accelerator().unwrap_model(looped)

    def trained_with_trainer(callbacks: list, folder: str) -> MISSRecForSequentialRecommendation:
        head = MISSRecForSequentialRecommendation.from_base(copy.deepcopy(untouched))
        if not callbacks:  # interests discovered once, before training, and never again
            head.missrec.discover_interests()
        settings = TrainingArguments(
            output_dir=str(tmp_path / folder),
            seed=args.seed,
            data_seed=args.seed,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            max_grad_norm=0.0,  # train.py clips only when max_grad_norm is set
            optim="adamw_torch",
            remove_unused_columns=False,  # the collator builds the model's inputs from row indices
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
        )
        rows = range(len(collator))
        Trainer(model=head, args=settings, train_dataset=rows, data_collator=collator, callbacks=callbacks).train()
        return head

    trained = trained_with_trainer([InterestDiscoveryCallback()], "hf")
    expected = looped.state_dict()
    assert set(trained.state_dict()) == set(expected)
    for name, tensor in trained.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], msg=name)
    assert trained.config.num_interests == looped.config.num_interests

    stale = trained_with_trainer([], "hf-stale").state_dict()
    assert not torch.equal(stale["missrec.interest_centroids"], expected["missrec.interest_centroids"])
    # ... and the second epoch, trained on them, ends with other weights
    assert any(not torch.allclose(stale[name], expected[name]) for name, _ in looped.named_parameters())
