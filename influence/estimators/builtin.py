"""Temporary: the built-in entries (moving into one module per estimator)."""
from __future__ import annotations

from .registry import Capabilities, Estimator, register_estimator


def _unbuilt(*a, **k):  # the Session still builds these backends itself
    raise NotImplementedError


for entry in (
    Estimator("exact", "Exact", _unbuilt, Capabilities(per_sample_gradients=True, preconditioner=True,
                                                       parameter_subset=True, exact=True), family="exact"),
    Estimator("ghost", "Ghost", _unbuilt, Capabilities(preconditioner=True, self_reference=True, exact=True),
              family="ghost"),
    Estimator("lai", "LAI", _unbuilt, Capabilities(needs_backward=False, self_reference=True),
              {"layers": "all", "token_pairing": "all_pairs"}, family="lai"),
    Estimator("lai-last", "LAI (last layer)", _unbuilt, Capabilities(needs_backward=False, self_reference=True),
              {"layers": "last", "token_pairing": "all_pairs"}, family="lai"),
    Estimator("lai-aligned", "LAI (aligned tokens)", _unbuilt,
              Capabilities(needs_backward=False, self_reference=True, sequence_only=True),
              {"layers": "all", "token_pairing": "aligned"}, family="lai"),
    Estimator("lai-last-aligned", "LAI last (aligned)", _unbuilt,
              Capabilities(needs_backward=False, self_reference=True, sequence_only=True),
              {"layers": "last", "token_pairing": "aligned"}, family="lai"),
    Estimator("tracin", "TracIn", _unbuilt, Capabilities(per_sample_gradients=True, checkpoints=True),
              family="tracin"),
    Estimator("tracin-last", "TracIn (last layer)", _unbuilt, Capabilities(per_sample_gradients=True,
                                                                           checkpoints=True),
              {"last_layer": True}, family="tracin"),
):
    register_estimator(entry)
