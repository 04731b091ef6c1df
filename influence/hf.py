"""Hugging Face ``transformers`` models with the influence estimators (optional extra: ``pip install -e ".[hf]"``).

Batches are ``(inputs, targets)`` with ``inputs`` a dict passed as ``model(**inputs)``; the loss sees the
output's ``.logits``. Nothing here downloads anything: the ``tiny_*`` builders make small random models from
configs, and a ``from_pretrained`` model goes through :func:`prepare` the same way.

    model = influence.hf.prepare(GPT2LMHeadModel.from_pretrained("gpt2"))
    batch = influence.hf.lm_batch(input_ids, attention_mask)
    r = influence.ghost(model, influence.hf.causal_lm_loss(), batch, ref_batch, lr=1e-4)

Conventions:

* Causal LM: the label of position t is the token at t + 1 (``logits[:, :-1]`` against ``labels[:, 1:]``, as
  ``transformers`` shifts them); labels equal to ``ignore_index`` (padding, prompts) count for nothing; the
  per-sample loss is the mean over the sample's counted tokens. Padding may be on either side:
  :func:`lm_labels` also drops a target whose predicting position is padding (the first real token under left
  padding), so nothing the padded positions hold reaches a loss or a score.
* Sequence classification (BERT): the pooler reads position 0, so pad on the right (as BERT tokenizers do);
  under left padding position 0 is a pad token and the scores legitimately depend on it.
* Sequence classification: logits [n, C] and integer labels [n]: per-sample cross-entropy.
* Exact and TracIn take per-sample gradients with ``torch.func.vmap``, which cannot run the data-dependent
  branches of ``transformers``' SDPA/flash attention masks; :func:`prepare` switches the model to the
  ``"eager"`` attention implementation (same function, plain tensor ops) and turns the KV cache off.
  Ghost and LAI run with any attention implementation.
* GPT-2's ``Conv1D`` layers, its tied ``wte``/``lm_head`` weight and its position ids built with batch
  dimension 1 are handled by the core (``influence.layers.HFConv1D``, shared-weight blocks, and the capture's
  expansion of batch-1 layer inputs).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .batch import LossFn
from .compat import marks
from .errors import InvalidArgumentError
from .layers import register_float64_mode
from .losses import cross_entropy, cross_entropy_gradient

IGNORE_INDEX = -100


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError('influence.hf needs the Hugging Face extra: pip install -e ".[hf]"') from e
    return transformers


# ---------------------------------------------------------------- losses


def causal_lm_loss(ignore_index: int = IGNORE_INDEX) -> LossFn:
    """Per-sample next-token loss: ``loss_fn(logits [n, T, V], labels [n, T]) -> [n]``, the mean over the
    sample's counted tokens of CE(logits[:, t], labels[:, t + 1]); a sample with no counted token has loss 0."""

    def loss_fn(logits: Tensor, labels: Tensor) -> Tensor:
        return cross_entropy(logits[:, :-1], labels[:, 1:], ignore_index=ignore_index)

    def output_gradient(logits: Tensor, labels: Tensor, where: str = "train") -> tuple[Tensor, Tensor]:
        # the label of position t is labels[:, t + 1]; the last position predicts nothing (an ignored target),
        # so g has the logits' shape without slicing or copying them
        shifted = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), ignore_index)], 1)
        return cross_entropy_gradient(logits, shifted, where, ignore_index)

    loss_fn.__name__ = f"causal_lm_loss(ignore_index={ignore_index})"
    loss_fn.output_gradient = output_gradient  # closed form (influence.losses.output_gradient)
    return loss_fn


def sequence_classification_loss() -> LossFn:
    """Per-sample cross-entropy of logits [n, C] against labels [n] (``influence.cross_entropy`` itself, so
    LAI uses its closed-form output gradient)."""
    return cross_entropy


# ---------------------------------------------------------------- batches


