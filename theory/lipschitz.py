"""A-priori upper bounds on ||J^l||_2 = ||d f / d s^l||_2 from weights and forward statistics only.

The model's forward pass (with a zero perturbation delta_l added to every layer output) is traced to an
ATen graph with ``make_fx``. Walking the graph from the output back to each delta_l, the chain rule over a
DAG gives  ||d f / d u|| <= sum_{users w of u} ||d f / d w|| * ||d w / d u||,  so a local bound on every
op's Jacobian yields a bound on every ||J^l||. The local bounds used (``local_bounds``):

* affine maps with a constant matrix (``addmm``/``mm``/``bmm`` with a weight, i.e. ``nn.Linear``):
  the spectral norm ||W||_2 (SVD);
* ``convolution`` with zero padding: min( sum_taps max_groups ||W[:, :, tap]||_2 ,
  sqrt(prod kernel) * max_groups ||W_group reshaped [C_out/G, C_in/G * K]||_2 ). Both are true upper bounds
  of the convolution as a linear map of any input size: every padded input element sits in at most
  prod(kernel) patches, and each tap is a partial selection (norm <= 1) followed by a 1x1 conv;
* elementwise activations: their Lipschitz constant sup|sigma'| (ReLU, hardtanh, tanh, softplus 1;
  sigmoid 1/4; leaky ReLU max(1, |slope|); ELU max(scale, scale*alpha*input_scale); exact GELU
  Phi(sqrt 2) + sqrt 2 phi(sqrt 2) ~ 1.068, where GELU'' = phi(x)(2 - x^2) vanishes);
* residual connections (``add``/``sub``): each operand 1 (times sqrt(broadcast copies)), so a residual
  block x + h(x) contributes 1 + ||dh/dx|| (the generalisation of the product form);
* reshapes, transposes, copies, zero padding, slicing/splitting/concatenation: 1; expand: sqrt(copies);
  sum/mean over k elements: sqrt(k) / 1/sqrt(k); multiplication/division by a constant: max|c| / max|1/c|;
* ``native_layer_norm`` (LayerNorm): its Jacobian at x is diag(w) rstd (P - xhat xhat^T / d) with P the
  centring projection, whose norm is <= max|w| * rstd(x); the bound uses the largest rstd over the batch
  (a forward statistic), so it is local to the batch, not a global Lipschitz constant.

Products of two activations (attention scores q k^T, attention-weighted values, gating), softmax, RMSNorm's
decomposed normalisation, pooling and in-place ops have no rule: ``jacobian_norm_bounds`` raises
``NotImplementedError`` naming the op and the layers upstream of it, and only ``theory.data_bound`` applies.

The bound holds for the whole batch's Jacobian, hence for every sample's block J^l_i (a sub-block). The traced
graph follows this batch's control flow. Spectral norms are computed in the model's dtype (SVD rounding of
order 1e-16 relative in float64).
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.fx import Interpreter, Node
from torch.fx.experimental.proxy_tensor import make_fx

from influence.batch import call_model, output_tensor
from influence.compat import tree_flatten, tree_unflatten

from .jacobians import perturbed, single_thread

aten = torch.ops.aten


def gelu_lipschitz() -> float:
    """sup_x |GELU'(x)| for the exact GELU x Phi(x): GELU'' = phi(x) (2 - x^2) vanishes at x = sqrt(2)."""
    x = math.sqrt(2.0)
    cdf = 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))
    pdf = math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return cdf + x * pdf


def sigmoid_lipschitz() -> float:
    """sup |sigma'| = sigma(0) (1 - sigma(0))."""
    s = 1.0 / (1.0 + math.exp(0.0))
    return s * (1.0 - s)


@dataclass
class JacobianBounds:
    """``norms[name]`` >= ||d f / d s^name||_2 for every sample of the traced batch; ``exact_output``: layers
    whose output is the model output itself (J = I, structurally)."""

    norms: dict[str, float]
    exact_output: set[str]


class _Recorder(Interpreter):
    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[Node, Any] = {}

    def run_node(self, n: Node) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


def _spectral(m: Tensor) -> float:
    """Largest singular value (max over leading batch dims)."""
    if m.dim() < 2:
        return float(m.abs().max()) if m.numel() else 0.0
    with single_thread():
        return float(torch.linalg.matrix_norm(m.detach(), ord=2).max())


def _numel(v: Any) -> int:
    return v.numel() if isinstance(v, Tensor) else 1


def _max_abs(v: Any) -> float:
    return float(v.detach().abs().max()) if isinstance(v, Tensor) else abs(float(v))


