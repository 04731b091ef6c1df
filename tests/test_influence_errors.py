"""Every bad input raises an error that names the problem; nothing returns a silent wrong number."""

import pytest
import torch
from conftest import rel_err
from torch import nn

import influence

CE = influence.cross_entropy
ESTIMATORS = [influence.exact, influence.ghost, influence.lai]


def data(n=6, d=4, k=3):
    torch.manual_seed(0)
    x, y = torch.randn(n, d), torch.randint(0, k, (n,))
    return (x[:4], y[:4]), (x[4:], y[4:])


def mlp(*extra):
    return nn.Sequential(nn.Linear(4, 5), *extra, nn.Linear(5, 3)).eval()


class Gate(nn.Module):
    """A layer no rule knows: x * sin(w)."""

    def __init__(self, d=5):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d))

    def forward(self, x):
        return x * self.w.sin()


def test_unsupported_layer_is_named_and_fallback_is_exact(f64):
    """PReLU has no layer rule: fallback='error' names it; 'auto' (default) scores it by Exact with one warning,
    'exact' silently; LAI skips it and lists it."""
    model = mlp(nn.PReLU(5)).eval()
    train, ref = data()
    with pytest.raises(influence.UnsupportedLayerError, match=r"1\.weight \(1 \(PReLU\): no layer rule"):
        influence.ghost(model, CE, train, ref, lr=0.1, fallback="error")
    with pytest.raises(influence.UnsupportedLayerError, match="PReLU"):
        influence.lai(model, CE, train, ref, lr=0.1, fallback="error")
    ex = influence.exact(model, CE, train, ref, lr=0.1)
    with pytest.warns(influence.RoutedToExactWarning, match="1.weight"):
        gh = influence.ghost(model, CE, train, ref, lr=0.1)
    assert rel_err(gh.scores, ex.scores) < 1e-10 and gh.routed_to_exact == ["1.weight"]
    gh = influence.ghost(model, CE, train, ref, lr=0.1, fallback="exact")
    assert rel_err(gh.scores, ex.scores) < 1e-10
    assert set(gh.per_layer) == {"0", "1", "2"}
    ghp = influence.ghost(model, CE, train, ref, lr=0.1, fallback="exact", pairwise=True)
    assert rel_err(ghp.pairwise, influence.exact(model, CE, train, ref, lr=0.1, pairwise=True).pairwise) < 1e-10
    with pytest.warns(influence.RoutedToExactWarning):
        la = influence.lai(model, CE, train, ref, lr=0.1)
    assert "1.weight" in la.skipped and torch.isfinite(la.scores).all()


@pytest.mark.parametrize("est", ESTIMATORS)
def test_batchnorm_in_train_mode_is_refused(est):
    model = mlp(nn.BatchNorm1d(5)).train()
    train, ref = data()
    with pytest.raises(influence.TrainModeBatchNormError, match=r"1: BatchNorm1d is in train mode.*eval"):
        est(model, CE, train, ref, lr=0.1, **({"fallback": "exact"} if est is influence.ghost else {}))


@pytest.mark.parametrize("est", ESTIMATORS)
def test_scalar_loss_is_refused(est):
    train, ref = data()
    with pytest.raises(influence.LossShapeError, match=r"per-sample losses of shape \[2\].*reduction='none'"):
        est(mlp(), nn.CrossEntropyLoss(), train, ref, lr=0.1)


@pytest.mark.parametrize("est", ESTIMATORS)
def test_mismatched_batch_sizes(est):
    (x, y), ref = data()
    with pytest.raises(influence.BatchSizeError, match="train: 4 inputs but 3 targets"):
        est(mlp(), CE, (x, y[:3]), ref, lr=0.1)
    with pytest.raises(influence.BatchSizeError, match="pair"):
        est(mlp(), CE, x, ref, lr=0.1)


@pytest.mark.parametrize("est", ESTIMATORS)
def test_non_finite_input(est):
    (x, y), ref = data()
    for bad in (float("nan"), float("inf"), -float("inf")):
        x2 = x.clone()
        x2[2, 0] = bad
        with pytest.raises(influence.NonFiniteInputError, match=r"train inputs holds NaN or infinite.*\[2\]"):
            est(mlp(), CE, (x2, y), ref, lr=0.1)


