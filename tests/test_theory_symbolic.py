"""The sympy derivation: Ghost - LAI - decomposition expands to 0 for symbolic small networks."""

import pytest

from theory import symbolic


@pytest.mark.parametrize("activation", ["polynomial", "piecewise_linear"])
def test_mlp_identity(activation):
    check = symbolic.verify_mlp(activation=activation)
    assert check.holds, check.residual
    assert check.ghost_terms > 10


@pytest.mark.parametrize("activation", ["polynomial", "piecewise_linear"])
def test_sequence_token_pair_identity(activation):
    check = symbolic.verify_sequence(activation=activation)
    assert check.holds, check.residual


def test_a_wrong_statement_fails():
    assert not symbolic.verify_mlp(omit_bias_term=True).holds


def test_latex_statement():
    tex = symbolic.latex_statement()
    assert {"identity", "per_sample", "token_pairs", "conv", "data_bound", "apriori", "ranking"} <= set(tex)
    assert r"J^{l}_{i} \left(J^{l}_{v}\right)^{T} - \mathbb{I}" in tex["identity"]
    assert r"\varepsilon_l(i,v)" in tex["data_bound"] and r"\sqrt{2}" in tex["apriori"]
