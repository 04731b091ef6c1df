"""Bounds on |Ghost_i - LAI_i| per training sample: data-dependent (Jacobians) and a-priori (no backward pass).

Both bound every pair term |E_l(i, v)| of ``theory.decomposition`` and then use
|Ghost_i - LAI_i| = |eta mean_v sum_l E_l(i, v)| <= |eta| mean_v sum_l beta_l(i, v).

Data-dependent beta_l (the theorem), from per-sample Jacobians computed with ``torch.func`` (vmap over samples):

* token layers (Linear/Embedding paired token-to-token with f, incl. every Linear of an MLP):
      beta_l = ||g_i|| ||g_v|| sum_{t,t'} ||a_{i,t}|| ||a_{v,t'}|| eps_{t,t'}(i, v),
      eps_{t,t'}(i, v) = ||J_{i,t} J_{v,t'}^T - E_{t,t'}||_2,
  which for one token is  ||a_i|| ||a_v|| ||g_i|| ||g_v|| ||J_i J_v^T - I||_2  (a includes the bias 1);
  Cauchy-Schwarz on each (t, t') term of the identity. Exact zero for the output layer (J = I).
* flattened layers (convolutions; token layers LAI flattens):
  beta_l = ||g_i|| ||g_v|| ||Theta_l(i,v) - (abar_i.abar_v) I||_2 with Theta_l(i, v) = Phi_i Phi_v^T the layer NTK
  (Phi = d f / d theta_l from J and the unfolded input). No J-form with a separate activation factor exists here
  because Ghost pairs unfolded patches while LAI pairs the flattened input map.
* LayerNorm/RMSNorm (no LAI term): beta_l = ||g_i|| ||g_v|| ||Theta_l(i, v)||_2
  (<= ||g|| ||g'|| ||J|| ||J'|| ||S|| ||S'||).

Valid for every architecture ``theory.decomposition`` covers (attention, LayerNorm, residuals included) and any
loss; g is the measured loss-to-output gradient. LayerNorm/RMSNorm parameters have no LAI term, so their whole
Ghost term is error and is bounded on its own.

A-priori beta_l replaces every Jacobian by a bound Jhat_l >= ||J^l||_2 from ``theory.lipschitz`` (weights'
spectral norms and activation Lipschitz constants through the network graph; residual additions sum) and uses
eps <= ||J_i|| ||J_v|| + 1 and ||Phi_i|| <= ||J_i|| ||S_i||, S_i = d s^l / d theta_l (a forward quantity):

* token layers: ||g_i|| ||g_v|| (sum_t ||a_{i,t}||)(sum_t ||a_{v,t}||) (Jhat_tr Jhat_ref + 1), and 0 for the layer
  whose output is the model output (J = I exactly, known from the graph);
* flattened layers: ||g_i|| ||g_v|| (Jhat_tr Jhat_ref ||S_i|| ||S_v|| + ||abar_i|| ||abar_v||);
* LayerNorm/RMSNorm: ||g_i|| ||g_v|| Jhat_tr Jhat_ref ||S_i|| ||S_v||.

Each a-priori term dominates the data-dependent one, so apriori >= data >= |Ghost - LAI|. Only forward
quantities enter (activations, outputs, weights); g comes from the outputs (for cross-entropy
||softmax - onehot||_2 <= sqrt 2 per token, used with ``worst_case_output_gradient=True``). Where the graph
holds ops without a Jacobian rule (attention's products of activations, softmax, RMSNorm) ``apriori_bound``
raises ``NotImplementedError``: only the data-dependent bound applies to such models (transformers).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from influence.batch import Batch, LossFn
from influence.errors import InvalidArgumentError
from influence.losses import cross_entropy

from .decomposition import lai_flat_gram, pairwise_terms
from .jacobians import single_thread
from .lipschitz import JacobianBounds, jacobian_norm_bounds
from .terms import LayerTerm, Side, build_side, layer_modules


def _token_blocks(term: LayerTerm, side: Side, sign: float) -> Tensor:
    """X_{i,t} = [J_{i,t}, sign * U_t]: [n, T, F, q + C], U_t selecting output token t's rows."""
    jac = term.jac[:, :, 0].permute(0, 2, 1, 3)  # [n, T, F, q]
    n, t, f, _ = jac.shape
    c = f // side.tokens
    u = torch.zeros(t, f, c, dtype=jac.dtype, device=jac.device)
    for k in range(t):
        u[k, k * c:(k + 1) * c] = sign * torch.eye(c, dtype=jac.dtype, device=jac.device)
    return torch.cat([jac, u.expand(n, -1, -1, -1)], -1)


