"""SASRec baseline: causality, padding invariance, loss by hand, learning, remote code, bad input."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import random_histories, run_without_package
from transformers import AutoConfig, AutoModel

from modeling_missrec import SASRecConfig, SASRecModel, SASRecOutput

NUM_ITEMS = 40


def tiny_sasrec(num_items: int = NUM_ITEMS, seed: int = 0, **overrides) -> SASRecModel:
    """A small SASRec without dropout (deterministic outputs), in eval mode."""
    values = dict(
        num_items=num_items,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=48,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_seq_length=12,
    )
    values.update(overrides)
    torch.manual_seed(seed)
    return SASRecModel(SASRecConfig(**values)).eval()


@pytest.fixture
def model() -> SASRecModel:
    return tiny_sasrec()


def test_defaults_are_recbole_sasrec():
    config = SASRecConfig()
    assert config.model_type == "sasrec"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 2, 2)
    assert (config.intermediate_size, config.hidden_dropout_prob) == (256, 0.5)
    assert config.attention_probs_dropout_prob == 0.5
    assert (config.hidden_act, config.layer_norm_eps, config.initializer_range) == ("gelu", 1e-12, 0.02)
    assert config.max_seq_length == 50


def test_padding_row_and_module_names():
    model = tiny_sasrec()
    assert torch.equal(model.item_embeddings.weight[0], torch.zeros(32))
    assert model.get_input_embeddings() is model.item_embeddings
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"}


def test_causality_later_items_do_not_change_earlier_positions(model):
    items = torch.randint(1, NUM_ITEMS + 1, (3, 10), generator=torch.Generator().manual_seed(0))
    hidden, _ = model.encode(items)
    for j in (0, 4, 9):
        changed = items.clone()
        changed[:, j] = changed[:, j] % NUM_ITEMS + 1
        hidden_changed, _ = model.encode(changed)
        torch.testing.assert_close(hidden_changed[:, :j], hidden[:, :j], atol=1e-6, rtol=0)
        assert not torch.allclose(hidden_changed[:, j], hidden[:, j], atol=1e-4)
    # The representation of a prefix is the full sequence's output at the prefix's last position.
    for k in (1, 5, 10):
        torch.testing.assert_close(model.embed_sequences(items[:, :k]), hidden[:, k - 1], atol=1e-5, rtol=0)


def dense_reference(model: SASRecModel, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """RecBole's layout of the same math, in eval mode: every history padded to the longest, `[B, L, d]`, each
    layer's attention causal over the whole grid."""
    width = int(lengths.max())
    hidden = model.LayerNorm(model.item_embeddings(items[:, :width]) + model.position_embeddings.weight[:width])
    for layer in model.layers:
        attention = layer.self_attention.block
        q, k, v = (attention._heads(p(hidden)) for p in (attention.q_proj, attention.k_proj, attention.v_proj))
        update = attention.o_proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(2))
        hidden = layer.self_attention.LayerNorm(hidden + update)
        hidden = layer.feed_forward.LayerNorm(hidden + layer.feed_forward.block(hidden))
    return hidden


