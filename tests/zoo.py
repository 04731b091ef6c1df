"""Tiny random ``transformers`` models of every common family, with padded batches (nothing downloaded).

``case(family, seed)`` -> ``Case(model, loss_fn, train, ref, head)``: a float64 model from a small config
(hidden 16, 1-2 layers, vocabulary 48, T 8) made ready by ``influence.hf.prepare``, a padded training batch of
3 samples and a reference batch of 2, and the names of the output layer's parameters when that layer owns
them (None when the head is tied to the input embedding). ``python tests/zoo.py`` prints the zoo table.
"""

from __future__ import annotations

import copy
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

import influence
import influence.hf as H
from influence.batch import take

V, T, N_TRAIN, N_REF, N_LABELS, D = 48, 8, 3, 2, 3, 16


@dataclass
class Case:
    model: nn.Module
    loss_fn: Callable
    train: Any
    ref: Any
    head: list[str] | None


def _tokens(seed: int, pad_id: int, side: str = "right", length: int = T) -> tuple[torch.Tensor, torch.Tensor]:
    """N_TRAIN + N_REF sequences of random lengths (the first full, the second of 3 tokens), padded."""
    g = torch.Generator().manual_seed(seed)
    n = N_TRAIN + N_REF
    lengths = torch.randint(3, length + 1, (n,), generator=g)
    lengths[0], lengths[1] = length, 3
    seqs = [torch.randint(2, V, (int(k),), generator=g) for k in lengths]
    return H.pad(seqs, pad_id, side, length=length)


def _split(batch: Any) -> tuple[Any, Any]:
    return take(batch, slice(0, N_TRAIN)), take(batch, slice(N_TRAIN, None))


def _labels(seed: int) -> torch.Tensor:
    return torch.randint(0, N_LABELS, (N_TRAIN + N_REF,), generator=torch.Generator().manual_seed(seed + 1))


def _head(model: nn.Module, module: str) -> list[str] | None:
    """Parameter names of ``module`` if it owns its weight (not tied to another module)."""
    out = dict(model.named_modules())[module]
    if out.weight is model.get_input_embeddings().weight:
        return None
    return [n for n, _ in model.named_parameters() if n.rpartition(".")[0] == module]


def _build(cls: Any, cfg: Any, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return H.prepare(cls(cfg), torch.float64)


def causal(cls_name: str, cfg_name: str, head: str = "lm_head", side: str = "right", **cfg: Any):
    def make(seed: int = 0) -> Case:
        tf = H._transformers()
        config = getattr(tf, cfg_name)(vocab_size=V, pad_token_id=0, bos_token_id=1, eos_token_id=1, use_cache=False,
                                       attn_implementation="eager", **cfg)
        model = _build(getattr(tf, cls_name), config, seed)
        ids, mask = _tokens(seed, 0, side)
        train, ref = _split(H.lm_batch(ids, mask, position_ids=side == "left"))
        return Case(model, H.causal_lm_loss(), train, ref, _head(model, head))
    return make


def classifier(cls_name: str, cfg_name: str, head: str, pad_id: int = 0, **cfg: Any):
    def make(seed: int = 0) -> Case:
        tf = H._transformers()
        config = getattr(tf, cfg_name)(vocab_size=V, pad_token_id=pad_id, num_labels=N_LABELS,
                                       attn_implementation="eager", **cfg)
        model = _build(getattr(tf, cls_name), config, seed)
        ids, mask = _tokens(seed, pad_id)
        train, ref = _split(({"input_ids": ids, "attention_mask": mask}, _labels(seed)))
        return Case(model, H.sequence_classification_loss(), train, ref, _head(model, head))
    return make


def t5(seed: int = 0) -> Case:
    tf = H._transformers()
    config = tf.T5Config(vocab_size=V, d_model=D, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
                         relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
                         pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False,
                         use_cache=False, attn_implementation="eager")
    model = _build(tf.T5ForConditionalGeneration, config, seed)
    ids, mask = _tokens(seed, 0)
    dec, dec_mask = _tokens(seed + 7, 0, length=T - 2)
    labels = dec.masked_fill(dec_mask == 0, H.IGNORE_INDEX)
    start = torch.zeros(len(dec), 1, dtype=torch.long)
    x = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": torch.cat([start, dec[:, :-1]], 1),
         "decoder_attention_mask": torch.cat([torch.ones_like(start), dec_mask[:, :-1]], 1)}
    train, ref = _split((x, labels))
    return Case(model, influence.cross_entropy, train, ref, _head(model, "lm_head"))


def vit(seed: int = 0) -> Case:
    tf = H._transformers()
    config = tf.ViTConfig(hidden_size=D, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          image_size=8, patch_size=4, num_channels=3, num_labels=N_LABELS, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, attn_implementation="eager")
    model = _build(tf.ViTForImageClassification, config, seed)
    with torch.no_grad():  # the class token and position embeddings start at zero / truncated normal
        model.vit.embeddings.cls_token.normal_()
    px = torch.randn(N_TRAIN + N_REF, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    train, ref = _split(({"pixel_values": px}, _labels(seed)))
    return Case(model, influence.cross_entropy, train, ref, ["classifier.weight", "classifier.bias"])


def resnet(seed: int = 0) -> Case:
    tf = H._transformers()
    config = tf.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                             layer_type="basic", num_labels=N_LABELS)
    model = _build(tf.ResNetForImageClassification, config, seed)
    for m in model.modules():  # non-trivial running statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    px = torch.randn(N_TRAIN + N_REF, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    train, ref = _split(({"pixel_values": px}, _labels(seed)))
    return Case(model, influence.cross_entropy, train, ref, ["classifier.1.weight", "classifier.1.bias"])


_LM = dict(hidden_size=D, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)

