"""Scoring protocols of curated training: when scoring starts and what the reference batch is.

* ``ours``: curation from step 0 against one fixed reference batch (``n_ref`` samples of the clean held-out
  pool, drawn once per seed);
* ``original``: the original study's protocol: plain training for the first third of the epochs (the study
  warmed up 10 epochs on CIFAR; 10 of our 30), then curation against a fresh random reference subset of the
  pool at every step, of one training batch's size (a subset smaller than the pool, so the draws differ).

``both`` runs the two, each in its own run folder (the protocol is part of the task's settings), so every
curation table shows whether its conclusions depend on the protocol.
"""

from __future__ import annotations

import dataclasses

from .tasks import TaskSpec

PROTOCOLS = ("ours", "original")
CHOICES = (*PROTOCOLS, "both")
ORIGINAL_WARMUP = 1 / 3  # fraction of the epochs trained without curation under the original protocol


def apply_protocol(spec: TaskSpec, protocol: str) -> TaskSpec:
    """``spec`` with the reference policy, reference size and warm-up of ``protocol`` (``ours`` | ``original``)."""
    if protocol == "ours":
        return dataclasses.replace(spec, protocol="ours", reference="fixed", warmup_steps=0, warmup_epochs=0.0)
    if protocol == "original":
        return dataclasses.replace(spec, protocol="original", reference="resample", warmup_steps=0,
                                   warmup_epochs=float(round(spec.epochs * ORIGINAL_WARMUP)),
                                   n_ref=min(spec.n_ref, spec.batch_size))
    raise ValueError(f"unknown protocol {protocol!r}; choose from {CHOICES}")


def expand(protocol: str) -> list[str]:
    """The protocols a ``--protocol`` value runs: ``both`` -> [ours, original]."""
    if protocol not in CHOICES:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {CHOICES}")
    return list(PROTOCOLS) if protocol == "both" else [protocol]