def test_packed_histories_equal_the_padded_grid_outputs_and_gradients():
    """The packed path (rows longest first, attention per bucket, the last layer on the last positions only) is
    the padded computation: outputs at every real position, sequence embeddings, and the weights' gradients (in
    float64, so that only a real difference shows)."""
    model = tiny_sasrec(max_seq_length=30).double()
    generator = torch.Generator().manual_seed(0)
    lengths = torch.cat([torch.tensor([1, 30, 2, 30, 1]), torch.randint(1, 31, (195,), generator=generator)])
    items = torch.randint(1, NUM_ITEMS + 1, (200, 30), generator=generator)  # 200 rows: several attention buckets
    items = items * (torch.arange(30) < lengths[:, None])
    reference = dense_reference(model, items, lengths)
    hidden, _ = model.encode(items, lengths)
    real = torch.arange(30) < lengths[:, None]
    torch.testing.assert_close(hidden[real], reference[real], atol=1e-12, rtol=0)
    assert not hidden[~real].any()
    last = reference[torch.arange(200), lengths - 1]
    sequences = model.embed_sequences(items, lengths)
    torch.testing.assert_close(sequences, last, atol=1e-12, rtol=0)
    weights = torch.randn(200, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    packed_grads = torch.autograd.grad((sequences * weights).sum(), list(model.parameters()))
    dense_grads = torch.autograd.grad((last * weights).sum(), list(model.parameters()))
    for (name, _), packed, dense in zip(model.named_parameters(), packed_grads, dense_grads):
        torch.testing.assert_close(packed, dense, atol=1e-10, rtol=1e-8, msg=lambda m, name=name: f"{name}: {m}")


def test_scores_ignore_padding_and_batch_composition(model):
    items, lengths = random_histories(20, 10, NUM_ITEMS)
    full = model(items, lengths).scores
    padded = torch.cat([items, torch.zeros(20, 2, dtype=torch.long)], 1)
    torch.testing.assert_close(model(padded).scores, full, atol=1e-5, rtol=0)
    for row in (0, 7, 19):
        alone = model(items[row : row + 1, : lengths[row]]).scores
        torch.testing.assert_close(alone[0], full[row], atol=1e-5, rtol=0)
    order = torch.randperm(20, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(items[order]).scores, full[order], atol=1e-5, rtol=0)


def test_scores_and_loss_by_hand(model):
    items, lengths = random_histories(6, 8, NUM_ITEMS)
    labels = torch.tensor([1, 5, 40, 3, 3, 17])
    out = model(items, lengths, labels=labels)
    assert isinstance(out, SASRecOutput)
    assert out.scores.shape == (6, NUM_ITEMS + 1) and out.sequence_embeddings.shape == (6, 32)
    assert (out.scores[:, 0] == torch.finfo(out.scores.dtype).min).all()
    torch.testing.assert_close(out.scores[:, 1:], out.sequence_embeddings @ model.item_embeddings.weight[1:].T)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.scores, labels))
    torch.testing.assert_close(out.loss, F.cross_entropy(out.scores[:, 1:], labels - 1))  # padding gets no mass
    candidates = torch.tensor([3, 40])
    torch.testing.assert_close(model.score_items(out.sequence_embeddings, candidates), out.scores[:, candidates])
    loss, scores, seq = model(items, lengths, labels=labels, return_dict=False)
    assert torch.equal(scores, out.scores) and torch.equal(loss, out.loss)


def test_history_longer_than_max_seq_length_keeps_the_most_recent_items(model):
    max_len = model.config.max_seq_length
    long = torch.arange(1, max_len + 6)[None]
    torch.testing.assert_close(model(long).scores, model(long[:, -max_len:]).scores)
    ragged = torch.tensor([[*range(1, max_len + 4)], [3, 4, 5] + [0] * max_len])
    out = model(ragged).scores
    torch.testing.assert_close(out[0], model(ragged[:1, 3:]).scores[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], model(torch.tensor([[3, 4, 5]])).scores[0], atol=1e-5, rtol=0)


def stride_batch(generator: torch.Generator, batch: int, num_items: int, max_len: int):
    """Arithmetic histories `s, s + k, s + 2k, ...` (mod `num_items`, stride k in {1, 2}, at least 2 items)
    and their next items. The next item depends on the last two items, so a model that reads only the last
    item gets about half right: attention over positions is needed."""
    starts = torch.randint(1, num_items + 1, (batch, 1), generator=generator)
    strides = torch.randint(1, 3, (batch, 1), generator=generator)
    lengths = torch.randint(2, max_len + 1, (batch,), generator=generator)
    steps = torch.arange(max_len + 1)
    chain = (starts - 1 + strides * steps) % num_items + 1  # [batch, max_len + 1]
    items = chain[:, :max_len] * (steps[:max_len] < lengths[:, None])
    return items, lengths, chain.gather(1, lengths[:, None]).squeeze(1)


