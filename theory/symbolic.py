"""Symbolic check (sympy) that Ghost - LAI equals the Jacobian decomposition, and the statements as LaTeX.

``verify_mlp``: a two-layer network with symbolic weights and biases, f = W2 sigma(W1 x + c1) + c2, a
polynomial activation sigma(z) = alpha z + beta z^2 with symbolic alpha, beta (or a piecewise-linear one,
sigma(z_k) = m_k z_k on the active piece with a symbolic slope m_k per unit; on each linear region the network
is polynomial, so checking with symbolic slopes covers every region) and squared loss l = |f - y|^2 / 2.
Ghost is the inner product of the true parameter gradients (``sympy.diff`` of the loss with respect to every
weight), LAI is (g_i . g_v) sum_l (a_i . a_v + 1), and the decomposition is
(x_i . x_v + 1) g_i^T (J_i J_v^T - I) g_v with J = d f / d s^1. The check is expand(Ghost - LAI - decomposition)
== 0.

``verify_sequence``: the token-pair form. Tokens x_t (t = 1..T) go through a per-token layer s_t = W1 x_t + c1,
h_t = sigma(s_t), a fixed (non-trainable) token mixing u_t = sum_t' M_{t,t'} h_t' (as causal attention with frozen
weights would do), and a per-token output layer f_t = W2 u_t + c2; loss sum_t |f_t - y_t|^2 / 2. LAI with
``token_pairing="all_pairs"``; decomposition sum_{t,t'} A_{t,t'} g^T (J_t J_t'^T - E_{t,t'}) g' over the
flattened output, with E_{t,t'} the block that picks output token t of one sample and t' of the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import sympy as sp
from sympy.polys.rings import ring

from influence.errors import InvalidArgumentError


@dataclass
class Check:
    """Result of one symbolic verification: ``residual`` is Ghost - LAI - decomposition as an expanded
    polynomial (sympy expression) in all weights, inputs, output gradients and activation coefficients."""

    name: str
    residual: sp.Expr
    ghost_terms: int

    @property
    def holds(self) -> bool:
        return self.residual == 0


class _Net:
    """Symbols of a small network as generators of one polynomial ring (fast exact expansion).

    Entries are sympy ``PolyElement``s; ``diff`` is exact polynomial differentiation. Vectors are lists,
    matrices lists of rows."""

    def __init__(self, names: list[str]) -> None:
        self.ring, *gens = ring(names, sp.QQ)
        self.sym = dict(zip(names, gens))

    def vec(self, prefix: str, n: int) -> list:
        return [self.sym[f"{prefix}_{k}"] for k in range(n)]

    def mat(self, prefix: str, rows: int, cols: int) -> list[list]:
        return [[self.sym[f"{prefix}_{r}_{c}"] for c in range(cols)] for r in range(rows)]


def _names(prefix: str, *dims: int) -> list[str]:
    if len(dims) == 1:
        return [f"{prefix}_{k}" for k in range(dims[0])]
    return [f"{prefix}_{r}_{c}" for r in range(dims[0]) for c in range(dims[1])]


def _matvec(m: list[list], v: list) -> list:
    return [sum((a * b for a, b in zip(row, v)), 0) for row in m]


def _dot(u: list, v: list):
    return sum((a * b for a, b in zip(u, v)), 0)


def _activation(net: _Net, kind: str, hidden: int) -> tuple[Callable, Callable]:
    """(sigma(z, k), sigma'(z, k)) for hidden unit k."""
    if kind == "polynomial":
        alpha, beta = net.sym["alpha"], net.sym["beta"]
        return (lambda z, k: alpha * z + beta * z**2), (lambda z, k: alpha + 2 * beta * z)
    if kind == "piecewise_linear":
        return (lambda z, k: net.sym[f"m_{k}"] * z), (lambda z, k: net.sym[f"m_{k}"])
    raise InvalidArgumentError(f"activation must be 'polynomial' or 'piecewise_linear', got {kind!r}")


def _activation_names(kind: str, hidden: int) -> list[str]:
    return ["alpha", "beta"] if kind == "polynomial" else _names("m", hidden)


def verify_mlp(d_in: int = 2, hidden: int = 2, d_out: int = 2, activation: str = "polynomial",
               omit_bias_term: bool = False) -> Check:
    """Ghost - LAI - decomposition for f = W2 sigma(W1 x + c1) + c2 and any loss (d loss / d f = g, free
    symbols): Ghost from the true parameter gradients g^T d f / d theta. ``omit_bias_term`` drops the bias "+1"
    from the decomposition's activation product (a wrong statement, to show the check can fail)."""
    weights = _names("w1", hidden, d_in) + _names("c1", hidden) + _names("w2", d_out, hidden) + _names("c2", d_out)
    data = [n for tag in "iv" for n in _names(f"x{tag}", d_in) + _names(f"g{tag}", d_out)]
    net = _Net(weights + data + _activation_names(activation, hidden))
    w1, c1 = net.mat("w1", hidden, d_in), net.vec("c1", hidden)
    w2, c2 = net.mat("w2", d_out, hidden), net.vec("c2", d_out)
    params = [net.sym[n] for n in weights]
    sigma, dsigma = _activation(net, activation, hidden)

    def sample(tag: str):
        x, g = net.vec(f"x{tag}", d_in), net.vec(f"g{tag}", d_out)
        s = [a + b for a, b in zip(_matvec(w1, x), c1)]
        h = [sigma(z, k) for k, z in enumerate(s)]
        f = [a + b for a, b in zip(_matvec(w2, h), c2)]
        loss = _dot(g, f)  # d loss / d theta = g^T d f / d theta
        jac = [[w2[c][k] * dsigma(s[k], k) for k in range(hidden)] for c in range(d_out)]  # d f / d s
        return x + [1], h + [1], g, jac, loss

    x_i, h_i, g_i, j_i, l_i = sample("i")
    x_v, h_v, g_v, j_v, l_v = sample("v")
    ghost = sum((l_i.diff(p) * l_v.diff(p) for p in params), 0)
    lai = _dot(g_i, g_v) * (_dot(x_i, x_v) + _dot(h_i, h_v))
    jj_minus_i = [[_dot(j_i[c], j_v[e]) - (1 if c == e else 0) for e in range(d_out)] for c in range(d_out)]
    a_pair = _dot(x_i[:-1], x_v[:-1]) if omit_bias_term else _dot(x_i, x_v)
    decomposition = a_pair * _dot(g_i, _matvec(jj_minus_i, g_v))
    residual = ghost - lai - decomposition
    return Check(f"mlp[{activation}]", residual.as_expr(), len(ghost.terms()))


def verify_sequence(tokens: int = 2, d_in: int = 1, hidden: int = 2, d_out: int = 2,
                    activation: str = "polynomial") -> Check:
    """Token-pair identity: per-token layer, fixed token mixing M (not trained), per-token output layer."""
    weights = _names("w1", hidden, d_in) + _names("c1", hidden) + _names("w2", d_out, hidden) + _names("c2", d_out)
    data = [n for tag in "iv" for t in range(tokens) for n in _names(f"x{tag}{t}", d_in)]
    data += [n for tag in "iv" for n in _names(f"g{tag}", tokens * d_out)]
    net = _Net(weights + data + _names("M", tokens, tokens) + _activation_names(activation, hidden))
    w1, c1 = net.mat("w1", hidden, d_in), net.vec("c1", hidden)
    w2, c2 = net.mat("w2", d_out, hidden), net.vec("c2", d_out)
    mix = net.mat("M", tokens, tokens)
    params = [net.sym[n] for n in weights]
    sigma, dsigma = _activation(net, activation, hidden)

    def sample(tag: str):
        xs = [net.vec(f"x{tag}{t}", d_in) for t in range(tokens)]
        g = net.vec(f"g{tag}", tokens * d_out)  # flattened [T * C]
        ss = [[a + b for a, b in zip(_matvec(w1, x), c1)] for x in xs]
        hs = [[sigma(z, k) for k, z in enumerate(s)] for s in ss]
        us = [[sum((mix[t][u] * hs[u][k] for u in range(tokens)), 0) for k in range(hidden)] for t in range(tokens)]
        f = [a + b for u in us for a, b in zip(_matvec(w2, u), c2)]
        loss = _dot(g, f)
        # J_t = d f_flat / d s_t: row (t', c), column k = M[t', t] w2[c][k] sigma'(s_t[k])
        jac = [[[mix[tp][t] * w2[c][k] * dsigma(ss[t][k], k) for k in range(hidden)]
                for tp in range(tokens) for c in range(d_out)] for t in range(tokens)]
        return [x + [1] for x in xs], [u + [1] for u in us], g, jac, loss

    x_i, u_i, g_i, j_i, l_i = sample("i")
    x_v, u_v, g_v, j_v, l_v = sample("v")
    ghost = sum((l_i.diff(p) * l_v.diff(p) for p in params), 0)
    rows = tokens * d_out
    lai, decomposition = 0, 0
    for t in range(tokens):
        for tp in range(tokens):
            gg = _dot(g_i[t * d_out:(t + 1) * d_out], g_v[tp * d_out:(tp + 1) * d_out])
            a1, a2 = _dot(x_i[t], x_v[tp]), _dot(u_i[t], u_v[tp])
            lai += gg * (a1 + a2)
            pick = [[1 if (r // d_out == t and e // d_out == tp and r % d_out == e % d_out) else 0
                     for e in range(rows)] for r in range(rows)]  # E_{t,t'}
            d = [[_dot(j_i[t][r], j_v[tp][e]) - pick[r][e] for e in range(rows)] for r in range(rows)]
            decomposition += a1 * _dot(g_i, _matvec(d, g_v))
    residual = ghost - lai - decomposition
    return Check(f"sequence[{activation}]", residual.as_expr(), len(ghost.terms()))


def latex_statement() -> dict[str, str]:
    """The decomposition, the two bounds and the ranking corollary as LaTeX (display-math bodies)."""
    c, q = sp.symbols("C q", integer=True, positive=True)
    g_i, g_v = sp.MatrixSymbol("g_i", c, 1), sp.MatrixSymbol("g_v", c, 1)
    j_i, j_v = sp.MatrixSymbol("J^{l}_{i}", c, q), sp.MatrixSymbol("J^{l}_{v}", c, q)
    diff = sp.MatAdd(j_i * j_v.T, -sp.Identity(c), evaluate=False)
    core = sp.latex(sp.MatMul(g_i.T, diff, g_v, evaluate=False), order="none")
    eps = sp.latex(diff, order="none")
    a_dot = r"\left(a^{l}_{i}\cdot a^{l}_{v}\right)"
    return {
        "identity": (r"\mathrm{Ghost}(i,v)-\mathrm{LAI}(i,v)=\eta\sum_{l<L}" + a_dot + " " + core),
        "per_sample": (r"\mathrm{Ghost}_i-\mathrm{LAI}_i=\eta\,\frac{1}{|V|}\sum_{v\in V}\sum_{l<L}" + a_dot
                       + " " + core),
        "token_pairs": (r"E_l(i,v)=\sum_{t,t'}A^{iv}_{tt'}\,g_i^{T}\left(J_{i,t}J_{v,t'}^{T}-E_{tt'}\right)g_v"
                        r"=\left\langle A^{iv},\,B^{iv}-G^{iv}\right\rangle_F,\quad "
                        r"A^{iv}_{tt'}=a_{i,t}\cdot a_{v,t'},\ B^{iv}_{tt'}=b_{i,t}\cdot b_{v,t'},\ "
                        r"G^{iv}_{tt'}=g_{i,t}\cdot g_{v,t'}\quad(\text{LAI all\_pairs})"),
        "conv": (r"E_l(i,v)=g_i^{T}\Big(\sum_{p,p'}(x_{i,p}\cdot x_{v,p'})\,J_{i,p}J_{v,p'}^{T}"
                 r"-(\bar a_i\cdot\bar a_v)\,I\Big)g_v"),
        "data_bound": (r"\left|\mathrm{Ghost}_i-\mathrm{LAI}_i\right|\le\eta\,\frac{1}{|V|}\sum_{v}\sum_{l<L}"
                       r"\|a^{l}_i\|\,\|a^{l}_v\|\,\|g_i\|\,\|g_v\|\,\varepsilon_l(i,v),\quad"
                       r"\varepsilon_l(i,v)=\left\|" + eps + r"\right\|_2"),
        "apriori": (r"\|J^{l}\|_2\le\prod_{k>l}\mathrm{Lip}(\sigma_k)\,\|W^{k}\|_2,\quad"
                    r"\varepsilon_l(i,v)\le\|J^{l}_i\|_2\|J^{l}_v\|_2+1,\quad"
                    r"\|\mathrm{softmax}(f)-e_y\|_2\le\sqrt{2}"),
        "ranking": (r"|\mathrm{Ghost}_i-\mathrm{Ghost}_j|>\Delta_i+\Delta_j\Rightarrow"
                    r"\operatorname{sign}(\mathrm{LAI}_i-\mathrm{LAI}_j)=\operatorname{sign}(\mathrm{Ghost}_i-"
                    r"\mathrm{Ghost}_j),\quad \tau\ge\frac{2K-N}{N},\quad"
                    r"|\mathrm{Ghost}_i|>\Delta_i\Rightarrow\operatorname{sign}\mathrm{LAI}_i="
                    r"\operatorname{sign}\mathrm{Ghost}_i"),
    }


def main() -> None:
    for check in (verify_mlp(activation="polynomial"), verify_mlp(activation="piecewise_linear"),
                  verify_sequence(activation="polynomial")):
        print(f"{check.name}: Ghost - LAI - decomposition = {check.residual} "
              f"({'holds' if check.holds else 'FAILS'}; Ghost has {check.ghost_terms} monomials)")
    for key, tex in latex_statement().items():
        print(f"{key}: $${tex}$$")


if __name__ == "__main__":
    main()