def conv_operator_bound(weight: Tensor, groups: int) -> float:
    """Upper bound on the norm of a zero-padded convolution (any stride/dilation/input size) as a linear map."""
    c_out = weight.shape[0]
    w = weight.detach().reshape(groups, c_out // groups, weight.shape[1], -1)  # [G, q, c_in/G, K]
    taps = w.permute(3, 0, 1, 2)  # [K, G, q, c_in/G]
    k = w.shape[-1]
    with single_thread():
        tap_sum = float(torch.linalg.matrix_norm(taps, ord=2).amax(1).sum())
        unfolded = math.sqrt(k) * float(torch.linalg.matrix_norm(w.reshape(groups, c_out // groups, -1),
                                                                  ord=2).max())
    return min(tap_sum, unfolded)


_IDENTITY = {aten.view, aten._unsafe_view, aten.reshape, aten.t, aten.transpose, aten.permute, aten.unsqueeze,
             aten.squeeze, aten.clone, aten.alias, aten.detach, aten.contiguous, aten.flatten, aten._to_copy,
             aten.lift_fresh_copy, aten.slice, aten.select, aten.narrow, aten.split, aten.split_with_sizes,
             aten.chunk, aten.unbind, aten.constant_pad_nd, aten.cat, aten.stack, aten.unflatten}
_ACTIVATIONS = {aten.relu, aten.hardtanh, aten.tanh, aten.softplus, aten.sigmoid, aten.leaky_relu, aten.gelu,
                aten.elu}


def _activation_lipschitz(node: Node) -> float:
    p = node.target.overloadpacket
    if p in (aten.relu, aten.hardtanh, aten.tanh, aten.softplus):
        return 1.0
    if p is aten.sigmoid:
        return sigmoid_lipschitz()
    if p is aten.leaky_relu:
        slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
        return max(1.0, abs(float(slope)))
    if p is aten.elu:
        alpha, scale, in_scale = (list(node.args[1:4]) + [1.0, 1.0, 1.0])[:3]
        return max(abs(float(scale)), abs(float(scale) * float(alpha) * float(in_scale)))
    approx = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
    if approx != "none":
        raise _NoRule(node, f"GELU with approximate={approx!r} (only the exact GELU's constant is derived)")
    return gelu_lipschitz()


class _NoRule(Exception):
    def __init__(self, node: Node, why: str) -> None:
        super().__init__(why)
        self.node, self.why = node, why


def local_bounds(node: Node, values: dict[Node, Any], variable: set[Node],
                 reach: dict[Node, float] | None = None) -> list[tuple[Node, float]]:
    """(variable argument, bound on ||d node / d argument||_2) for one call_function node. ``reach``: the
    output-sensitivity bounds found so far (a node with bound 0 does not reach the output); default: all do."""
    target = node.target
    var_args = [a for a in node.args if isinstance(a, Node) and a in variable]
    if target is operator.getitem:
        return [(node.args[0], 1.0)]
    packet = getattr(target, "overloadpacket", None)
    if packet is None:
        raise _NoRule(node, f"Python function {target}")
    if packet.__name__.endswith("_"):
        raise _NoRule(node, "an in-place op")
    out = values[node]
    out_numel = sum(_numel(o) for o in out) if isinstance(out, (tuple, list)) else _numel(out)

    def broadcast(a: Node) -> float:
        return math.sqrt(max(1.0, out_numel / max(1, _numel(values[a]))))

    if packet in _IDENTITY:
        if packet in (aten.cat, aten.stack):
            return [(a, 1.0) for a in node.args[0] if isinstance(a, Node) and a in variable]
        return [(a, 1.0) for a in var_args]
    if packet is aten.expand:
        return [(node.args[0], broadcast(node.args[0]))]
    if packet in _ACTIVATIONS:
        return [(node.args[0], _activation_lipschitz(node))]
    if packet in (aten.add, aten.sub):
        alpha = abs(float(node.kwargs.get("alpha", 1.0)))
        res = []
        for k, a in enumerate(node.args[:2]):
            if isinstance(a, Node) and a in variable:
                res.append((a, broadcast(a) * (alpha if k == 1 else 1.0)))
        return res
    if packet is aten.neg:
        return [(node.args[0], 1.0)]
    if packet in (aten.mul, aten.div):
        a, b = node.args[:2]
        a_var, b_var = isinstance(a, Node) and a in variable, isinstance(b, Node) and b in variable
        if a_var and b_var:
            raise _NoRule(node, "a product of two activations (gating or attention)")
        if packet is aten.div:
            if b_var:
                raise _NoRule(node, "division by an activation")
            c = values[b] if isinstance(b, Node) else b
            return [(a, broadcast(a) * _max_abs(1.0 / c if not isinstance(c, Tensor) else c.reciprocal()))]
        var, const = (a, b) if a_var else (b, a)
        c = values[const] if isinstance(const, Node) else const
        return [(var, broadcast(var) * _max_abs(c))]
    if packet in (aten.sum, aten.mean):
        k = _numel(values[node.args[0]]) / max(1, out_numel)
        return [(node.args[0], math.sqrt(k) if packet is aten.sum else 1.0 / math.sqrt(k))]
    if packet in (aten.addmm, aten.mm, aten.bmm):
        mats = node.args[1:3] if packet is aten.addmm else node.args[:2]
        alpha = abs(float(node.kwargs.get("alpha", 1.0))) if packet is aten.addmm else 1.0
        beta = abs(float(node.kwargs.get("beta", 1.0))) if packet is aten.addmm else 1.0
        res = []
        m1_var, m2_var = (m in variable for m in mats)
        if m1_var and m2_var:
            raise _NoRule(node, "a product of two activations (attention scores or attention-weighted values)")
        if m1_var:
            res.append((mats[0], alpha * _spectral(values[mats[1]])))
        if m2_var:
            res.append((mats[1], alpha * _spectral(values[mats[0]])))
        if packet is aten.addmm and isinstance(node.args[0], Node) and node.args[0] in variable:
            res.append((node.args[0], beta * broadcast(node.args[0])))
        return res
    if packet is aten.convolution:
        x, w, bias = node.args[:3]
        transposed, groups = node.args[6], node.args[8]
        if (isinstance(w, Node) and w in variable) or transposed:
            raise _NoRule(node, "a convolution whose weight is an activation, or a transposed convolution")
        res = []
        if x in variable:
            res.append((x, conv_operator_bound(values[w], int(groups))))
        if isinstance(bias, Node) and bias in variable:
            res.append((bias, broadcast(bias)))
        return res
    if packet is aten.native_layer_norm:
        x, _, w, b = node.args[:4]
        if any(isinstance(p, Node) and p in variable for p in (w, b)):
            raise _NoRule(node, "LayerNorm with activation-dependent affine parameters")
        bad = [u for u in node.users if (reach is None or reach.get(u, 0.0) > 0)
               and (u.target is not operator.getitem or u.args[1] != 0)]
        if bad:
            raise _NoRule(node, "use of LayerNorm's mean/rstd outputs")
        rstd = values[node][2]
        scale = _max_abs(values[w]) if isinstance(w, Node) else 1.0
        return [(x, scale * float(rstd.detach().max()))]
    raise _NoRule(node, str(packet))


def jacobian_norm_bounds(model: nn.Module, inputs: Any, modules: dict[str, nn.Module]) -> JacobianBounds:
    """Upper bounds on ||d f / d s^l||_2 for every module in ``modules`` over the batch ``inputs``.

    Raises ``NotImplementedError`` (naming the op and the layers upstream of it) where the path from a layer
    to the output crosses an op without a local bound (attention, softmax, RMSNorm, pooling, ...).
    """
    shapes: dict[str, torch.Size] = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, name=name: shapes.__setitem__(name, o.shape))
             for name, m in modules.items()]
    try:
        with torch.no_grad():
            call_model(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    names = [n for n in modules if n in shapes]
    leaves, spec = tree_flatten(inputs)
    n_in = len(leaves)
    ref = next(iter(model.parameters()))

    def fn(*args: Tensor) -> Tensor:
        x = tree_unflatten(list(args[:n_in]), spec)
        deltas = dict(zip(names, args[n_in:]))
        with perturbed({n: modules[n] for n in names}, deltas):
            return output_tensor(call_model(model, x))

    zeros = [torch.zeros(shapes[n], dtype=ref.dtype, device=ref.device) for n in names]
    with torch.no_grad():
        gm = make_fx(fn)(*leaves, *zeros)
        rec = _Recorder(gm)
        rec.run(*leaves, *zeros)
    values = rec.values
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    delta_nodes = dict(zip(names, placeholders[n_in:]))
    upstream: dict[Node, set[str]] = {}
    for name, p in delta_nodes.items():
        upstream[p] = {name}
    for node in nodes:
        if node.op == "call_function":
            ups = set().union(*(upstream.get(a, set()) for a in node.all_input_nodes))
            if ups:
                upstream[node] = ups
    variable = set(upstream)
    out_node = next(n for n in nodes if n.op == "output")
    f_node = out_node.args[0]
    if isinstance(f_node, (tuple, list)):
        f_node = f_node[0]
    bound: dict[Node, float] = defaultdict(float)
    if f_node in variable:
        bound[f_node] = 1.0
    for node in reversed(nodes):
        if node.op != "call_function" or node not in variable or bound.get(node, 0.0) == 0.0:
            continue
        try:
            pairs = local_bounds(node, values, variable, bound)
        except _NoRule as e:
            layers = sorted(upstream.get(e.node, set()))
            raise NotImplementedError(
                f"apriori_bound: the path from layer(s) {layers} to the model output goes through "
                f"{e.node.target} ({e.why}); there is no bound on its Jacobian from weights and forward "
                "statistics, so the a-priori bound does not apply to this model: use theory.data_bound") from None
        for arg, c in pairs:
            bound[arg] += bound[node] * c
    norms = {name: float(bound.get(p, 0.0)) for name, p in delta_nodes.items()}
    exact = set()
    if f_node.op == "call_function" and getattr(f_node.target, "overloadpacket", None) is aten.add:
        for name, p in delta_nodes.items():
            other = [a for a in f_node.args[:2] if a is not p]
            if p in f_node.args[:2] and len(other) == 1 and tuple(values[f_node].shape) == tuple(shapes[name]) \
                    and float(f_node.kwargs.get("alpha", 1.0)) == 1.0:
                exact.add(name)
    return JacobianBounds(norms, exact)
