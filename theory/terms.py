"""What the theory needs of one batch: g, every layer's Jacobian J^l, and its Ghost and LAI factors.

For a layer l every per-sample parameter gradient is a sum over "tokens" tau (positions of the layer output)
and groups G of outer products x_{tau,g} (x) b_{tau,g}, with b_{tau,g} = J_{tau,g}^T g the output gradient
(J_{tau,g} = d f / d s_{tau,g}, [F, q]). The Ghost pair term is therefore

    Ghost_l(i, v) = sum_g sum_{tau, tau'} K_{g,tau,tau'}(i, v) g_i^T J_{i,tau,g} J_{v,tau',g}^T g_v,
    K_{g,tau,tau'}(i, v) = x_{i,tau,g} . x_{v,tau',g}                                  (*)

with, per layer type (``x`` is the Ghost left factor, given by the layer's rule in ``influence.layers``:
``LayerRule.theory_factor``):

* ``nn.Linear`` and ``transformers``' ``Conv1D``: tau = the input's token positions, G = 1, x = [a, 1] (1 only with
  a trainable bias);
* ``nn.Conv1d/2d``: tau = output positions p, g = conv group, x = [unfolded patch of group g, 1];
* ``nn.Embedding``: tau = token positions, x = onehot(id) (K = [id == id'], padding_idx contributes nothing);
* ``nn.LayerNorm/RMSNorm``: tau = token positions, g = normalised coordinate k (q = 1), x = [xhat_{tau,k}, 1].

(*) equals g_i^T Theta_l(i, v) g_v with Theta_l = Phi_i Phi_v^T the layer's empirical NTK, Phi_i = d f_i / d theta_l.

LAI's term for the same layer (exactly as ``influence.lai`` with ``token_pairing``):

* kind ``"token"`` (Linear/Embedding whose token count equals f's, with pairing ``"all_pairs"``, or T = 1 for
  2-D outputs under either pairing): LAI_l(i, v) = sum_{t,t'} A_{t,t'}(i, v) (g_{i,t} . g_{v,t'}),
  A = K (the same activation Gram);
* kind ``"flat"`` (convolutions always; Linear/Embedding whose tokens do not match f's, or pairing
  ``"aligned"``): LAI_l(i, v) = (abar_i . abar_v) (g_i . g_v), abar = the flattened LAI activation
  (the input map with one bias 1 for convs; every token's [a, 1] concatenated for Linear; for embeddings
  abar_i . abar_v = number of positions with equal ids);
* kind ``"norm"`` (LayerNorm/RMSNorm): no LAI term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from influence.batch import Batch, LossFn, check_batch
from influence.capture import Plan, capture_forward, plan
from influence.checks import check_loss_fn, check_model
from influence.errors import InvalidArgumentError, TheoryScopeError
from influence.factors import Dense, Index
from influence.layers import Context, LayerRule, rule_for

from .jacobians import jacobians

PAIRINGS = ("all_pairs", "aligned")


@dataclass
class LayerTerm:
    """One layer on one batch.

    ``jac``: [n, F, G, tau, q] (None when built without Jacobians); ``left``: Ghost left factor, Dense
    [n, tau, G, p] or Index [n, tau];
    ``kind``: ``"token"``, ``"flat"`` or ``"norm"``; ``lai``: for ``"flat"`` the flattened LAI activation
    (Dense [n, 1, 1, m] or a flattened Index), else None (``"token"`` uses ``left``).
    """

    name: str
    module: nn.Module
    kind: str
    jac: Tensor | None
    left: Dense | Index
    lai: Dense | Index | None
    dtype: torch.dtype

    def output_grads(self, g: Tensor) -> Tensor:
        """b_{tau,g} = J_{tau,g}^T g: [n, G, tau, q]."""
        return torch.einsum("nf,nfgtq->ngtq", g, self.jac)

    def token_norms(self) -> Tensor:
        """||x_{i,t}|| for every token of a G = 1 factor: [n, tau]."""
        if isinstance(self.left, Index):
            return (self.left.ids >= 0).to(self.dtype)
        return self.left.x[:, :, 0, :].norm(dim=-1)

    def param_map_norms(self) -> Tensor:
        """||d s / d theta_l||_2 per sample: max over groups of the spectral norm of the [tau, p] factor matrix
        (for one-hot factors sqrt of the largest id multiplicity). [n]."""
        if isinstance(self.left, Index):
            ids = self.left.ids
            counts = (ids[:, :, None] == ids[:, None, :]) & (ids >= 0)[:, :, None]
            return counts.sum(2).amax(1).to(self.dtype).sqrt()
        x = self.left.x.permute(0, 2, 1, 3)  # [n, G, tau, p]
        return torch.linalg.matrix_norm(x, ord=2).amax(1)

    def lai_norms(self) -> Tensor:
        """||abar_i|| of the flattened LAI activation: [n]."""
        if isinstance(self.lai, Index):
            return (self.lai.ids >= 0).sum(1).to(self.dtype).sqrt()
        return self.lai.x.reshape(self.lai.x.shape[0], -1).norm(dim=-1)

    def param_jacobian(self) -> Tensor:
        """Phi_i = d f_i / d theta_l as [n, F, G*q*p] (for one-hot factors [n, F, q*V])."""
        n, f = self.jac.shape[:2]
        if isinstance(self.left, Index):
            ids = self.left.ids
            onehot = torch.zeros(*ids.shape, self.left.size, dtype=self.dtype, device=ids.device)
            onehot.scatter_(2, ids.clamp(min=0).unsqueeze(-1), (ids >= 0).unsqueeze(-1).to(self.dtype))
            return torch.einsum("nftq,ntv->nfqv", self.jac[:, :, 0], onehot).reshape(n, f, -1)
        return torch.einsum("nfgtq,ntgp->nfgqp", self.jac, self.left.x).reshape(n, f, -1)


@dataclass
class Side:
    """One batch: ``g`` [n, F] flattened loss-to-output gradients, ``tokens`` = T of f ([n, T, C] outputs; 1
    otherwise), ``terms`` per layer (in execution order)."""

    g: Tensor
    tokens: int
    terms: dict[str, LayerTerm]
    inputs: Any

    @property
    def n(self) -> int:
        return self.g.shape[0]

    @property
    def classes(self) -> int:
        return self.g.shape[1] // self.tokens


def layer_plan(model: nn.Module) -> Plan:
    """The plan of the trainable layers the estimators score; ``TheoryScopeError`` for layers or sharing the
    theory does not cover."""
    check_model(model)
    pl = plan(model)
    if pl.shared:
        raise TheoryScopeError("theory: parameters shared between modules (tied weights) make one Ghost block "
                               "span several layers; the per-layer decomposition needs untied layers")
    if pl.routed:
        raise TheoryScopeError("theory: no per-layer structure for "
                               f"{sorted({why for _, why in pl.routed.values()})}")
    bare = [name for name, rule in pl.rules.items() if type(rule).theory_factor is LayerRule.theory_factor]
    if bare:  # e.g. attention: several maps per call, no one Jacobian layout
        raise TheoryScopeError(f"theory: no per-layer structure for {bare}")
    return pl


def layer_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The trainable layers the estimators score; raises ``TheoryScopeError`` for layers or sharing the theory does
    not cover."""
    return layer_plan(model).modules


