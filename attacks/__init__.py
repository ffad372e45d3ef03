"""Attacks on perceptual metrics: the 2AFC decision as a classifier, PGD/APGD, AutoAttack, foolbox, and
retrieval goals (push positives out of the top k, pull an item into the top-1) on the same engine."""

from robustsim.attacks.adapters import AutoAttack, FoolboxAttack, RowMatcher
from robustsim.attacks.base import Attack, AttackResult
from robustsim.attacks.embedding import embedding_attack, smoothed_output_attack
from robustsim.attacks.geometry import norms, project
from robustsim.attacks.gradient import APGD, PGD
from robustsim.attacks.optim import apgd, classifier_objective, pgd
from robustsim.attacks.registry import list_attacks, make_attack
from robustsim.attacks.retrieval import PullIn, PushOut, attack_queries
from robustsim.attacks.twoafc import TwoAFCClassifier, labels_from_p, margin

__all__ = [
    "APGD",
    "PGD",
    "PullIn",
    "PushOut",
    "Attack",
    "AttackResult",
    "AutoAttack",
    "FoolboxAttack",
    "RowMatcher",
    "TwoAFCClassifier",
    "apgd",
    "attack_queries",
    "classifier_objective",
    "embedding_attack",
    "labels_from_p",
    "list_attacks",
    "make_attack",
    "margin",
    "norms",
    "pgd",
    "project",
    "smoothed_output_attack",
]
