"""Fidelity suite: how well each estimator ranks the scored batch like Exact and like the true counterfactual,
and how well it detects the injected noisy samples.

At one scored step (a :class:`StepContext`), for every estimator e (see ``StepContext.estimators``) and target
t in {exact, counterfactual, counterfactual_small_lr}, e != t: Spearman, Kendall tau-b, top-k and bottom-k
overlap (k = ceil(topk_fraction * n)) and sign agreement of e's scores against t's. For every score (targets included): the
AUROC of detecting the noisy samples with -score (``metrics.noisy_auroc``), and of the combined ranks
``loss+lai`` and ``loss+lai-last`` (:data:`COMBINED`). The per-sample scores are kept
(table ``scores``) for trajectory and scatter figures. Per layer (table ``layer_terms``): how LAI's term of
that layer compares with Ghost's (``lai_variants.layer_diagnostics``) and the ``lai-fit`` weight when scored.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from influence.curation.policies import rank_sum
from validation.suites.lai_variants import last_layer_name, layer_diagnostics

from .context import StepContext
from .metrics import kendall, noisy_auroc, sign_agreement, spearman, topk_overlap, topk_size

TARGETS = ("exact", "counterfactual", "counterfactual_small_lr")
#: Estimators whose combined rank with the loss (``loss+<name>``, ``influence.curation.policies.rank_sum``) is
#: also scored as a noisy-label detector (table ``auroc`` only: it is a ranking, not an influence estimate).
COMBINED = ("lai", "lai-last")


def combined_ranks(scores: dict[str, Tensor]) -> dict[str, Tensor]:
    """``loss+<e>`` [n] for e in :data:`COMBINED` scored beside ``loss``: rank of e's score + rank of -loss, as
    curation's ``loss+<e>`` keeps samples (``influence.curation.policies.rank_sum``; the ``loss`` estimator
    scores -l_i, ``rank_sum`` takes the losses l_i themselves). Empty without ``loss``."""
    if "loss" not in scores:
        return {}
    return {f"loss+{e}": rank_sum(scores[e], -scores["loss"]) for e in COMBINED if e in scores}


def fidelity_step(ctx: StepContext, topk_fraction: float = 0.1) -> dict[str, list[dict[str, Any]]]:
    """Rows of the ``fidelity``, ``auroc`` and ``scores`` tables for one scored step."""
    names = ctx.estimators()
    scores = {e: ctx.scores(e).detach().double().cpu() for e in names}
    key = {"model": ctx.model_name, "seed": ctx.seed, "step": ctx.step}
    n, k = ctx.n, topk_size(ctx.n, topk_fraction)
    fid = []
    for target in TARGETS:
        for e in names:
            if e == target:
                continue
            a, b = scores[e], scores[target]
            fid.append({**key, "estimator": e, "target": target, "n": n, "k": k, "spearman": spearman(a, b),
                        "kendall": kendall(a, b), "topk_overlap": topk_overlap(a, b, k),
                        "bottomk_overlap": topk_overlap(a, b, k, largest=False),
                        "sign_agreement": sign_agreement(a, b)})
    noisy = ctx.is_noisy.cpu()
    detectors = {**scores, **combined_ranks(scores)}
    auroc = [{**key, "estimator": e, "auroc": noisy_auroc(noisy, s), "n": n, "n_noisy": int(noisy.sum())}
             for e, s in detectors.items()]
    ids = ctx.ids.cpu().tolist()
    flags = [int(v) for v in noisy.tolist()]
    per_sample = [{**key, "sample": i, "is_noisy": f, "estimator": e, "score": float(s)}
                  for e in names for i, f, s in zip(ids, flags, scores[e].tolist())]
    last = last_layer_name(ctx.result("lai-last"))
    weights = ctx.fit_weights() if "lai-fit" in names else {}
    layers = [{**key, **r, "fit_weight": weights.get(r["layer"], 1.0 if r["has_lai_term"] else 0.0)
               if weights else None}
              for r in layer_diagnostics(ctx.result("ghost"), ctx.result("lai"), last)]
    return {"fidelity": fid, "auroc": auroc, "scores": per_sample, "layer_terms": layers}


__all__ = ["fidelity_step", "combined_ranks", "TARGETS", "COMBINED"]
