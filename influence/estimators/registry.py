"""The estimator registry: one entry per estimator name, read by ``Session`` and by every command, table and figure.

An entry (:class:`Estimator`) names the estimator once (lower case, words joined by ``-``, as on the command line),
says how to build its backend, which options it fixes (``lai-last`` is LAI with ``layers="last"``) and what it can
do (:class:`Capabilities`). ``Session(estimator=name)`` reads the capabilities instead of testing names; the command
line, the curation methods, the bench, the suites, the report and the figures list ``names()``.

    from influence.estimators import Estimator, Capabilities, register_estimator
    register_estimator(Estimator("my-score", "My score", build=MyBackend, caps=Capabilities(needs_backward=False)))

A backend is any object with the methods of :class:`influence.estimators.protocol.Backend`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import InvalidArgumentError, UnknownEstimatorError


@dataclass(frozen=True)
class Capabilities:
    """What an estimator can do, read by ``Session`` and the experiment code.

    ``needs_backward``: runs a backward pass (costs are compared with a forward+backward, else with a forward).
    ``per_sample_gradients``: materialises per-sample gradients (memory ~ chunk x parameters; ``Session`` scores in
    chunks of ``DEFAULT_CHUNK`` by default). ``preconditioner``: scores lr * <P (.) grad l_i, grad L_ref>
    (``preconditioner=`` / an Adam ``optimizer=``). ``self_reference``: accepts ``ref=None`` (each batch against
    itself). ``checkpoints``: scores over ``checkpoints=[(state, lr), ...]`` instead of one ``lr``.
    ``parameter_subset``: accepts ``params=``/``state=``. ``sequence_only``: meaningful only for token-sequence
    outputs. ``exact``: equal to Exact wherever it returns a number (a reference for the others). ``influence``: the
    scores estimate the first-order influence lr * <grad l_i, grad L_ref>, so their sign says whether a step on the
    sample helps (curation's "keep score >= 0" applies); False for per-sample rankings that ignore the reference
    (loss, EL2N, gradient norm: select by rank)."""

    needs_backward: bool = True
    per_sample_gradients: bool = False
    preconditioner: bool = False
    self_reference: bool = False
    checkpoints: bool = False
    parameter_subset: bool = False
    sequence_only: bool = False
    exact: bool = False
    influence: bool = True


@dataclass(frozen=True)
class Estimator:
    """One registered estimator.

    ``build(model, loss_fn, settings, routed)`` returns the backend (``settings``: the session's
    :class:`influence.estimators.protocol.Settings` with ``options`` applied; ``routed``: parameters already known
    to need Exact). ``label``: its name in tables and figures; ``family``: entries drawn alike in figures (e.g. every
    layer-aware variant is ``"lai"``)."""

    name: str
    label: str
    build: Callable[..., Any]
    caps: Capabilities = field(default_factory=Capabilities)
    options: Mapping[str, Any] = field(default_factory=dict)
    family: str = ""
    description: str = ""

    def session_options(self) -> dict[str, Any]:
        """Keyword arguments of ``influence.Session`` that select this estimator."""
        return {"estimator": self.name}


_REGISTRY: dict[str, Estimator] = {}


def register_estimator(entry: Estimator, *, replace: bool = False) -> Estimator:
    """Add ``entry`` to the registry (after the entries registered before it); it then appears in every command,
    table and figure. A name already taken is refused unless ``replace``."""
    if not isinstance(entry, Estimator):
        raise InvalidArgumentError(f"register_estimator takes an influence.estimators.Estimator, got "
                                   f"{type(entry).__name__}")
    name = entry.name
    if not name or name != name.lower() or any(c in name for c in " _,[]="):
        raise InvalidArgumentError(f"estimator names are lower case words joined by '-'; got {name!r}")
    if name in _REGISTRY and not replace:
        raise InvalidArgumentError(f"an estimator named {name!r} is registered already (replace=True to replace it)")
    _REGISTRY[name] = entry
    return entry


def unregister_estimator(name: str) -> None:
    """Remove ``name`` from the registry (tests that register a toy estimator clean up with it)."""
    _REGISTRY.pop(name, None)


def get_estimator(name: str) -> Estimator:
    """The entry called ``name``; ``UnknownEstimatorError`` naming the choices (and the spelling) otherwise."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    alt = name.replace("_", "-")
    hint = f" (spelled {alt!r})" if alt in _REGISTRY else ""
    raise UnknownEstimatorError(f"unknown estimator {name!r}{hint}; choose from {', '.join(_REGISTRY)}")


def estimator_names(**caps: bool) -> list[str]:
    """Every registered name in registration order, keeping those whose capabilities equal ``caps`` (e.g.
    ``estimator_names(sequence_only=False)``, ``estimator_names(checkpoints=False)``)."""
    unknown = set(caps) - set(Capabilities.__dataclass_fields__)
    if unknown:
        raise InvalidArgumentError(f"unknown capabilities {sorted(unknown)}; known: "
                                   f"{sorted(Capabilities.__dataclass_fields__)}")
    if not caps:
        return list(_REGISTRY)
    return [n for n, e in _REGISTRY.items() if all(getattr(e.caps, k) == v for k, v in caps.items())]


def estimators() -> list[Estimator]:
    """Every registered entry, in registration order."""
    return list(_REGISTRY.values())
