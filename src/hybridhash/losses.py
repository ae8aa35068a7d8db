"""The weighted pairwise likelihood loss with its memory bank, at its earlier import path: both live
in :mod:`hybridhash.methods.hybridhash` with the method that uses them."""
from __future__ import annotations

from .methods.hybridhash import PairwiseLikelihoodLoss, pairwise_likelihood_loss

__all__ = ["pairwise_likelihood_loss", "PairwiseLikelihoodLoss"]