def token_epsilons(tr: LayerTerm, rf: LayerTerm, s_tr: Side, s_rf: Side) -> Tensor:
    """eps_{t,t'}(i, v) = ||J_{i,t} J_{v,t'}^T - E_{t,t'}||_2: [n_i, n_v, T, T'].

    Written as ||X Y^T|| with X = [J_{i,t}, -U_t], Y = [J_{v,t'}, U_{t'}]; when F > q + C both are first reduced
    by QR (||X Y^T|| = ||R_X R_Y^T||)."""
    x = _token_blocks(tr, s_tr, -1.0)
    y = _token_blocks(rf, s_rf, 1.0)
    if x.shape[-2] > x.shape[-1]:
        with single_thread():
            x = torch.linalg.qr(x, mode="r")[1]  # X = Q_X R_X, rows of R_X replace the F rows of X
            y = torch.linalg.qr(y, mode="r")[1]
    rows = [spectral_norm(torch.einsum("tfr,vser->vtsfe", x[i], y)) for i in range(x.shape[0])]
    return torch.stack(rows)


def spectral_norm(m: Tensor) -> Tensor:
    """||m||_2 over the last two dims, as sqrt(lambda_max(m m^T)) of the smaller Gram (symmetric eigensolver,
    faster than an SVD on CPU; relative rounding of order machine epsilon)."""
    gram = m @ m.transpose(-1, -2) if m.shape[-2] <= m.shape[-1] else m.transpose(-1, -2) @ m
    with single_thread():
        return torch.linalg.eigvalsh(gram)[..., -1].clamp(min=0).sqrt()


def data_pair_bound(tr: LayerTerm, rf: LayerTerm, s_tr: Side, s_rf: Side) -> Tensor:
    """beta_l(i, v) >= |E_l(i, v)|: [n_i, n_v]."""
    gn = s_tr.g.norm(dim=1)[:, None] * s_rf.g.norm(dim=1)[None, :]
    if tr.kind == "token":
        eps = token_epsilons(tr, rf, s_tr, s_rf)
        a_tr, a_rf = tr.token_norms(), rf.token_norms()
        return gn * torch.einsum("it,vs,ivts->iv", a_tr, a_rf, eps)
    phi_tr, phi_rf = tr.param_jacobian(), rf.param_jacobian()
    ntk = torch.einsum("ifm,vem->ivfe", phi_tr, phi_rf)
    if tr.kind == "flat":
        eye = torch.eye(ntk.shape[-1], dtype=ntk.dtype, device=ntk.device)
        ntk = ntk - lai_flat_gram(tr, rf)[:, :, None, None] * eye
    return gn * spectral_norm(ntk)


def apriori_pair_bound(tr: LayerTerm, rf: LayerTerm, g_tr: Tensor, g_rf: Tensor, j_tr: JacobianBounds,
                       j_rf: JacobianBounds) -> Tensor:
    """A-priori beta_l(i, v) from forward quantities, ``g_*`` [n] output-gradient norms (or their bounds)."""
    gn = g_tr[:, None] * g_rf[None, :]
    jj = j_tr.norms[tr.name] * j_rf.norms[tr.name]
    if tr.kind == "token":
        if tr.name in j_tr.exact_output and tr.name in j_rf.exact_output:
            return torch.zeros_like(gn)
        a = tr.token_norms().sum(1)[:, None] * rf.token_norms().sum(1)[None, :]
        return gn * a * (jj + 1.0)
    s = tr.param_map_norms()[:, None] * rf.param_map_norms()[None, :]
    out = gn * jj * s
    if tr.kind == "flat":
        out = out + gn * tr.lai_norms()[:, None] * rf.lai_norms()[None, :]
    return out