@pytest.mark.parametrize("est", ESTIMATORS)
def test_non_finite_loss(est):
    """Finite inputs whose hidden activations overflow for sample 2 (float32)."""
    (x, y), ref = data()
    model = mlp()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    x = x.clone()
    x[2] = 3e38
    with pytest.raises(influence.NonFiniteLossError, match=r"train samples \[2\]"):
        est(model, CE, (x, y), ref, lr=0.1)


def test_shared_parameter_outside_supported_layers(f64):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)
            self.norm.weight = self.a.bias  # a bias reused as a norm scale
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.norm(self.a(x)))

    train, ref = data()
    model = Odd().eval()
    with pytest.raises(influence.SharedParameterError, match=r"\['a', 'norm'\]"):
        influence.ghost(model, CE, train, ref, lr=0.1, fallback="error")
    ex = influence.exact(model, CE, train, ref, lr=0.1)  # exact handles it
    with pytest.warns(influence.RoutedToExactWarning, match=r"a\.bias.*\['a', 'norm'\]"):
        gh = influence.ghost(model, CE, train, ref, lr=0.1)
    assert gh.routed_to_exact == ["a.bias"] and rel_err(gh.scores, ex.scores) < 1e-10


def test_in_place_modification_is_detected():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 3)).eval()
    train, ref = data()
    with pytest.raises(influence.InPlaceModificationError, match="0: its input or output was modified in place"):
        influence.ghost(model, CE, train, ref, lr=0.1)


def test_unsupported_embedding_options():
    train = (torch.randint(0, 5, (3, 2)), torch.randint(0, 2, (3,)))
    model = nn.Sequential(nn.Embedding(5, 3, max_norm=1.0), nn.Flatten(), nn.Linear(6, 2))
    with pytest.raises(influence.UnsupportedLayerError, match="max_norm"):
        influence.ghost(model, CE, train, train, lr=0.1)
    model = nn.Sequential(nn.Embedding(5, 3, scale_grad_by_freq=True), nn.Flatten(), nn.Linear(6, 2))
    with pytest.raises(influence.UnsupportedLayerError, match="scale_grad_by_freq"):
        influence.lai(model, CE, train, train, lr=0.1)


def test_bad_options():
    train, ref = data()
    with pytest.raises(ValueError, match="mode"):
        influence.ghost(mlp(), CE, train, ref, lr=0.1, mode="fast")
    with pytest.raises(ValueError, match="layers"):
        influence.lai(mlp(), CE, train, ref, lr=0.1, layers="first")
    with pytest.raises(ValueError, match="token_pairing"):
        influence.lai(mlp(), CE, train, ref, lr=0.1, token_pairing="diagonal")
    with pytest.raises(ValueError, match="checkpoint"):
        influence.tracin(mlp(), CE, train, ref, checkpoints=[])
    with pytest.raises(ValueError, match="fallback"):
        influence.ghost(mlp(), CE, train, ref, lr=0.1, fallback="approx")


def test_last_layer_lai_requires_output_layer():
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)).eval()
    train, ref = data()
    with pytest.raises(influence.InfluenceError, match="LayerNorm"):
        influence.lai(model, CE, train, ref, lr=0.1, layers="last")

    class Doubled(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return 2 * self.head(x)

    with pytest.raises(influence.InfluenceError, match="not the model output"):
        influence.lai(Doubled().eval(), CE, train, ref, lr=0.1, layers="last")


def test_tracin_checkpoint_loads_weights_only(tmp_path):
    model = mlp()
    train, ref = data()

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "evil.pt"
    torch.save({"0.weight": Evil()}, path)
    with pytest.raises(Exception, match="[Ww]eights only"):
        influence.tracin(model, CE, train, ref, checkpoints=[(path, 0.1)])
    with pytest.raises(KeyError, match="checkpoint lacks"):
        influence.tracin(model, CE, train, ref, checkpoints=[({"0.weight": model[0].weight}, 0.1)])
