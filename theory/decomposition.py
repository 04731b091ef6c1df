"""Exact decomposition of Ghost - LAI into per-layer terms built from the Jacobians J^l = d f / d s^l.

Statement (an identity; lr = eta, mean over the reference batch v, layers l):

    Ghost_i - LAI_i = eta mean_v sum_l E_l(i, v),  E_l(i, v) = g_i^T D_l(i, v) g_v.

* Linear layer on 2-D inputs (one token):  D_l = (a_i . a_v) (J^l_i J^l_v^T - I)  with a = [a, 1] when the bias
  is trainable; the output layer has J^L = I so its term vanishes.
* Sequences / token layers, LAI with ``token_pairing="all_pairs"`` (layer tokens = output tokens t):
      E_l(i, v) = sum_{t,t'} A_{t,t'} g_i^T (J_{i,t} J_{v,t'}^T - E_{t,t'}) g_v = <A^{iv}, B^{iv} - G^{iv}>_F,
  A^{iv}_{t,t'} = a_{i,t} . a_{v,t'} (embeddings: [id == id']), B^{iv}_{t,t'} = b_{i,t} . b_{v,t'} with
  b = J^T g, G^{iv}_{t,t'} = g_{i,t} . g_{v,t'}, and E_{t,t'} = e_t e_{t'}^T (x) I_C the block that picks output
  token t of sample i and t' of sample v. The output layer again has J_{i,t} = e_t (x) I_C, so its term is 0.
* Convolutions (and any layer LAI flattens: tokens not matching f's, or ``token_pairing="aligned"``):
      E_l(i, v) = g_i^T (Theta_l(i, v) - (abar_i . abar_v) I) g_v,
      Theta_l(i, v) = sum_g sum_{p,p'} (x_{i,p,g} . x_{v,p',g}) J_{i,p,g} J_{v,p',g}^T
  over unfolded patches x (the layer's empirical NTK); LAI uses the flattened input map abar, so no
  simpler J-form exists and E_l is this exact difference.
* LayerNorm / RMSNorm: no LAI term, E_l(i, v) = g_i^T Theta_l(i, v) g_v (its whole Ghost term).

Everything is computed from per-sample Jacobians (``theory.jacobians``) and forward quantities; no
backward pass of the network is used. ``decomposition`` must equal ``influence.ghost(...).per_layer[l] -
influence.lai(..., layers="all", token_pairing=...).per_layer.get(l, 0)`` to rounding.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from influence.batch import Batch, LossFn
from influence.factors import gram

from .terms import LayerTerm, Side, build_side


def ghost_pair(tr: LayerTerm, rf: LayerTerm, g_tr: Tensor, g_rf: Tensor) -> Tensor:
    """Ghost_l(i, v) = sum_g sum_{tau,tau'} K (b_i . b_v), b from the Jacobians: [n_i, n_v]."""
    k = gram(tr.left, rf.left)  # [n_i, n_v, tau, tau', G]
    b_tr, b_rf = tr.output_grads(g_tr), rf.output_grads(g_rf)
    bb = torch.einsum("igtq,vgsq->ivtsg", b_tr, b_rf)
    return (k.to(bb.dtype) * bb).sum((2, 3, 4))


def lai_flat_gram(tr: LayerTerm, rf: LayerTerm) -> Tensor:
    """abar_i . abar_v of LAI's flattened activation: [n_i, n_v]."""
    return gram(tr.lai, rf.lai).to(tr.dtype).sum((2, 3, 4))


def token_pair_error(tr: LayerTerm, rf: LayerTerm, s_tr: Side, s_rf: Side) -> Tensor:
    """<A^{iv}, B^{iv} - G^{iv}>_F = sum_{t,t'} A_{t,t'} g_i^T (J_{i,t} J_{v,t'}^T - E_{t,t'}) g_v: [n_i, n_v]."""
    a = gram(tr.left, rf.left)[..., 0].to(tr.dtype)  # [n_i, n_v, T, T']
    b_tr, b_rf = tr.output_grads(s_tr.g)[:, 0], rf.output_grads(s_rf.g)[:, 0]  # [n, T, q]
    bb = torch.einsum("itq,vsq->ivts", b_tr, b_rf)
    g_tr = s_tr.g.reshape(s_tr.n, s_tr.tokens, -1)
    g_rf = s_rf.g.reshape(s_rf.n, s_rf.tokens, -1)
    gg = torch.einsum("itc,vsc->ivts", g_tr, g_rf)
    return (a * (bb - gg)).sum((2, 3))


def pair_error(tr: LayerTerm, rf: LayerTerm, s_tr: Side, s_rf: Side) -> Tensor:
    """E_l(i, v) = Ghost_l(i, v) - LAI_l(i, v) (without lr): [n_i, n_v]."""
    if tr.kind == "token":
        return token_pair_error(tr, rf, s_tr, s_rf)
    ghost = ghost_pair(tr, rf, s_tr.g, s_rf.g)
    if tr.kind == "norm":
        return ghost
    return ghost - lai_flat_gram(tr, rf) * (s_tr.g @ s_rf.g.T)


def pairwise_terms(s_tr: Side, s_rf: Side, fn: Callable[[LayerTerm, LayerTerm, Side, Side], Tensor],
                   chunk_size: int | None = None) -> dict[str, Tensor]:
    """{layer: fn over train rows in chunks, [n_train, n_ref]}."""
    chunk = chunk_size or s_tr.n
    out = {}
    for name, tr in s_tr.terms.items():
        rf = s_rf.terms[name]
        rows = [fn(_rows(tr, i, chunk), rf, _side_rows(s_tr, i, chunk), s_rf) for i in range(0, s_tr.n, chunk)]
        out[name] = torch.cat(rows)
    return out


def _rows(term: LayerTerm, start: int, size: int) -> LayerTerm:
    sl = slice(start, start + size)
    return LayerTerm(term.name, term.module, term.kind, None if term.jac is None else term.jac[sl],
                     term.left.rows(sl), None if term.lai is None else term.lai.rows(sl), term.dtype)


def _side_rows(side: Side, start: int, size: int) -> Side:
    sl = slice(start, start + size)
    return Side(side.g[sl], side.tokens, {}, None)


def sides(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, token_pairing: str = "all_pairs",
          chunk_size: int | None = None) -> tuple[Side, Side]:
    """Train and reference ``Side``s (forward captures and per-sample Jacobians)."""
    return (build_side(model, loss_fn, train, token_pairing, "train", chunk_size),
            build_side(model, loss_fn, ref, token_pairing, "ref", chunk_size))


def decomposition_pairwise(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float, *,
                           token_pairing: str = "all_pairs", chunk_size: int | None = None) -> dict[str, Tensor]:
    """Per layer, lr * E_l(i, v) = lr * (Ghost_l(i, v) - LAI_l(i, v)): {module name: [n_train, n_ref]}.

    Assumptions: eval-mode model treating samples independently; every trainable layer is Linear, Conv1d/2d,
    Embedding, LayerNorm or RMSNorm, runs once per forward and shares no parameter; any loss (g is taken from
    the outputs as in ``influence.lai``). Exact for every such architecture (MLP, CNN, transformer with
    attention, LayerNorm and residual connections): it is an algebraic identity, not an approximation.
    """
    s_tr, s_rf = sides(model, loss_fn, train, ref, token_pairing, chunk_size)
    return {k: lr * v for k, v in pairwise_terms(s_tr, s_rf, pair_error, chunk_size).items()}


def decomposition(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float, *,
                  token_pairing: str = "all_pairs", chunk_size: int | None = None) -> dict[str, Tensor]:
    """Per-sample Ghost - LAI split by layer: {module name: [n_train]} = lr * mean_v E_l(i, v).

    Summed over layers it equals ``influence.ghost(...).scores - influence.lai(..., layers="all",
    token_pairing=token_pairing).scores``. Assumptions as in ``decomposition_pairwise``.
    """
    pair = decomposition_pairwise(model, loss_fn, train, ref, lr, token_pairing=token_pairing,
                                  chunk_size=chunk_size)
    return {k: v.mean(1) for k, v in pair.items()}