def vouched(model: nn.Module, loss_fn: LossFn, batch: Batch, pl: Plan, n: int, where: str) -> None:
    """Raise ``TheoryScopeError`` unless the capture's verification (``influence.verify``, cached per model and
    input signature; it also checks that the samples are independent, ``influence.coupling``) vouches for every
    trainable parameter: the theory's per-layer terms are Ghost's only where Ghost's factors are exact."""
    from influence.verify import verdict_for
    failed = verdict_for(model, loss_fn, batch, pl, n, where)
    if failed:
        whys = sorted({why for _, why in failed.values()})
        raise TheoryScopeError(f"theory: the verification does not vouch for {sorted(pl.names[k] for k in failed)} "
                               f"on the {where} batch ({'; '.join(whys)[:400]}); the per-layer decomposition and "
                               "the bounds hold only where every parameter is factored exactly")


def layer_term(name: str, module: nn.Module, inp: Tensor, jac: Tensor | None, f_tokens: int,
               token_pairing: str, dtype: torch.dtype) -> LayerTerm:
    """Build one layer's ``LayerTerm`` from its input [n, ...] and Jacobian [n, F, *s_shape] (or None), through
    the layer's rule in the registry (``influence.layers``)."""
    rule = rule_for(module)
    ctx = Context()
    tf = None if rule is None else rule.theory_factor(module, inp, ctx)
    if tf is None:
        raise TheoryScopeError(f"theory: no per-layer structure for {name} ({type(module).__name__})")
    j = None if jac is None else tf.jac(jac)
    if tf.kind == "norm":
        return LayerTerm(name, module, "norm", j, tf.left, None, dtype)
    aligned_tokens = token_pairing == "all_pairs" or f_tokens == 1  # with one token both pairings coincide
    if tf.kind == "flat" or not aligned_tokens or tf.left.tokens != f_tokens:
        act = rule.lai_activation(module, inp, ctx)
        return LayerTerm(name, module, "flat", j, tf.left, act.flatten_tokens(), dtype)
    return LayerTerm(name, module, "token", j, tf.left, None, dtype)


def build_side(model: nn.Module, loss_fn: LossFn, batch: Batch, token_pairing: str = "all_pairs",
               where: str = "train", chunk_size: int | None = None, with_jacobians: bool = True) -> Side:
    """Forward capture (layer inputs, f, g) plus, with ``with_jacobians``, per-sample Jacobians of every scored
    layer for one batch (``torch.func``; the only part that differentiates through the network)."""
    if token_pairing not in PAIRINGS:
        raise InvalidArgumentError(f"token_pairing must be one of {PAIRINGS}, got {token_pairing!r}")
    n = check_batch(batch, where)
    check_loss_fn(loss_fn)
    pl = layer_plan(model)
    modules = pl.modules
    vouched(model, loss_fn, batch, pl, n, where)
    cap = capture_forward(model, loss_fn, batch, modules, n, where)
    reused = [name for name, calls in cap.calls.items() if len(calls) > 1]
    if reused:
        raise TheoryScopeError(f"theory: modules {reused} run more than once per forward pass")
    if cap.bad:
        raise TheoryScopeError(f"theory: no per-sample layer structure for {sorted(cap.bad)} "
                               f"({'; '.join(sorted(set(cap.bad.values())))[:400]})")
    jac = jacobians(model, batch[0], {name: modules[name] for name in cap.order}, chunk_size) \
        if with_jacobians else {}
    tokens = cap.f.shape[1] if cap.f.dim() == 3 else 1
    g = cap.g.reshape(n, -1)
    terms = {name: layer_term(name, modules[name], cap.calls[name][0].inp, jac.get(name), tokens, token_pairing,
                              g.dtype) for name in cap.order}
    return Side(g, tokens, terms, batch[0])