def lm_labels(input_ids: Tensor, attention_mask: Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Causal-LM labels [n, T]: the input ids, with ``ignore_index`` where ``attention_mask`` is 0 and where the
    position before is 0. A token counts only if the position that predicts it (t - 1) is a real token too:
    under left padding the first real token would be predicted from a pad position, whose output depends on
    what the padding holds. Left and right padding then count the same targets (tokens 2..L of a sample)."""
    if attention_mask is None:
        return input_ids.clone()
    real = attention_mask != 0
    predictor = torch.ones_like(real)
    predictor[:, 1:] = real[:, :-1]
    return input_ids.masked_fill(~(real & predictor), ignore_index)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids [n, T] counting only attended tokens (0 for the first real token, also under left padding;
    padded positions get 0). Without them a left-padded sample's tokens sit at shifted positions."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def lm_batch(input_ids: Tensor, attention_mask: Tensor | None = None, *, position_ids: bool = False,
             ignore_index: int = IGNORE_INDEX) -> tuple[dict[str, Tensor], Tensor]:
    """A causal-LM batch ``({"input_ids", "attention_mask"[, "position_ids"]}, labels)`` for
    :func:`causal_lm_loss`; ``position_ids=True`` adds :func:`position_ids_from_mask` (for left padding)."""
    inputs = {"input_ids": input_ids}
    if attention_mask is not None:
        inputs["attention_mask"] = attention_mask
        if position_ids:
            inputs["position_ids"] = position_ids_from_mask(attention_mask)
    return inputs, lm_labels(input_ids, attention_mask, ignore_index)


def pad(sequences: Sequence[Sequence[int] | Tensor], pad_id: int, side: str = "right",
        length: int | None = None) -> tuple[Tensor, Tensor]:
    """Pad token id lists to one length: (input_ids [n, L], attention_mask [n, L]) with ``side`` in
    {"right", "left"}; ``length`` defaults to the longest sequence (longer sequences raise)."""
    if side not in ("right", "left"):
        raise InvalidArgumentError(f"side must be 'right' or 'left', got {side!r}")
    seqs = [torch.as_tensor(s, dtype=torch.long) for s in sequences]
    width = max(len(s) for s in seqs) if length is None else length
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s) > width:
            raise InvalidArgumentError(f"sequence {i} has {len(s)} tokens, more than length={width}")
        cols = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[i, cols], mask[i, cols] = s, 1
    return ids, mask


# ---------------------------------------------------------------- models


def is_bidirectional(model: nn.Module) -> bool:
    """True when every attention module of ``model`` declares ``is_causal = False`` (BERT-style encoders)."""
    flags = [m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    return bool(flags) and not any(flags)


def additive_padding_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """2D padding mask [n, T] (1 = attend) -> additive mask [n, 1, 1, T]: 0 where attended, ``finfo(dtype).min``
    where padded; the values ``transformers``' eager attention adds to the scores of a bidirectional layer."""
    keep = attention_mask[:, None, None, :].bool()
    return torch.where(keep, torch.zeros((), dtype=dtype), torch.finfo(dtype).min)


class PaddingMaskHook:
    """Forward pre-hook passing the 2D padding mask ``kwargs[key]`` [n, S] as the additive 4D mask [n, 1, 1, S]
    (:func:`additive_padding_mask` in the dtype of the module's parameters); other masks pass unchanged."""

    def __init__(self, key: str = "attention_mask") -> None:
        self.key = key

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        mask = kwargs.get(self.key)
        if not isinstance(mask, Tensor) or mask.dim() != 2:
            return None
        dtype = next(module.parameters()).dtype
        return args, {**kwargs, self.key: additive_padding_mask(mask, dtype)}


def _add_mask_hook(module: nn.Module, key: str) -> None:
    flag = f"_influence_mask_hook_{key}"
    if not marks(module).get(flag, False):
        module.register_forward_pre_hook(PaddingMaskHook(key), with_kwargs=True)
        marks(module)[flag] = True


LOWER_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


class KeepFloat64(TorchFunctionMode):
    """Inside this mode a float64 tensor is never cast down: ``x.to(torch.float32)``, ``x.float()``,
    ``x.half()``, ``x.bfloat16()`` return x in float64 and a lower-precision ``dtype=`` argument of a function
    taking a float64 tensor (``softmax(x, dtype=torch.float32)``) becomes float64. Casts of other tensors
    (integer position ids to float, float32 to float64) are untouched.

    ``transformers`` upcasts to float32 in places (GPT-Neo's attention scores, Llama-style RMSNorm and rotary
    embeddings, eager softmax), which for a float64 model is a downcast: activations and gradients then carry
    float32 rounding (~1e-7 relative), and two estimators that batch differently disagree at that level."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        first = args[0] if args else None
        if isinstance(first, Tensor) and first.dtype == torch.float64:
            if func in (Tensor.float, Tensor.half, Tensor.bfloat16):
                return first
            if func in (Tensor.to, Tensor.type):
                args = (first, *(torch.float64 if isinstance(a, torch.dtype) and a in LOWER_FLOATS else
                                 a.device if isinstance(a, Tensor) and a.dtype in LOWER_FLOATS else a
                                 for a in args[1:]))
        if kwargs.get("dtype") in LOWER_FLOATS and any(isinstance(a, Tensor) and a.dtype == torch.float64
                                                       for a in args):
            kwargs = {**kwargs, "dtype": torch.float64}
        return func(*args, **kwargs)


register_float64_mode(KeepFloat64)  # the layer rules re-run float64 modules under it (``layers.local``)


def _is_float64(model: nn.Module) -> bool:
    return any(p.dtype == torch.float64 for p in model.parameters() if p.is_floating_point())


def _enter_float64(model: nn.Module, args: tuple, kwargs: dict) -> None:
    mode = KeepFloat64() if _is_float64(model) else None
    if mode is not None:
        mode.__enter__()
    marks(model).setdefault("_influence_modes", []).append(mode)


def _exit_float64(model: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    mode = marks(model).get("_influence_modes", [None]).pop() if marks(model).get("_influence_modes") else None
    if mode is not None:
        mode.__exit__(None, None, None)


def prepare(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Make a ``transformers`` model ready for every estimator: eager attention (``torch.func`` compatible),
    no KV cache, eval mode (dropout off), optionally cast to ``dtype``. Returns the same model.

    Bidirectional encoders (:func:`is_bidirectional`) also get a forward pre-hook that passes a 2D
    ``attention_mask`` as the equivalent additive 4D mask (:func:`additive_padding_mask`), because
    ``transformers`` checks ``mask.all()`` in Python before building a bidirectional mask, which ``vmap``
    cannot run. Encoder-decoder models (T5, ``config.is_encoder_decoder``) get the same on their encoder's
    ``attention_mask`` and their decoder's ``encoder_attention_mask`` (cross-attention); the decoder's own mask
    stays 2D (its causal structure is built by ``transformers``). Causal models keep their own mask
    construction (causal and sliding-window structure).

    A float64 model computes in float64 throughout (:class:`KeepFloat64`, entered by a forward pre-hook while
    the model runs): ``transformers``' float32 upcasts would otherwise round its activations to float32; a
    mixture-of-experts model runs its experts eagerly (``experts_implementation="eager"``: the default grouped
    kernels take no float64), or ``InvalidArgumentError`` says how to load it so.
    Fully masked attention rows (padding queries under left padding) stay finite: every mask here adds
    ``finfo(dtype).min`` once, so a row of masked scores is uniform after the softmax, never NaN."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    elif getattr(model, "config", None) is not None:
        model.config._attn_implementation = "eager"
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False
    if dtype is not None:
        model.to(dtype)
    if _is_float64(model):
        _eager_experts(model)
    if not getattr(model, "_influence_float64_hook", False):
        model.register_forward_pre_hook(_enter_float64, with_kwargs=True)
        model.register_forward_hook(_exit_float64, with_kwargs=True, always_call=True)
        model._influence_float64_hook = True
    if is_bidirectional(model):
        _add_mask_hook(model, "attention_mask")
    elif getattr(getattr(model, "config", None), "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        _add_mask_hook(model.get_encoder(), "attention_mask")
        _add_mask_hook(model.get_decoder(), "encoder_attention_mask")
    return model.eval()


def _eager_experts(model: nn.Module) -> None:
    """Mixture-of-experts models run their experts with ``transformers``' eager loop in float64: the default
    kernels (``grouped_mm``) take float32/bfloat16/float16 only and failed inside the forward with the kernel's
    message. Where the model cannot switch, say what to do (``InvalidArgumentError``) instead of failing later."""
    from .errors import InvalidArgumentError
    config = getattr(model, "config", None)
    current = getattr(config, "_experts_implementation", None) if config is not None else None
    if current in (None, "eager"):
        return
    can = getattr(model, "_can_set_experts_implementation", None)
    try:
        if can is None or not can():
            raise ValueError("the model class cannot switch its experts implementation")
        model.set_experts_implementation("eager")
    except Exception as e:  # noqa: BLE001 - reported with what to do
        raise InvalidArgumentError(
            f"hf.prepare(model, torch.float64): {type(model).__name__} runs its experts with "
            f"experts_implementation={current!r}, whose kernels take float32/bfloat16/float16 only, and switching "
            f"to 'eager' failed ({type(e).__name__}: {e}). Load it with "
            "from_pretrained(..., experts_implementation='eager') (or config._experts_implementation = 'eager'), "
            "or score it in float32") from e


def _build(model_cls: Any, config: Any, seed: int, dtype: torch.dtype | None) -> nn.Module:
    torch.manual_seed(seed)
    return prepare(model_cls(config), dtype)


def tiny_gpt2(vocab_size: int = 64, n_positions: int = 32, n_embd: int = 16, n_layer: int = 2, n_head: int = 2,
              seed: int = 0, dtype: torch.dtype | None = None, **config: Any) -> nn.Module:
    """A random ``GPT2LMHeadModel`` (Conv1D layers, lm_head tied to wte) from a small config, dropout 0."""
    tf = _transformers()
    cfg = tf.GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                        eos_token_id=0, attn_implementation="eager", use_cache=False, **config)
    return _build(tf.GPT2LMHeadModel, cfg, seed, dtype)


def tiny_gpt_neo(vocab_size: int = 64, max_position_embeddings: int = 32, hidden_size: int = 16, num_layers: int = 2,
                 num_heads: int = 2, window_size: int = 4, seed: int = 0, dtype: torch.dtype | None = None,
                 **config: Any) -> nn.Module:
    """A random ``GPTNeoForCausalLM`` with one global and one local (``window_size``) attention layer per pair,
    dropout 0."""
    tf = _transformers()
    cfg = tf.GPTNeoConfig(vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
                          hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                          attention_types=[[["global", "local"], max(1, num_layers // 2)]], window_size=window_size,
                          resid_dropout=0.0, embed_dropout=0.0, attention_dropout=0.0, bos_token_id=0,
                          eos_token_id=0, attn_implementation="eager", use_cache=False, **config)
    return _build(tf.GPTNeoForCausalLM, cfg, seed, dtype)


def tiny_bert_classifier(num_labels: int = 3, vocab_size: int = 64, hidden_size: int = 16, num_hidden_layers: int = 2,
                         num_attention_heads: int = 2, intermediate_size: int = 32,
                         max_position_embeddings: int = 32, seed: int = 0, dtype: torch.dtype | None = None,
                         **config: Any) -> nn.Module:
    """A random ``BertForSequenceClassification`` (pooler + classifier head) from a small config, dropout 0."""
    tf = _transformers()
    cfg = tf.BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                        num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                        max_position_embeddings=max_position_embeddings, num_labels=num_labels,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0,
                        pad_token_id=0, attn_implementation="eager", use_cache=False, **config)
    return _build(tf.BertForSequenceClassification, cfg, seed, dtype)
