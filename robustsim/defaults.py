"""Default settings that the library, the CLI and the bench share: each is written once, here.

Smoothing's sample counts differ by purpose, on purpose: a certificate wants many draws (SMOOTHING_N), the
prediction an attack queries at every radius fewer (AUDIT_SMOOTHING_N), center smoothing its own three counts.
"""

from __future__ import annotations

ALPHA = 0.001  # failure probability of a smoothing or center-smoothing certificate (Cohen et al.'s choice)
SMOOTHING_N = 512  # noise samples per triplet of a randomized-smoothing certificate
AUDIT_SMOOTHING_N = 128  # noise samples of each smoothed prediction an audit of a smoothed metric checks
CENTER_N = 1000  # center smoothing: certification draws per image
CENTER_N_CENTER = 2000  # center smoothing: draws for each of the centre's two checks
CENTER_CANDIDATES = 16  # center smoothing: noisy outputs the centre is chosen from
STEP_SIZE = 2.5  # PGD steps of STEP_SIZE * eps / steps cover the ball's diameter with room to spare


def center_draws(n: int = CENTER_N, n_center: int = CENTER_N_CENTER, candidates: int = CENTER_CANDIDATES) -> int:
    """Noisy forwards center smoothing makes per image: its candidates, the centre's two checks, the certificate."""
    return candidates + 2 * n_center + n
