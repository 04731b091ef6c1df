"""Run profiles: model, data, noise, training and scoring settings of each validation run.

``quick``: every suite on small settings (one seed, 600-2,000 SGD steps, 4 scored steps, scored batches of
64 samples / 32 sequences, 2 widths x 2 batch sizes and 2 timed repeats for the cost sweep): about 3 minutes
of CPU on one thread (measured 2:23 user + 0:51 sys with repeats 3, while other jobs shared the 2 cores; the
cost suite is ~40 % of it, the transformer's bound and fidelity units ~30 %; the quick cost numbers are a
smoke check, ``lai bench`` is the reference for speed claims).
``full``: paper scale (the reference models' widths, 5 seeds, 2,000-3,000 steps, 10 scored steps, scored
batches of 128-256, 4 widths x 4 batch sizes): hours. ``tiny``: the settings the tests use (seconds).

The bound suite on the transformer uses a sub-batch (8 x 8 sequences of 8 tokens) and skips
``theory.data_bound`` in both quick and full: through a 256-byte vocabulary it takes ~15-20 s per (train,
ref) pair of 8-token sequences at d_model 32 on one core (20 min for the 64 pairs of one quick step); the
a-priori bound does not cover attention (recorded as n/a).

A profile is a plain dict, so it serialises into the run's ``config.json`` unchanged:

    {"seeds": [...], "cost": {...}, "models": {name: ModelSettings.to_dict()}}

The torch thread count is not a profile setting: ``lai run --threads N`` (default 1, the same default as every
``lai`` command) records it in the run's ``config.json`` next to the code revision, so both key the run folder.

Every number a run uses is in its config, so a config reproduces the run.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields
from typing import Any

from validation.settings.config import ConfigError, NoiseSpec, upgrade

MODELS = ("mlp", "cnn1d", "cnn2d", "transformer")
SUITES = ("bound", "fidelity", "cost")


@dataclass
class ModelSettings:
    """Settings of one model's training run and scoring (field names as in ``validation.settings.config``).

    dataset: name for ``validation.data.datasets.get_dataset``; data_kw: its keyword arguments.
    model: name for ``validation.training.models.build_model``; model_kw: its keyword arguments; width_key: the
    model_kw key the cost suite sweeps.
    noise: a ``validation.settings.config.NoiseSpec`` (kind "symmetric" | "class_dependent" | "documents", rate, and the
    documents' corruption ``mode`` or the class-dependent ``mapping``); a dict of those keys is accepted.
    lr: SGD learning rate (also the lr of every score). batch_size: training minibatch.
    steps: SGD steps of the training run; score_points: number of scored steps, evenly spaced, ending at
    ``steps`` (step 0 = initialisation is not scored).
    n_score: size of the scored batch (a fixed, seeded set of training samples tracked across steps);
    n_ref: size of the clean reference batch (from the test split).
    topk_fraction: k of the top-k overlap as a fraction of n_score.
    cost_widths: widths the cost suite sweeps (the ``width_key`` of model_kw; tuple-valued keys get (w, w)).
    bound_n_score, bound_n_ref, bound_seq_len: when set, the bound suite scores only the first bound_n_score
    samples of the scored batch against the first bound_n_ref reference samples, sequences cut to their first
    bound_seq_len tokens (theory's per-sample Jacobians grow with n * T * (T * vocab) * width).
    bound_data_bound: compute theory.data_bound (False: recorded as not available).
    fit_probe, fit_ref_chunks: the ``lai-fit`` variant (validation/suites/lai_variants.py) fits its layer weights at
    every scored step on ``fit_probe`` training samples outside the scored batch, scored against the reference
    batch split into ``fit_ref_chunks`` chunks (0 = the variant is not scored).
    """

    dataset: str
    data_kw: dict[str, Any]
    model: str
    model_kw: dict[str, Any]
    width_key: str
    noise: NoiseSpec
    lr: float
    batch_size: int
    steps: int
    score_points: int
    n_score: int
    n_ref: int
    topk_fraction: float = 0.1
    cost_widths: tuple[int, ...] = ()
    bound_n_score: int | None = None
    bound_n_ref: int | None = None
    bound_seq_len: int | None = None
    bound_data_bound: bool = True
    fit_probe: int = 16
    fit_ref_chunks: int = 8

    def __post_init__(self) -> None:
        self.noise = NoiseSpec.from_config(self.noise)
        self.cost_widths = tuple(self.cost_widths)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the shape a profile holds and ``config.json`` stores)."""
        return {**asdict(self), "noise": self.noise.to_dict()}

    def score_steps(self) -> list[int]:
        """Scored steps: ``score_points`` evenly spaced steps in (0, steps], last = steps."""
        if self.score_points < 1 or self.steps < 1:
            return []
        pts = sorted({max(1, round(self.steps * (k + 1) / self.score_points)) for k in range(self.score_points)})
        return pts


def _quick() -> dict[str, Any]:
    mnist1d = {"n_train": 4000, "n_test": 1000}
    models = {
        "mlp": ModelSettings("mnist1d", mnist1d, "mlp", {"hidden": (128, 128)}, "hidden",
                             NoiseSpec("symmetric", 0.2), lr=0.1, batch_size=64, steps=2000,
                             score_points=4, n_score=64, n_ref=128, cost_widths=(64, 128)),
        "cnn1d": ModelSettings("mnist1d", dict(mnist1d), "cnn1d", {"channels": 16}, "channels",
                               NoiseSpec("class_dependent", 0.3), lr=0.3, batch_size=64, steps=2000,
                               score_points=4, n_score=64, n_ref=128, cost_widths=(8, 16), bound_n_score=32,
                               bound_n_ref=32),
        "cnn2d": ModelSettings("digits", {"n_test": 360}, "cnn2d", {"channels": 8}, "channels",
                               NoiseSpec("symmetric", 0.2), lr=0.1, batch_size=64, steps=600,
                               score_points=4, n_score=64, n_ref=128, cost_widths=(8, 16), bound_n_score=32,
                               bound_n_ref=32),
        "transformer": ModelSettings("pydoc", {"seq_len": 32, "val_fraction": 0.1}, "transformer",
                                     {"d_model": 32, "n_layers": 2, "n_heads": 4, "max_len": 32}, "d_model",
                                     NoiseSpec("documents", 0.2, mode="shuffle_chars"), lr=0.5,
                                     batch_size=32, steps=600, score_points=4, n_score=32, n_ref=32,
                                     cost_widths=(16, 32), bound_n_score=8, bound_n_ref=8, bound_seq_len=8,
                                     bound_data_bound=False, fit_probe=8, fit_ref_chunks=4),
    }
    return {"seeds": [0], "cost": {"batch_sizes": [16, 64], "repeats": 2, "warmup": 1},
            "models": {k: v.to_dict() for k, v in models.items()}}


def _full() -> dict[str, Any]:
    p = _quick()
    p["seeds"] = list(range(5))
    p["cost"] = {"batch_sizes": [32, 64, 128, 256], "repeats": 7, "warmup": 2}
    m = p["models"]
    m["mlp"].update(model_kw={"hidden": (512, 512)}, steps=3000, score_points=10, n_score=256, n_ref=512,
                    cost_widths=(128, 256, 512, 1024))
    m["cnn1d"].update(model_kw={"channels": 32}, steps=3000, score_points=10, n_score=256, n_ref=512,
                      cost_widths=(16, 32, 64, 128), bound_n_score=64, bound_n_ref=64)
    m["cnn2d"].update(model_kw={"channels": 16}, steps=2000, score_points=10, n_score=256, n_ref=360,
                      cost_widths=(8, 16, 32, 64), bound_n_score=64, bound_n_ref=64)
    m["transformer"].update(data_kw={"seq_len": 64, "val_fraction": 0.1},
                            model_kw={"d_model": 64, "n_layers": 2, "n_heads": 4, "max_len": 64},
                            steps=3000, score_points=10, n_score=128, n_ref=128, cost_widths=(32, 64, 128, 256))
    return p


def _tiny() -> dict[str, Any]:
    p = _quick()
    p["cost"] = {"batch_sizes": [8], "repeats": 1, "warmup": 0}
    m = p["models"]
    for name in MODELS:
        m[name].update(steps=6, score_points=2, n_score=12, n_ref=10, batch_size=16)
    m["mlp"].update(data_kw={"n_train": 400, "n_test": 100}, model_kw={"hidden": (16, 16)}, cost_widths=(16,))
    m["cnn1d"].update(data_kw={"n_train": 400, "n_test": 100}, model_kw={"channels": 4}, cost_widths=(4,))
    m["cnn2d"].update(model_kw={"channels": 4}, cost_widths=(4,))
    m["transformer"].update(data_kw={"seq_len": 8, "val_fraction": 0.1},
                            model_kw={"d_model": 8, "n_layers": 1, "n_heads": 2, "max_len": 8},
                            n_score=8, n_ref=6, cost_widths=(8,))
    return p


PROFILES = {"quick": _quick, "full": _full, "tiny": _tiny}


def get_profile(name: str) -> dict[str, Any]:
    """A fresh copy of profile ``name`` (``quick``, ``full`` or ``tiny``)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from {sorted(PROFILES)}")
    return copy.deepcopy(PROFILES[name]())


def model_settings(profile: dict[str, Any], model: str) -> ModelSettings:
    """The ``ModelSettings`` of ``model`` in a profile dict (e.g. one read back from ``config.json``; settings
    written before ``model`` was a field take the profile key as the model name)."""
    d = upgrade(profile["models"][model])
    d.setdefault("model", model)
    unknown = sorted(set(d) - set(field_names()))
    if unknown:
        raise ConfigError(f"{model}: unknown settings {unknown}; choose from {', '.join(field_names())}")
    return ModelSettings(**d)


def with_width(model_kw: dict[str, Any], width_key: str, width: int) -> dict[str, Any]:
    """``model_kw`` with its width set: tuple-valued keys (MLP ``hidden``) keep their depth, all at ``width``."""
    kw = dict(model_kw)
    old = kw.get(width_key)
    kw[width_key] = tuple(width for _ in old) if isinstance(old, (tuple, list)) else width
    return kw


def field_names() -> list[str]:
    """Names of the ``ModelSettings`` fields (for overrides from the command line)."""
    return [f.name for f in fields(ModelSettings)]


# ---------------------------------------------------------------------------------- curated training

#: Curated-training profiles (``python -m lai curate --profile NAME``; run seed by seed, task by task, so
#: an interrupted run holds whole seeds). ``methods`` per protocol: the oracle runs under ``ours`` only; the
#: influence methods, random (rate-matched to lai) and the loss baselines run under both (the loss baselines
#: assume a model that has learned the clean patterns first, which the original protocol's warm-up gives
#: them). Vanilla never scores, so its run is identical under both protocols (tested); the tables borrow it
#: where a protocol lacks it. quick: one task at its full epochs (quick means fewer seeds, tasks and
#: methods, not fewer epochs: at 4 epochs every method is at ~30 % accuracy and curation reads as harmful);
#: ~2.5 minutes of CPU.
#: paper (issue 25's study): four tasks, 10 seeds, the ``ours`` protocol, each task trained to its plateau
#: (``validation.curation.tasks.EPOCHS``): MNIST-1D on the MLP, the 8x8 digits on the 2-D CNN, and real MNIST
#: digits on the small CNN with instance-dependent and with pair-flip noise. Methods: the layer-aware family's
#: members that curation can afford (all-layer LAI, last-layer LAI, exact-top2: exact terms of the top two
#: layers), each with a random control dropping the same fraction (``random`` is matched to lai), the combined
#: rank loss+lai-last, small-loss with the true noise rate (oracle rate) and with the rate estimated from the
#: data. The 1-D CNN task (``mnist1d-cnn-noisy40``) is left out of the profile: its vanilla run plateaus only
#: after 105 epochs, which did not fit the study's CPU time (run it alone: ``lai curate --task mnist1d-cnn-noisy40
#: --seeds 0-9 --methods <these>``). ``seeds`` is a list, as in the suites' profiles.
PAPER_CURATION_METHODS = ["vanilla", "lai", "lai-last", "exact-top2", "random", "random-as-lai-last",
                          "random-as-exact-top2", "loss+lai-last", "small-loss", "small-loss-est"]
CURATION_PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"tasks": ["mnist1d-noisy40"], "seeds": [0, 1, 2], "epochs": None, "threads": 1,
              "methods": {"ours": ["vanilla", "lai", "small-loss", "random", "oracle"], "original": ["lai"]}},
    "paper": {"tasks": ["mnist1d-noisy40", "digits-noisy40", "mnist-real-noisy40-instdep",
                        "mnist-real-noisy40-pairflip"],
              "seeds": list(range(10)), "epochs": None, "threads": 1, "methods": {"ours": PAPER_CURATION_METHODS}},
}


def get_curation_profile(name: str) -> dict[str, Any]:
    """A fresh copy of curated-training profile ``name`` (``quick`` or ``paper``)."""
    if name not in CURATION_PROFILES:
        raise ValueError(f"unknown curation profile {name!r}; choose from {sorted(CURATION_PROFILES)}")
    return copy.deepcopy(CURATION_PROFILES[name])


__all__ = ["MODELS", "SUITES", "ModelSettings", "PROFILES", "get_profile", "model_settings", "with_width",
           "field_names", "CURATION_PROFILES", "get_curation_profile"]