@pytest.fixture
def one_thread():
    """Tiny models train several times faster on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_learns_a_sequential_pattern(one_thread):
    num_items, max_len = 30, 8
    model = tiny_sasrec(num_items, max_seq_length=max_len, intermediate_size=64).train()
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(400):
        items, lengths, labels = stride_batch(generator, 64, num_items, max_len)
        loss = model(items, lengths, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    items, lengths, labels = stride_batch(torch.Generator().manual_seed(99), 512, num_items, max_len)
    with torch.no_grad():
        accuracy = (model(items, lengths).scores.argmax(1) == labels).float().mean()
    assert accuracy > 0.95, accuracy


def test_dropout_is_active_in_training_only():
    model = tiny_sasrec(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    items, _ = random_histories(4, 6, NUM_ITEMS)
    with torch.no_grad():
        assert torch.equal(model(items).scores, model(items).scores)
        model.train()
        assert not torch.equal(model(items).scores, model(items).scores)


def test_remote_code_round_trip_in_a_fresh_process_is_bit_identical(tmp_path, model):
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "sasrec"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_sasrec.SASRecConfig",
        "AutoModel": "modeling_sasrec.SASRecModel",
    }
    saved = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "modeling_sasrec.py", "configuration_sasrec.py", "layers_missrec.py"} <= saved
    assert not [p for p in folder.iterdir() if p.is_dir()]  # flat

    items, _ = random_histories(8, 10, NUM_ITEMS)
    scores = run_without_package(folder, "sasrec", {"item_seq": items}, tmp_path)["scores"]
    with torch.no_grad():
        assert torch.equal(scores, model(items).scores)


def test_installed_package_loads_through_auto_classes(tmp_path, model):
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is SASRecConfig
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is SASRecModel
    items, lengths = random_histories(5, 6, NUM_ITEMS)
    with torch.no_grad():
        assert torch.equal(loaded(items, lengths).scores, model(items, lengths).scores)


def test_lora_on_the_attention_projections_changes_eval_outputs(model):
    peft = pytest.importorskip("peft")
    items, _ = random_histories(4, 6, NUM_ITEMS)
    with torch.no_grad():
        before = model(items).scores
    lora = peft.get_peft_model(
        model, peft.LoraConfig(target_modules=["q_proj", "v_proj", "fc1"], init_lora_weights=False)
    ).eval()
    with torch.no_grad():
        assert not torch.allclose(lora(item_seq=items).scores, before)


@pytest.mark.parametrize(
    ("item_seq", "lengths", "message"),
    [
        (torch.tensor([[1, 41, 0]]), None, r"item ids \[41\] are outside the catalogue \[1, 40\]"),
        (torch.tensor([[1, -3, 0]]), None, r"item ids \[-3\] are outside the catalogue"),
        (torch.tensor([[1, 2], [0, 0]]), None, r"rows \[1\] hold only padding"),
        (torch.tensor([[1, 2, 0]]), torch.tensor([3]), "row 0: length 3 disagrees"),
        (torch.tensor([[0, 1, 2]]), None, "row 0: length 2 disagrees"),
        (torch.tensor([[1, 2]]), torch.tensor([2, 2]), r"lengths has shape \(2,\); expected \(1,\)"),
        (torch.tensor([1, 2]), None, r"item_seq must be an integer \[B, L\] tensor"),
        (torch.tensor([[1.0, 2.0]]), None, "item_seq must be an integer"),
    ],
)
def test_bad_histories(model, item_seq, lengths, message):
    with pytest.raises(ValueError, match=message):
        model(item_seq, lengths)


def test_bad_labels_and_empty_catalogue(model):
    with pytest.raises(ValueError, match=r"labels \[0\] are outside the catalogue \[1, 40\]"):
        model(torch.tensor([[1, 2]]), labels=torch.tensor([0]))
    with pytest.raises(ValueError, match=r"labels \[41\] are outside"):
        model(torch.tensor([[1, 2]]), labels=torch.tensor([41]))
    with pytest.raises(ValueError, match=r"labels must be an integer tensor of shape \(1,\)"):
        model(torch.tensor([[1, 2]]), labels=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="num_items is 0"):
        SASRecModel(SASRecConfig())(torch.tensor([[1]]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hidden_size": 10, "num_attention_heads": 3}, "not divisible by num_attention_heads=3"),
        ({"num_items": -1}, "num_items=-1 must be an integer >= 0"),
        ({"num_hidden_layers": 0}, "num_hidden_layers=0 must be an integer >= 1"),
        ({"hidden_dropout_prob": 1.0}, r"hidden_dropout_prob=1.0 must be in \[0, 1\)"),
        ({"attention_probs_dropout_prob": -0.1}, "attention_probs_dropout_prob=-0.1 must be"),
        ({"hidden_act": "swish2"}, "hidden_act='swish2' is not one of"),
        ({"layer_norm_eps": 0}, "layer_norm_eps=0 must be > 0"),
        ({"max_seq_length": 0}, "max_seq_length=0 must be an integer >= 1"),
    ],
)
def test_bad_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        SASRecConfig(**overrides)
