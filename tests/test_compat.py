"""Private torch APIs and patches of user objects live in ``influence/compat.py`` only (a torch upgrade breaks in one
place), and model-keyed caches are ``influence.caches.ModelCache`` objects cleared by ``clear_caches``."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from influence import caches, compat

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("influence", "theory", "validation")
PRIVATE = {
    "torch.utils._pytree": r"torch\.utils\._pytree|from torch\.utils import _pytree",
    "._orig_mod": r"\._orig_mod\b",
    "_cache_enabled": r"\b_cache_enabled\b",
    "_BatchNorm": r"\b_BatchNorm\b",
    "_InstanceNorm": r"\b_InstanceNorm\b",
    "_DropoutNd": r"\b_DropoutNd\b",
    "._parameters": r"\._parameters\b",
    "._version": r"(?<=[\w)\]])(?<!influence)\._version\b",  # a tensor's, not the package's ``_version.py``
    '__dict__["forward"]': r"""__dict__(\[|\.get\(|\.pop\(|\.setdefault\()\s*["']forward["']""",
}


def _offenders() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "influence/compat.py":
                continue
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                for what, pattern in PRIVATE.items():
                    if re.search(pattern, code):
                        found.append(f"{rel}:{lineno}: {what}")
    return found


def test_the_patterns_see_what_they_look_for() -> None:
    """The scan is not vacuous: each pattern matches the use it names."""
    samples = {"torch.utils._pytree": "from torch.utils._pytree import tree_map", "._orig_mod": "m._orig_mod",
               "_cache_enabled": "parametrize._cache_enabled = 0", "_BatchNorm": "nn.modules.batchnorm._BatchNorm",
               "_InstanceNorm": "instancenorm._InstanceNorm", "_DropoutNd": "dropout._DropoutNd",
               "._parameters": "m._parameters.items()", "._version": "t._version",
               '__dict__["forward"]': 'm.__dict__["forward"] = f'}
    for what, sample in samples.items():
        assert re.search(PRIVATE[what], sample), what
    for package_version in ("from ._version import __version__", "import influence._version"):
        assert not re.search(PRIVATE["._version"], package_version)


def test_private_torch_apis_only_in_compat() -> None:
    offenders = _offenders()
    assert not offenders, "private torch APIs outside influence/compat.py:\n" + "\n".join(offenders)


def test_compat_names_match_torch() -> None:
    assert isinstance(nn.BatchNorm1d(2), compat.BATCHNORM) and isinstance(nn.SyncBatchNorm(2), compat.BATCHNORM)
    assert isinstance(nn.InstanceNorm1d(2), compat.INSTANCENORM) and isinstance(nn.Dropout2d(), compat.DROPOUT)
    leaves, spec = compat.tree_flatten({"a": (1, 2), "b": [3]})
    assert leaves == [1, 2, 3] and compat.tree_unflatten(leaves, spec) == {"a": (1, 2), "b": [3]}
    assert compat.tree_map(lambda x: x + 1, (1, [2])) == (2, [3]) and compat.tree_leaves([1, (2,)]) == [1, 2]
    paths, _ = compat.tree_flatten_with_path({"x": [5]})
    assert compat.keystr(paths[0][0]) == "['x'][0]"
    lin = nn.Linear(2, 2, bias=False)
    assert list(compat.own_parameters(lin)) == ["weight", "bias"] and compat.own_parameters(lin)["bias"] is None
    assert list(compat.own_buffers(nn.BatchNorm1d(2))) == ["running_mean", "running_var", "num_batches_tracked"]
    assert list(compat.own_children(nn.Sequential(lin))) == ["0"]
    t = torch.zeros(2)
    v = compat.version(t)
    t.add_(1)
    assert compat.version(t) == v + 1
    assert compat.compiled_inner(lin) is None
    compat.marks(lin)["_influence_test"] = 1
    assert lin._influence_test == 1 and "_influence_test" not in dict(lin.named_parameters())


def test_parametrization_cache_switched_off_and_restored() -> None:
    from torch.nn.utils import parametrize
    assert compat.parametrization_cache_depth() == 0
    with parametrize.cached():
        assert compat.parametrization_cache_depth() == 1
        with compat.uncached_parametrizations():
            assert compat.parametrization_cache_depth() == 0
        assert compat.parametrization_cache_depth() == 1
    with compat.uncached_parametrizations():
        assert compat.parametrization_cache_depth() == 0


def test_shadow_forward_restores_exactly() -> None:
    lin = nn.Linear(2, 2)
    restore = compat.shadow_forward(lin, lambda x: x)
    assert compat.instance_forward(lin) is not None and torch.equal(lin(torch.ones(1, 2)), torch.ones(1, 2))
    restore()
    assert "forward" not in lin.__dict__ and compat.instance_forward(lin) is None

    def earlier(x):
        return x * 2
    lin.forward = earlier
    restore = compat.shadow_forward(lin, lambda x: x)
    restore()
    assert compat.instance_forward(lin) is earlier


def test_model_caches_are_cleared_together() -> None:
    from influence import coupling
    from influence.capture import clear_plans, plan
    from influence.capture.planning import _PLANS
    model = nn.Sequential(nn.Linear(2, 2))
    plan(model)
    coupling._CHECKED.entry(model).add("sig")
    assert model in _PLANS and model in coupling._CHECKED
    assert _PLANS in caches.CACHES and coupling._CHECKED in caches.CACHES
    clear_plans(model)
    assert model not in _PLANS and model in coupling._CHECKED
    plan(model)
    other = nn.Sequential(nn.Linear(2, 2))
    plan(other)
    caches.clear_caches(model)
    assert model not in _PLANS and model not in coupling._CHECKED and other in _PLANS
    caches.clear_caches()
    assert len(_PLANS) == 0 and len(coupling._CHECKED) == 0


def test_model_cache_holds_models_weakly() -> None:
    import gc
    cache = caches.ModelCache("test", list)
    try:
        model = nn.Linear(1, 1)
        cache.entry(model).append(1)
        assert cache.get(model) == [1] and cache.entry(model) == [1]
        del model
        gc.collect()
        assert len(cache) == 0
    finally:
        caches.CACHES.remove(cache)
