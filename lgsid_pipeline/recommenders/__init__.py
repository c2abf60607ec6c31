"""Recommender evaluations: the next-item split, TIGER, DIN, DIEN, peer heuristics, metrics and stats.

Plain Python + polars + numpy + scipy + torch; no orchestration imports.
"""

from .data import SplitData, item_attribute, next_item_split
from .dien import DIEN, AUGRUCell, DIENConfig, train_and_evaluate_dien
from .din import DIN, DINConfig, DiscResult, train_and_evaluate_din
from .evaluate import EvaluationResult, EvaluationSettings, evaluate_all, plot_results, user_topk
from .heuristics import HEURISTICS, TopKResult, run_heuristic
from .metrics import auc, gauc, hit_ndcg, target_ranks, topk_metrics
from .reachability import reachable_share, reachable_share_per_user
from .stats import summarize, wilcoxon_paired
from .tiger import GenResult, TigerConfig, load_tiger, save_tiger, train_and_evaluate_tiger

__all__ = [
    "DIEN",
    "DIN",
    "HEURISTICS",
    "AUGRUCell",
    "DIENConfig",
    "DINConfig",
    "DiscResult",
    "EvaluationResult",
    "EvaluationSettings",
    "GenResult",
    "SplitData",
    "TigerConfig",
    "TopKResult",
    "auc",
    "evaluate_all",
    "gauc",
    "hit_ndcg",
    "item_attribute",
    "load_tiger",
    "next_item_split",
    "plot_results",
    "reachable_share",
    "reachable_share_per_user",
    "run_heuristic",
    "save_tiger",
    "summarize",
    "target_ranks",
    "topk_metrics",
    "train_and_evaluate_dien",
    "train_and_evaluate_din",
    "train_and_evaluate_tiger",
    "user_topk",
    "wilcoxon_paired",
]
