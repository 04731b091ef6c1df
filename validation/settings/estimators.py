"""Which estimators validation scores, times and shows, all read from the registry (``influence.estimators``).

Every list of estimator names in ``validation`` and ``paper_figs`` comes from here, so a newly registered estimator
appears in ``lai run --estimators``, the fidelity suite, ``lai bench``, ``lai score``, the report and figure 2
with no other edit. Besides the registered estimators, ``lai run`` scores research-only variants (:data:`RESEARCH`,
computed in ``validation/suites/lai_variants.py``; they are not registered because ``influence.Session`` cannot
build them) and baselines that are not estimators (:data:`BASELINES`). Where a default is a choice (which
estimators the cost rows time), it is the registry minus a named exclusion checked against the registry.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable

from influence.estimators import UnknownEstimatorError, estimator_names, get_estimator


@dataclass(frozen=True)
class ResearchVariant:
    """A research-only estimator computed by validation (not in the registry): ``family`` as for registered
    entries (it is listed after the last registered entry of its family)."""

    name: str
    label: str
    family: str
    description: str


#: Research-only variants, scored by the fidelity suite beside the registered estimators.
RESEARCH: dict[str, ResearchVariant] = {v.name: v for v in (
    ResearchVariant("lai-fit", "LAI-fit (layer weights)", "lai",
                    "last-layer LAI plus the lower layers' LAI terms weighted by least squares against Ghost on a "
                    "probe outside the scored batch, refitted at every scored step"),
)}

#: Scores in the results that are not estimators (label): the loss-only baseline and the one-step counterfactual
#: targets of the fidelity suite.
BASELINES: dict[str, str] = {"loss": "loss-only baseline", "counterfactual": "counterfactual",
                             "counterfactual_small_lr": "counterfactual (lr/10)"}

#: Registered estimators that at the current weights are Exact's computation (per-sample gradients dotted with the
#: reference gradient): TracIn over one checkpoint.
SAME_AS_EXACT = ("tracin",)
#: Registered estimators the cost rows (cost suite, ``lai bench``, real-size rows) leave out by default: those of
#: SAME_AS_EXACT, and the aligned output-layer variant (it costs what ``lai-aligned`` does on the output layer).
UNTIMED = SAME_AS_EXACT + ("lai-last-aligned",)


def registered(sequence: bool = True) -> list[str]:
    """The registered names in registration order (``sequence=False`` leaves out the token-sequence-only ones),
    but those the suites compute themselves as :data:`BASELINES` (``loss``: -l_i from the training losses)."""
    names = estimator_names() if sequence else estimator_names(sequence_only=False)
    return [n for n in names if n not in BASELINES]


def scored(sequence: bool = True, research: bool = True) -> list[str]:
    """What the fidelity suite scores by default: the registered names with each research variant after the last
    registered entry of its family (e.g. ``lai-fit`` after the LAI entries)."""
    names = registered(sequence)
    if research:
        for v in RESEARCH.values():
            same = [i for i, n in enumerate(names) if family(n) == v.family]
            names.insert(same[-1] + 1 if same else len(names), v.name)
    return names


def _without(names: list[str], left_out: Iterable[str]) -> list[str]:
    left_out = set(left_out)
    for n in left_out:
        get_estimator(n)  # an exclusion names a registered estimator (UnknownEstimatorError otherwise)
    return [n for n in names if n not in left_out]


def timed(sequence: bool = False) -> list[str]:
    """The estimators the cost rows time by default: every registered one but :data:`UNTIMED`, the
    token-sequence-only ones last (and only when ``sequence``)."""
    names = _without(registered(sequence), UNTIMED)
    return [n for n in names if not is_sequence_only(n)] + [n for n in names if is_sequence_only(n)]


def forward_only() -> list[str]:
    """The registered influence estimators without a backward pass, not sequence-only (what curated training times
    against a plain step; rankings such as ``loss`` are not influence)."""
    return estimator_names(needs_backward=False, sequence_only=False, influence=True)


def influence_estimators(sequence: bool = True) -> list[str]:
    """The scored names that estimate influence: ``scored`` but Exact (the target) and the registered rankings whose
    sign means nothing (``Capabilities.influence`` False: el2n, grad-norm); loss and the counterfactuals are not
    estimators."""
    return [n for n in scored(sequence) if n != "exact" and (n in RESEARCH or get_estimator(n).caps.influence)]


def cheap(sequence: bool = True) -> list[str]:
    """The scored estimators far cheaper than Exact: not equal to Exact (Ghost) and not Exact's computation
    (:data:`SAME_AS_EXACT`)."""
    return [n for n in _without(scored(sequence), SAME_AS_EXACT) if not is_exact(n)]


def layer_variants() -> list[str]:
    """The layer-aware question's estimators (report and figure 7): the scored LAI family, token-sequence-only
    ones left out (``lai``, ``lai-last``, ``lai-fit``, ...)."""
    return [n for n in scored(sequence=False) if family(n) == "lai"]


def is_exact(name: str) -> bool:
    """Whether ``name`` is registered as equal to Exact wherever it returns a number (Exact, Ghost)."""
    return name not in RESEARCH and name not in BASELINES and get_estimator(name).caps.exact


@functools.lru_cache(maxsize=8)
def _known(registry: tuple[str, ...]) -> frozenset[str]:
    """Every name a result file may spell, for one state of the registry (``registry``: its names, the cache key;
    a result table calls :func:`canonical` once per row)."""
    return frozenset(scored()) | frozenset(BASELINES)


def canonical(name: object) -> str:
    """``name`` as registered: old result files spell estimators with underscores (``lai_last``); names that are
    neither (``counterfactual_small_lr``) are kept."""
    text = str(name)
    known = _known(tuple(estimator_names()))
    alt = text.replace("_", "-")
    return alt if text not in known and alt in known else text


def is_sequence_only(name: str) -> bool:
    """Whether ``name`` (registered) is meaningful only for token-sequence outputs."""
    return get_estimator(name).caps.sequence_only


def label(name: str) -> str:
    """The name shown in tables and figures: the registry's label, a research variant's or a baseline's."""
    if name in RESEARCH:
        return RESEARCH[name].label
    if name in BASELINES:
        return BASELINES[name]
    try:
        return get_estimator(name).label
    except UnknownEstimatorError:
        return name


def family(name: str) -> str:
    """Estimators drawn alike (e.g. every LAI variant is ``"lai"``); the name itself for a baseline or an unknown
    name."""
    if name in RESEARCH:
        return RESEARCH[name].family
    try:
        return get_estimator(name).family or name
    except UnknownEstimatorError:
        return name


__all__ = ["ResearchVariant", "RESEARCH", "BASELINES", "SAME_AS_EXACT", "UNTIMED", "registered", "scored", "timed",
           "forward_only", "influence_estimators", "cheap", "layer_variants",
           "is_exact", "canonical", "is_sequence_only", "label", "family"]
