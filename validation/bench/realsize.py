"""Real-size workloads of ``lai bench`` (issue 23): models of real shapes built from configs, random weights, no
downloads.

=================  ============================================================================================
gpt2-small         ``transformers.GPT2Config()`` defaults (12 layers, d = 768, 12 heads, vocabulary 50,257, head
                   tied to ``wte``), eager attention (``influence.hf.prepare``), 128 tokens per sequence
gpt2-small-512     the same, 512 tokens per sequence
pythia-160m        ``GPTNeoXConfig`` shaped like Pythia-160M: 12 layers, d = 768, 12 heads, MLP 3,072, vocabulary
                   50,304, untied head, rotary embeddings on 25 % of each head (base 10,000), parallel residual;
                   128 tokens
resnet18           the CIFAR ResNet-18 in plain torch (``CifarResNet18``): 3x3 stem conv of stride 1 and no
                   max-pool, basic blocks [2, 2, 2, 2] of widths 64-128-256-512, eval-mode BatchNorm, 10 classes,
                   on 32x32 RGB images (the ResNet-18 people train on 32x32 data; the ImageNet stem of
                   ``transformers``' ResNet would shrink a 32x32 image to 8x8 before the first block)
vit-s              ``transformers.ViTForImageClassification`` shaped like ViT-S: d = 384, 12 layers, 6 heads,
                   MLP 1,536, on 32x32 RGB images with 4x4 patches (64 patch tokens + the class token), 10
                   classes: the same images as ``resnet18``, and a token count (65) near the LMs' rather than
                   ViT-S/16's 197 on 224x224 images, which costs 3x more per image with the same layer shapes
=================  ============================================================================================

Batches (``RealSpec.n_score`` / ``n_ref``): language models 2 training and 2 reference sequences (issue 23's
measurement), images 32 / 32. Losses: ``influence.hf.causal_lm_loss()`` on the LMs' ``.logits``,
``influence.cross_entropy`` on the image models' logits (ViT's ``.logits`` are read by the core). Inputs are
random token ids (LMs, no padding) or standard-normal images with random labels: the cost does not depend on the
values.

``tiny=True`` gives the same builders with few layers and a small width (seconds; tests); ``vocab`` overrides
the vocabulary of a tiny LM (a test keeps the real 50,257 with a small width). ``RealSpec.with_overrides``
changes depth, sequence length or batch sizes for short runs at a real width.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

import influence
from influence.batch import Batch, LossFn

REALSIZE = ("gpt2-small", "gpt2-small-512", "pythia-160m", "resnet18", "vit-s")
LM_WORKLOADS = ("gpt2-small", "gpt2-small-512", "pythia-160m")
GPT2_VOCAB, PYTHIA_VOCAB = 50257, 50304
TINY_VOCAB = 256


@dataclass(frozen=True)
class RealSpec:
    """One real-size workload's settings. ``kind``: "lm" (token ids, causal LM loss) or "image" (images
    ``[3, image, image]``, 10 classes). ``n_layers``, ``d_model``, ``vocab``, ``seq_len`` (tokens) and
    ``image`` (pixels per side) describe the model and inputs; ``lr`` is the scores' step size."""

    name: str
    kind: str
    n_score: int
    n_ref: int
    n_layers: int
    d_model: int
    vocab: int | None = None
    seq_len: int | None = None
    image: int | None = None
    lr: float = 1e-3
    tiny: bool = False

    def with_overrides(self, **kw: Any) -> "RealSpec":
        """A copy with the fields in ``kw`` that are not None replaced (``n_layers``, ``seq_len``, ``n_score``,
        ``n_ref``, ``vocab``)."""
        return dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def real_spec(name: str, tiny: bool = False, vocab: int | None = None) -> RealSpec:
    """The settings of real-size workload ``name`` (``REALSIZE``); ``tiny``: 2 layers of width 32 (images: 16x16,
    narrow); ``vocab`` replaces the LM vocabulary (tiny default 256)."""
    if name not in REALSIZE:
        raise ValueError(f"unknown real-size workload {name!r}; choose from {', '.join(REALSIZE)}")
    if name in LM_WORKLOADS:
        real_vocab = GPT2_VOCAB if name.startswith("gpt2") else PYTHIA_VOCAB
        v = vocab if vocab is not None else (TINY_VOCAB if tiny else real_vocab)
        length = 512 if name == "gpt2-small-512" else 128
        return RealSpec(name, "lm", 2, 2, 2 if tiny else 12, 32 if tiny else 768, vocab=v,
                        seq_len=(32 if length == 512 else 16) if tiny else length, lr=1e-3, tiny=tiny)
    if name == "resnet18":
        return RealSpec(name, "image", 4 if tiny else 32, 4 if tiny else 32, 10 if tiny else 18,
                        8 if tiny else 64, image=16 if tiny else 32, lr=0.1, tiny=tiny)
    return RealSpec(name, "image", 4 if tiny else 32, 4 if tiny else 32, 2 if tiny else 12, 32 if tiny else 384,
                    image=16 if tiny else 32, lr=0.1, tiny=tiny)


