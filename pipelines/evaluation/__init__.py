"""How well a model recommends: full-ranking metrics (`metrics`: HR@K, NDCG@K, MRR@K with one held-out target)
and the evaluation loop shared by training, the benchmarks and the tests (`full_ranking`: every history scored
against the whole catalogue, under the official protocol and with the history excluded), with the popularity
baseline."""

from .full_ranking import PROTOCOLS, PopularityRecommender, RecommenderScores, evaluate_ranking
from .metrics import ranking_metrics, target_ranks

__all__ = [
    "PROTOCOLS",
    "PopularityRecommender",
    "RecommenderScores",
    "evaluate_ranking",
    "ranking_metrics",
    "target_ranks",
]
