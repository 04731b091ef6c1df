"""One configuration vocabulary for the three settings systems of ``validation``.

The validation suites (``validation.settings.profiles.ModelSettings``), the benchmark
(``validation.bench.workloads.WorkloadSpec``) and curated training (``validation.curation.tasks.TaskSpec``)
spell the same concept with the same field name and the same shape:

============  ===========================================================================================
field         meaning (shape)
============  ===========================================================================================
dataset       data set name for ``validation.data.datasets.get_dataset`` ("mnist1d", "digits", "pydoc"), or
              "synthetic" (the benchmark's seeded random inputs) (str)
data_kw       keyword arguments of that loader: n_train, n_test, seq_len, val_fraction (the share of
              documents held out as the test split), ... (dict)
model         model name for ``validation.training.models.build_model`` ("mlp", "cnn1d", "cnn2d", "transformer") (str)
model_kw      its keyword arguments (dict)
noise         the injected noise: :class:`NoiseSpec` (kind, rate, mode, mapping); in JSON a dict with those
              four keys
lr            SGD learning rate, also the lr every score uses (float)
batch_size    training minibatch (int)
n_score       training samples scored per estimator call or scored step (int)
n_ref         reference samples per score: the reference batch, or the subset drawn from a pool (int)
steps/epochs  length of a training run in SGD steps (suites) or passes over the training set (curation)
============  ===========================================================================================

Objects built from settings (``validation.training.task.Task``, ``validation.bench.workloads.Workload``,
``validation.curation.tasks.Prepared``) keep their settings (``settings`` / ``spec``); their ``model`` is
the built ``nn.Module`` (a factory, ``make_model``, in ``Prepared``) and their ``noise`` the realised record
(``validation.data.noise`` ``to_dict()``: the spec's kind and rate plus what was drawn: seed, noise_rate, ...).

Settings written by earlier code used other names; :func:`upgrade` maps them (``LEGACY``) so stored
configurations (run folders' ``config.json``, ``paper_figs/data/curation/provenance.json``) still read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from torch import Tensor

from validation.data import instance_noise as vinstance
from validation.data import noise as vnoise

NOISE_KINDS = ("symmetric", "class_dependent", "pair_flip", "instance_dependent", "documents")
LABEL_NOISE = ("symmetric", "class_dependent", "pair_flip", "instance_dependent")
INPUT_NOISE = ("instance_dependent",)  # label noise that reads the inputs x as well as the labels

#: Old field name -> where its value lives now (``a.b``: key ``b`` of field ``a``).
LEGACY = {"ref_size": "n_ref", "rate": "noise.rate", "doc_mode": "noise.mode", "seq_len": "data_kw.seq_len"}


class ConfigError(ValueError):
    """A setting with an unknown name, kind or shape (the message names it and the accepted values)."""


@dataclass(frozen=True)
class NoiseSpec:
    """Noise injected into the training data.

    kind: "symmetric" (each of round(rate * n) labels flipped to another class drawn uniformly),
    "class_dependent" (class c becomes ``mapping[c]`` with probability rate), "pair_flip" (exactly
    round(rate * n) labels, chosen by a seeded permutation, become c + 1 mod K;
    ``validation.data.instance_noise.pair_flip_label_noise``), "instance_dependent" (exactly round(rate * n)
    labels flipped toward what a weak classifier of the inputs confuses; needs ``x``;
    ``validation.data.instance_noise.instance_dependent_label_noise``) or "documents" (round(rate * n)
    training documents corrupted); rate: fraction in [0, 1]; mode: documents only, a
    ``validation.data.noise.DOC_MODES`` corruption (default "shuffle"); mapping: class_dependent only, the class each
    class flips to, one entry per class (None: the pair flip c -> c + 1 mod K).
    """

    kind: str
    rate: float
    mode: str | None = None
    mapping: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise ConfigError(f"noise kind must be one of {NOISE_KINDS}, got {self.kind!r}")
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not 0.0 <= self.rate <= 1.0:
            raise ConfigError(f"noise rate must be a number in [0, 1], got {self.rate!r}")
        object.__setattr__(self, "rate", float(self.rate))
        if self.kind == "documents" and self.mode is None:
            object.__setattr__(self, "mode", "shuffle")
        if self.mode is not None and (self.kind != "documents" or self.mode not in vnoise.DOC_MODES):
            raise ConfigError(f"noise mode applies to kind 'documents' only, one of {vnoise.DOC_MODES}; "
                              f"got mode {self.mode!r} for kind {self.kind!r}")
        if self.mapping is not None:
            if self.kind != "class_dependent":
                raise ConfigError(f"noise mapping applies to kind 'class_dependent' only, got kind {self.kind!r}")
            if isinstance(self.mapping, (Mapping, str)) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in self.mapping):
                raise ConfigError(f"noise mapping must be a list of class indices (entry c: the class c flips "
                                  f"to), got {self.mapping!r}")
            object.__setattr__(self, "mapping", tuple(self.mapping))

    def to_dict(self) -> dict[str, Any]:
        """{"kind", "rate", "mode", "mapping"} (JSON-ready; mapping as a list or None)."""
        d = asdict(self)
        d["mapping"] = None if self.mapping is None else list(self.mapping)
        return d

    @classmethod
    def from_config(cls, value: NoiseSpec | Mapping[str, Any]) -> NoiseSpec:
        """A ``NoiseSpec`` from itself or from its dict (as written by :meth:`to_dict` or by earlier code,
        which left out unset keys)."""
        if isinstance(value, NoiseSpec):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"noise must be a NoiseSpec or a dict with keys kind, rate[, mode, mapping]; "
                              f"got {value!r}")
        unknown = sorted(set(value) - {"kind", "rate", "mode", "mapping"})
        if unknown or "kind" not in value or "rate" not in value:
            raise ConfigError(f"noise dict needs keys kind and rate (optional: mode, mapping); got {sorted(value)}")
        return cls(**dict(value))

    @property
    def needs_inputs(self) -> bool:
        """The noise depends on the inputs x as well as the labels (``apply_labels`` needs ``x``)."""
        return self.kind in INPUT_NOISE

    def apply_labels(self, y: Tensor, num_classes: int, seed: int, x: Tensor | None = None) -> vnoise.NoiseRecord:
        """Noisy labels of ``y`` (int [n]) by ``validation.data.noise`` / ``validation.data.instance_noise``,
        seeded. ``x``: the inputs [n, ...] of those labels, read only by input-dependent kinds
        (``needs_inputs``: "instance_dependent"), which raise ``ConfigError`` without it."""
        if self.kind == "symmetric":
            return vnoise.symmetric_label_noise(y, self.rate, num_classes, seed=seed)
        if self.kind == "class_dependent":
            return vnoise.class_dependent_label_noise(y, self.rate, num_classes, seed=seed, mapping=self.mapping)
        if self.kind == "pair_flip":
            return vinstance.pair_flip_label_noise(y, self.rate, num_classes, seed=seed)
        if self.kind == "instance_dependent":
            if x is None:
                raise ConfigError("instance_dependent label noise needs the inputs x (apply_labels(..., x=...))")
            if len(x) != len(y):
                raise ConfigError(f"x has {len(x)} samples, y {len(y)}")
            return vinstance.instance_dependent_label_noise(x, y, self.rate, num_classes, seed=seed)
        raise ConfigError(f"label noise kind must be one of {LABEL_NOISE}, got {self.kind!r}")

    def apply_documents(self, docs: Sequence[Any], seed: int) -> vnoise.DocumentNoiseRecord:
        """Corrupted documents (str or (name, text) items) by ``validation.data.noise.corrupt_documents``, seeded."""
        if self.kind != "documents":
            raise ConfigError(f"document noise needs kind 'documents', got {self.kind!r}")
        return vnoise.corrupt_documents(docs, self.rate, seed=seed, mode=str(self.mode))


def upgrade(d: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of settings dict ``d`` in this vocabulary: ``LEGACY`` names moved to their new places, an old
    noise kind string (with ``rate`` and ``doc_mode`` beside it) made a :class:`NoiseSpec` dict. Keys already
    in the new form win over legacy ones; other keys are kept as they are."""
    out = dict(d)
    if isinstance(out.get("noise"), str):
        kind = out.pop("noise")
        out["noise"] = {"kind": kind, "rate": out.pop("rate", None),
                        "mode": out.pop("doc_mode", None) if kind == "documents" else None}
        out.pop("doc_mode", None)
    if "ref_size" in out:
        out.setdefault("n_ref", out.pop("ref_size"))
    if "seq_len" in out:  # a setting of text data only (earlier task settings carried it everywhere, unused)
        seq_len = out.pop("seq_len")
        if out.get("dataset") == "pydoc":
            out["data_kw"] = {"seq_len": seq_len, **dict(out.get("data_kw") or {})}
    return out


__all__ = ["NoiseSpec", "ConfigError", "NOISE_KINDS", "LABEL_NOISE", "INPUT_NOISE", "LEGACY", "upgrade"]