# ---------------------------------------------------------------- ResNet-18 (CIFAR stem), plain torch


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN plus the shortcut (1x1 conv + BN when the shape changes),
    then ReLU. No in-place operations (the estimators refuse layer outputs modified in place)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for 32x32 images: 3x3 stem (stride 1, no max-pool), stages of ``blocks`` basic blocks with
    widths ``widths`` (strides 1, 2, 2, 2), global average pool, linear classifier."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (64, 128, 256, 512),
                 blocks: tuple[int, ...] = (2, 2, 2, 2), in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        layers, c = [], widths[0]
        for i, (w, b) in enumerate(zip(widths, blocks)):
            for j in range(b):
                layers.append(BasicBlock(c, w, 2 if (i > 0 and j == 0) else 1))
                c = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def _randomise_batchnorm(model: nn.Module, gen: torch.Generator) -> None:
    """Give eval-mode BatchNorm non-trivial running statistics and affine parameters (a trained model's are
    not 0/1), so that the normalisation is a real affine map."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(1.0 + 0.1 * torch.rand(m.num_features, generator=gen))
                m.weight.copy_(1.0 + 0.1 * torch.randn(m.num_features, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))


# ---------------------------------------------------------------- builders


def hf_config(spec: RealSpec) -> Any:
    """The ``transformers`` config of an LM or ViT workload (no weights built)."""
    import transformers as tf

    if spec.kind == "lm" and spec.name.startswith("gpt2"):
        # GPT2Config() defaults (12 layers, 12 heads, d 768, vocabulary 50,257, tied head) unless tiny/overridden
        return tf.GPT2Config(vocab_size=spec.vocab, n_embd=spec.d_model, n_layer=spec.n_layers,
                             n_head=2 if spec.tiny else 12, n_positions=max(1024, spec.seq_len), resid_pdrop=0.0,
                             embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=spec.vocab - 1,
                             eos_token_id=spec.vocab - 1, attn_implementation="eager", use_cache=False)
    if spec.kind == "lm":
        return tf.GPTNeoXConfig(vocab_size=spec.vocab, hidden_size=spec.d_model, num_hidden_layers=spec.n_layers,
                                num_attention_heads=2 if spec.tiny else 12, intermediate_size=4 * spec.d_model,
                                max_position_embeddings=max(2048, spec.seq_len), tie_word_embeddings=False,
                                use_parallel_residual=True, hidden_dropout=0.0, attention_dropout=0.0,
                                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                 "partial_rotary_factor": 0.25},
                                bos_token_id=0, eos_token_id=0, attn_implementation="eager", use_cache=False)
    if spec.name == "vit-s":
        return tf.ViTConfig(hidden_size=spec.d_model, num_hidden_layers=spec.n_layers,
                            num_attention_heads=2 if spec.tiny else 6, intermediate_size=4 * spec.d_model,
                            image_size=spec.image, patch_size=4, num_channels=3, num_labels=10,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")
    raise ValueError(f"{spec.name} is not a transformers model")


def _build_model(spec: RealSpec) -> nn.Module:
    """The model of ``spec`` in eval mode, float32, on the CPU (weights from the current torch seed)."""
    from influence import hf

    if spec.name == "resnet18":
        widths = tuple(spec.d_model * 2 ** i for i in range(4))
        blocks = (2, 2, 2, 2) if spec.n_layers >= 18 else (1, 1, 1, 1)  # ResNet-18 / ResNet-10
        model = CifarResNet18(10, widths, blocks)
        _randomise_batchnorm(model, torch.Generator().manual_seed(1))
        return model.eval()
    import transformers as tf

    cls = {"gpt2": tf.GPT2LMHeadModel, "pythia": tf.GPTNeoXForCausalLM, "vit": tf.ViTForImageClassification}
    return hf.prepare(cls[spec.name.split("-")[0]](hf_config(spec)))


@dataclass
class RealWorkload:
    """A built real-size workload: ``spec``, ``model`` (eval mode, on the device), ``loss_fn`` (per-sample
    losses [n]) and ``make(n, generator) -> (inputs, targets)`` on the device; ``meta`` describes it."""

    spec: RealSpec
    model: nn.Module
    loss_fn: LossFn
    make: Callable[[int, torch.Generator], Batch]
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name


def _maker(spec: RealSpec, device: torch.device) -> Callable[[int, torch.Generator], Batch]:
    if spec.kind == "lm":
        from influence import hf

        def tokens(n: int, gen: torch.Generator) -> Batch:
            ids = torch.randint(0, spec.vocab, (n, spec.seq_len), generator=gen).to(device)
            inputs, labels = hf.lm_batch(ids)
            return inputs, labels
        return tokens

    def images(n: int, gen: torch.Generator) -> Batch:
        return (torch.randn(n, 3, spec.image, spec.image, generator=gen).to(device),
                torch.randint(0, 10, (n,), generator=gen).to(device))
    return images


def describe(spec: RealSpec, model: nn.Module) -> dict[str, Any]:
    """Parameter count (millions), the shape in words and the spec."""
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if spec.kind == "lm":
        shape = (f"{type(model).__name__}: {spec.n_layers} layers, d={spec.d_model}, vocab {spec.vocab}, "
                 f"{spec.seq_len} tokens")
    elif spec.name == "resnet18":
        depth = "ResNet-18" if spec.n_layers >= 18 else "ResNet-10"
        shape = (f"CifarResNet18 (plain torch, CIFAR stem, {depth} blocks): widths {spec.d_model}-{spec.d_model * 8}, "
                 f"{spec.image}x{spec.image}")
    else:
        shape = (f"ViTForImageClassification: {spec.n_layers} layers, d={spec.d_model}, {spec.image}x{spec.image} "
                 f"patch 4 ({(spec.image // 4) ** 2 + 1} tokens)")
    return {"model": shape, "params_m": round(n_params / 1e6, 2), "spec": spec.to_dict()}


def build_real(spec: RealSpec, seed: int = 0, device: str | torch.device = "cpu") -> RealWorkload:
    """The workload of ``spec``: model initialised under ``torch.manual_seed(seed)``, eval mode, on ``device``."""
    from influence import hf

    torch.manual_seed(seed)
    dev = torch.device(device)
    model = _build_model(spec).to(dev)
    loss_fn = hf.causal_lm_loss() if spec.kind == "lm" else influence.cross_entropy
    return RealWorkload(spec, model, loss_fn, _maker(spec, dev), describe(spec, model))


def estimators_for(spec: RealSpec, estimators: tuple[str, ...] | list[str]) -> list[str]:
    """The estimators of ``estimators`` that apply to ``spec`` (the token-sequence-only ones on LMs only)."""
    from influence.estimators import get_estimator

    return [e for e in estimators if spec.kind == "lm" or not get_estimator(e).caps.sequence_only]


__all__ = ["hf_config", "REALSIZE", "LM_WORKLOADS", "RealSpec", "RealWorkload", "real_spec", "build_real", "describe",
           "estimators_for", "CifarResNet18", "BasicBlock", "GPT2_VOCAB", "PYTHIA_VOCAB"]