def cross_entropy_gradient_norm_bound(targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Worst case of ||g_i|| for ``influence.cross_entropy`` without looking at the logits: ||softmax - onehot||_2
    <= sqrt 2 per counted token (sum of squares (1 - p_y)^2 + sum_{c != y} p_c^2 <= 2 (1 - p_y)^2), and the
    sequence loss averages N_i counted tokens, so ||g_i|| <= sqrt(2 N_i) / N_i. [n]."""
    counted = (targets != ignore_index).reshape(targets.shape[0], -1).sum(1).to(torch.get_default_dtype())
    return torch.where(counted > 0, (2.0 * counted).sqrt() / counted.clamp(min=1), torch.zeros_like(counted))


def data_bound_pairwise(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float, *,
                        token_pairing: str = "all_pairs", chunk_size: int | None = None) -> dict[str, Tensor]:
    """{layer: |lr| beta_l(i, v)} [n_train, n_ref], data-dependent."""
    s_tr = build_side(model, loss_fn, train, token_pairing, "train", chunk_size)
    s_rf = build_side(model, loss_fn, ref, token_pairing, "ref", chunk_size)
    return {k: abs(lr) * v for k, v in pairwise_terms(s_tr, s_rf, data_pair_bound, chunk_size).items()}


def data_bound(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float, *,
               token_pairing: str = "all_pairs", per_layer: bool = False,
               chunk_size: int | None = None) -> Tensor | dict[str, Tensor]:
    """Data-dependent bound Delta_i >= |Ghost_i - LAI_i| per training sample: [n_train] (per layer: a dict).

    Assumptions: those of ``theory.decomposition`` (eval mode, Linear/Conv/Embedding/LayerNorm/RMSNorm layers
    each called once, no tied weights); any architecture built from them, any loss.
    """
    pair = data_bound_pairwise(model, loss_fn, train, ref, lr, token_pairing=token_pairing, chunk_size=chunk_size)
    per = {k: v.mean(1) for k, v in pair.items()}
    return per if per_layer else sum(per.values())


def apriori_pairs(model: nn.Module, loss_fn: LossFn, s_tr: Side, s_rf: Side, train: Batch, ref: Batch, lr: float,
                  worst_case_output_gradient: bool = False) -> dict[str, Tensor]:
    """{layer: |lr| a-priori beta_l(i, v)} [n_train, n_ref] from forward-only sides (Jacobians unused)."""
    modules = layer_modules(model)
    j_tr = jacobian_norm_bounds(model, train[0], {k: modules[k] for k in s_tr.terms})
    j_rf = jacobian_norm_bounds(model, ref[0], {k: modules[k] for k in s_rf.terms})
    g_tr, g_rf = s_tr.g.norm(dim=1), s_rf.g.norm(dim=1)
    if worst_case_output_gradient:
        if loss_fn is not cross_entropy:
            raise InvalidArgumentError("worst_case_output_gradient needs influence.cross_entropy (||softmax - onehot|| "
                                       "<= sqrt 2); for other losses use the measured ||g||")
        g_tr = cross_entropy_gradient_norm_bound(train[1]).to(g_tr)
        g_rf = cross_entropy_gradient_norm_bound(ref[1]).to(g_rf)
    return {name: abs(lr) * apriori_pair_bound(tr, s_rf.terms[name], g_tr, g_rf, j_tr, j_rf)
            for name, tr in s_tr.terms.items()}


def apriori_bound_pairwise(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float, *,
                           token_pairing: str = "all_pairs",
                           worst_case_output_gradient: bool = False) -> dict[str, Tensor]:
    """{layer: |lr| a-priori beta_l(i, v)} [n_train, n_ref]; no backward pass through the network."""
    s_tr = build_side(model, loss_fn, train, token_pairing, "train", with_jacobians=False)
    s_rf = build_side(model, loss_fn, ref, token_pairing, "ref", with_jacobians=False)
    return apriori_pairs(model, loss_fn, s_tr, s_rf, train, ref, lr, worst_case_output_gradient)


def apriori_bound(model: nn.Module, loss_fn: LossFn, train: Batch, ref: Batch, lr: float, *,
                  token_pairing: str = "all_pairs", per_layer: bool = False,
                  worst_case_output_gradient: bool = False) -> Tensor | dict[str, Tensor]:
    """A-priori bound Delta_i >= data bound >= |Ghost_i - LAI_i| per training sample: [n_train].

    Assumptions: as ``data_bound``, plus every op on the path from a layer to the output has a Jacobian rule in
    ``theory.lipschitz`` (Linear/conv with zero padding, ReLU/leaky ReLU/tanh/sigmoid/exact GELU/ELU/softplus/
    hardtanh, residual additions, reshapes, LayerNorm with a batch-local bound); attention, softmax and RMSNorm
    raise ``NotImplementedError`` (use ``data_bound``). ``worst_case_output_gradient`` replaces the measured
    ||g_i|| by the cross-entropy worst case sqrt(2 N_i) / N_i.
    """
    pair = apriori_bound_pairwise(model, loss_fn, train, ref, lr, token_pairing=token_pairing,
                                  worst_case_output_gradient=worst_case_output_gradient)
    per = {k: v.mean(1) for k, v in pair.items()}
    return per if per_layer else sum(per.values())