FAMILIES: dict[str, Callable[[int], Case]] = {
    "gpt2": causal("GPT2LMHeadModel", "GPT2Config", n_embd=D, n_layer=2, n_head=2, n_positions=32,
                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "gpt_neo": causal("GPTNeoForCausalLM", "GPTNeoConfig", hidden_size=D, num_layers=2, num_heads=2,
                      max_position_embeddings=32, attention_types=[[["global", "local"], 1]], window_size=4,
                      resid_dropout=0.0, embed_dropout=0.0, attention_dropout=0.0),
    "gpt_neox": causal("GPTNeoXForCausalLM", "GPTNeoXConfig", hidden_dropout=0.0,
                       attention_dropout=0.0, tie_word_embeddings=False, **_LM),
    "opt": causal("OPTForCausalLM", "OPTConfig", hidden_size=D, num_hidden_layers=2, ffn_dim=32, num_attention_heads=2,
                  max_position_embeddings=32, word_embed_proj_dim=D, dropout=0.0, attention_dropout=0.0),
    "llama": causal("LlamaForCausalLM", "LlamaConfig", num_key_value_heads=1, tie_word_embeddings=False, **_LM),
    "llama_left": causal("LlamaForCausalLM", "LlamaConfig", side="left", num_key_value_heads=1,
                         tie_word_embeddings=False, **_LM),
    "llama_tied": causal("LlamaForCausalLM", "LlamaConfig", num_key_value_heads=2, tie_word_embeddings=True, **_LM),
    "qwen2": causal("Qwen2ForCausalLM", "Qwen2Config", num_key_value_heads=1, tie_word_embeddings=False, **_LM),
    "mistral": causal("MistralForCausalLM", "MistralConfig", num_key_value_heads=1, sliding_window=4,
                      tie_word_embeddings=False, **_LM),
    "gemma": causal("GemmaForCausalLM", "GemmaConfig", num_key_value_heads=1, head_dim=8, **_LM),
    "phi": causal("PhiForCausalLM", "PhiConfig", resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
                  tie_word_embeddings=False, **_LM),
    "bert": classifier("BertForSequenceClassification", "BertConfig", "classifier", hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0, classifier_dropout=0.0, **_LM),
    "distilbert": classifier("DistilBertForSequenceClassification", "DistilBertConfig", "classifier", dim=D,
                             n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=32, dropout=0.0,
                             attention_dropout=0.0, seq_classif_dropout=0.0),
    "roberta": classifier("RobertaForSequenceClassification", "RobertaConfig", "classifier.out_proj", pad_id=1,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0,
                          **{**_LM, "max_position_embeddings": 40}),
    "t5": t5,
    "vit": vit,
    "resnet": resnet,
}


def case(family: str, seed: int = 0) -> Case:
    return FAMILIES[family](seed)


def untied_head(c: Case) -> tuple[nn.Module, list[str]]:
    """The model (or, where the head is tied to the input embedding, an untied copy with the same values) and its
    output layer's parameter names: LAI's last layer is exact on exactly these."""
    if c.head is not None:
        return c.model, c.head
    other = copy.deepcopy(c.model)
    head = other.get_output_embeddings()
    head.weight = nn.Parameter(head.weight.detach().clone())
    name = next(n for n, m in other.named_modules() if m is head)
    return other, [f"{name}.{p}" for p, t in head.named_parameters() if t.requires_grad]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / scale if scale > 0 else diff


def survey(family: str) -> dict[str, Any]:
    """One row of the zoo table: Ghost without fallback, what ``fallback='auto'`` routes, LAI finite, LAI last
    against Exact on the head."""
    c = case(family)
    row: dict[str, Any] = {"family": family}
    ex = influence.exact(c.model, c.loss_fn, c.train, c.ref, lr=0.1)
    try:
        gh = influence.ghost(c.model, c.loss_fn, c.train, c.ref, lr=0.1, fallback="error")
        row["ghost_native"] = f"yes ({rel_err(gh.scores, ex.scores):.0e})"
    except influence.InfluenceError as e:
        row["ghost_native"] = f"no: {type(e).__name__}"
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        gh = influence.ghost(c.model, c.loss_fn, c.train, c.ref, lr=0.1)
    row["ghost_auto"] = f"{rel_err(gh.scores, ex.scores):.0e}"
    row["routed"] = ", ".join(getattr(gh, "routed_to_exact", []) or []) or "-"
    for layers in ("all", "last"):
        try:
            with warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                la = influence.lai(c.model, c.loss_fn, c.train, c.ref, lr=0.1, layers=layers)
            row[f"lai_{layers}"] = "finite" if bool(torch.isfinite(la.scores).all()) else "NON-FINITE"
        except influence.InfluenceError as e:
            row[f"lai_{layers}"] = f"{type(e).__name__}"
    model, head = untied_head(c)
    hx = influence.exact(model, c.loss_fn, c.train, c.ref, lr=0.1, params=head)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        la = influence.lai(model, c.loss_fn, c.train, c.ref, lr=0.1, layers="last")
    row["lai_last_vs_head"] = f"{rel_err(la.scores, hx.scores):.0e}" + ("" if c.head else " (untied copy)")
    return row


if __name__ == "__main__":
    torch.set_num_threads(1)
    names = sys.argv[1:] or list(FAMILIES)
    cols = ["family", "ghost_native", "ghost_auto", "lai_all", "lai_last", "lai_last_vs_head", "routed"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for name in names:
        try:
            row = survey(name)
        except Exception as e:  # report, do not hide: the table is a diagnostic
            row = {"family": name, "ghost_native": f"CRASH {type(e).__name__}: {str(e)[:120]}"}
        print("| " + " | ".join(str(row.get(c, "")) for c in cols) + " |", flush=True)
