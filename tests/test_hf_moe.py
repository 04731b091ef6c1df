"""``hf.prepare(model, torch.float64)`` on a mixture-of-experts family (issue 26, item 7): the default expert
kernels (``grouped_mm``) take no float64 and failed inside the forward with the kernel's message; prepare switches
the experts to transformers' eager loop, and Ghost is exact on the model."""

from __future__ import annotations

import warnings

import pytest
import torch
from reference import reference_scores

import influence
import influence.hf as hf

tf = pytest.importorskip("transformers")


def tiny_mixtral() -> torch.nn.Module:
    cfg = tf.MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, num_local_experts=3, num_experts_per_tok=2,
                           max_position_embeddings=16)
    torch.manual_seed(0)
    return tf.MixtralForCausalLM(cfg)


def test_float64_moe_runs_its_experts_eagerly_and_scores_exactly() -> None:
    model = hf.prepare(tiny_mixtral(), torch.float64)
    assert model.config._experts_implementation == "eager"
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 32, (5, 6), generator=g)
    mask = torch.ones_like(ids)
    train, ref = hf.lm_batch(ids[:3], mask[:3]), hf.lm_batch(ids[3:], mask[3:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = influence.ghost(model, hf.causal_lm_loss(), train, ref, lr=0.1)
    want = reference_scores(model, hf.causal_lm_loss(), train, ref, 0.1)
    assert (r.scores - want).abs().max() <= 1e-8 * want.abs().max()


def test_float32_moe_keeps_its_kernels() -> None:
    model = hf.prepare(tiny_mixtral(), torch.float32)
    assert model.config._experts_implementation != "eager"
