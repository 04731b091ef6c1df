"""Curated training: score each batch against a reference set during training and update on what helps.

    from influence.curation import curation_step
    info = curation_step(model, loss_fn, optimizer, batch, ref, "lai")   # adds kept-sample grads, steps

One library for every curated loop (your own, ``influence.hf_trainer``, the ``lai curate`` experiment in
``validation.curation``): ``step`` (``curation_step``, ``StepInfo``, the stateful ``Curator``), ``policies``
(scores [n] -> keep mask [n]), ``methods`` (named methods: every registered estimator with "keep score >= 0", its
top-k/GREATS variants, and the baselines: co-teaching small-loss, loss threshold, oracle, random), ``signals`` (how a
method scores a batch through ``influence.Session``, and what its update reuses), ``reference`` (where the reference
batch comes from), ``cadence`` (the reference-refresh cadence: ``Session(refresh_every=k)``), ``distributed`` (DDP
collectives), ``errors``, ``hf_loss`` (the per-sample loss of a ``transformers`` model).
"""

from .cadence import KeptSession
from .errors import CurationError, EmptyReferenceError, EmptySelectionError
from .methods import METHODS, Method, get_method, method_table, ramped_drop_rate
from .policies import (
    Policy,
    greats_select,
    keep_bottom_k,
    keep_count,
    keep_nonnegative,
    keep_random,
    keep_threshold,
    keep_top_fraction,
    keep_top_k,
)
from .reference import ReferencePolicy
from .signals import Scored, score_batch, signals
from .step import Curator, StepInfo, choose, curation_step

__all__ = [
    "curation_step", "Curator", "StepInfo", "choose", "Method", "METHODS", "method_table", "get_method",
    "ReferencePolicy", "KeptSession", "ramped_drop_rate", "score_batch", "Scored", "signals",
    "Policy", "keep_nonnegative", "keep_top_fraction",
    "keep_threshold", "keep_top_k", "keep_bottom_k", "keep_random", "keep_count", "greats_select",
    "CurationError", "EmptySelectionError", "EmptyReferenceError",
]
