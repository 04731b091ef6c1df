"""Curated training: score each batch against a reference set during training and update on what helps.

    from validation.curation import curation_step
    info = curation_step(model, loss_fn, optimizer, batch, ref, "lai")   # adds kept-sample grads, steps

See ``step`` (the step and ``Curator``), ``policies`` (selection rules), ``methods`` (named methods and
baselines: co-teaching small-loss, loss threshold, oracle, random), ``signals`` (what is scored and reused),
``distributed`` (DDP), ``protocols`` (ours vs the original study's warm-up and resampled reference),
``seeds`` (one random stream per purpose), ``tasks``/``experiment``/``runner``/``cli`` (the comparison run:
``python -m validation curate --task mnist1d-noisy40 --protocol both``; ``--profile quick|paper``).
"""

from .errors import CurationError, EmptyReferenceError, EmptySelectionError
from .methods import METHODS, Method, get_method, ramped_drop_rate
from .protocols import PROTOCOLS, apply_protocol
from .policies import greats_select, keep_bottom_k, keep_count, keep_random, keep_threshold, keep_top_k
from .reference import ReferencePolicy
from .step import Curator, StepInfo, choose, curation_step

__all__ = [
    "curation_step", "Curator", "StepInfo", "choose", "Method", "METHODS", "get_method", "ReferencePolicy",
    "ramped_drop_rate", "PROTOCOLS", "apply_protocol",
    "keep_threshold", "keep_top_k", "keep_bottom_k", "keep_random", "keep_count", "greats_select",
    "CurationError", "EmptySelectionError", "EmptyReferenceError",
]
