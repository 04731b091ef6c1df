"""The curated-training comparison (``lai curate``): tasks, protocols, seeds, the experiment, its timing and command.

The library it runs (``curation_step``, ``Curator``, methods, policies, signals, reference policies, DDP) is
``influence.curation``. Here: ``tasks`` (noisy-label tasks), ``protocols`` (ours vs the original study's warm-up and
resampled reference), ``seeds`` (one random stream per purpose), ``experiment``/``runner``/``cli`` (the comparison
run: ``python -m validation curate --task mnist1d-noisy40 --protocol both``; ``--profile quick|paper``), ``timing``
(interleaved per-step timing), ``ddp_check`` (the DDP equality check under torchrun).
"""

from .protocols import PROTOCOLS, apply_protocol

__all__ = ["PROTOCOLS", "apply_protocol"]
