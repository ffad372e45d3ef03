"""Retrieval robustness: rank a gallery per query, score against annotations, attack and certify."""

from robustsim.retrieval.evaluate import RetrievalResult, evaluate_retrieval
from robustsim.retrieval.index import EmbeddingGallery, PairwiseGallery, build_gallery, exact_search, faiss_search
from robustsim.retrieval.scores import average_precision, recall_at_k, roc_auc

__all__ = [
    "EmbeddingGallery",
    "PairwiseGallery",
    "RetrievalResult",
    "average_precision",
    "build_gallery",
    "evaluate_retrieval",
    "exact_search",
    "faiss_search",
    "recall_at_k",
    "roc_auc",
]
