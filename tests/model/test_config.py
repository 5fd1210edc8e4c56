"""MISSRecConfig: validation, presets, serialisation."""

from __future__ import annotations

import pytest
from modeling_missrec.configuration.presets import available_presets, load_preset

from modeling_missrec import MISSRecConfig


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"modalities": "audio"}, "modalities='audio'"),
        ({"id_mode": "hybrid"}, "id_mode='hybrid'"),
        ({"seq_mm_fusion": "concat"}, "seq_mm_fusion='concat'"),
        ({"item_mm_fusion": "max"}, "item_mm_fusion='max'"),
        ({"interest_method": "dbscan"}, "interest_method='dbscan'"),
        ({"interest_ratio": 0.0}, "interest_ratio=0.0"),
        ({"interest_ratio": 1.5}, "interest_ratio=1.5"),
        ({"knn_local_ratio": -0.1}, "knn_local_ratio=-0.1"),
        ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size=30"),
        ({"hidden_dropout_prob": 1.0}, "hidden_dropout_prob=1.0"),
        ({"hidden_act": "swish2"}, "hidden_act='swish2'"),
        ({"max_seq_length": 0}, "max_seq_length=0"),
        ({"score_temperature": 0}, "score_temperature=0"),
        ({"text_feature_dim": 0}, "text_feature_dim=0"),
        ({"num_encoder_layers": 0}, "num_encoder_layers=0"),
        ({"kmeans_max_iter": 0}, "kmeans_max_iter=0"),
        ({"diversity_loss_weight": -1.0}, "diversity_loss_weight=-1.0"),
    ],
)
def test_invalid_values_name_the_offender(kwargs, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace("+", r"\+")):
        MISSRecConfig(**kwargs)


def test_defaults_are_the_paper_hyper_parameters():
    config = MISSRecConfig()
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == (300, 4, 256)
    assert (config.num_encoder_layers, config.num_decoder_layers) == (1, 1)
    assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == 0.5
    assert (config.score_temperature, config.seq_seq_loss_weight, config.diversity_loss_weight) == (0.07, 1e-3, 1e-4)
    assert config.modality_names == ("text", "image")


def test_presets_load_and_round_trip(tmp_path):
    assert {"missrec-base", "missrec-tiny"} <= set(available_presets())
    assert load_preset("missrec-base").to_diff_dict() == MISSRecConfig().to_diff_dict()
    tiny = load_preset("missrec-tiny", id_mode="transductive")
    assert tiny.hidden_size == 64 and tiny.id_mode == "transductive"
    tiny.save_pretrained(tmp_path)
    assert MISSRecConfig.from_pretrained(tmp_path).to_dict() == tiny.to_dict()
    with pytest.raises(ValueError, match="unknown preset 'missrec-huge'"):
        load_preset("missrec-huge")
    with pytest.raises(ValueError, match="id_mode='x'"):
        load_preset("missrec-tiny", id_mode="x")
