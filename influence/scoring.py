"""Train-reference inner products of factorised blocks, choosing the cheaper form per block.

Modes: ``"gram"`` (token-pair Gram products, never forming a gradient), ``"materialize"`` (for scores:
contract each training sample with the mean reference gradient of the block; for pairwise output:
materialise per-sample gradient blocks), ``"auto"`` (whichever the cost model says is cheaper, per block).

The reference side is built once (:class:`ReferenceSide`) from one or several reference batches and then scores any
number of training batches. With several reference batches (a list, a DataLoader) the mean reference gradient of a
block is accumulated batch by batch (contracted form, memory of one gradient per block); the Gram form keeps the
reference factors, so it is used only for a single reference batch or for pairwise products.
"""

from __future__ import annotations

from typing import Hashable, Mapping

import torch
from torch import Tensor

from .errors import InfluenceError, InvalidArgumentError
from .factors import Block, Index, RowSparse, add_matrices, gram_width, shared_grams
from .memory import MemoryBudgetError, mib, require_fits, resolve_budget

MODES = ("auto", "gram", "materialize")
DEFAULT_BUDGET: int | None = None  # bytes (influence.memory): None is half of the memory free at the start


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InvalidArgumentError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


GRAM_FIXED = 2_000_000  # the Gram form's fixed work per block and call beyond the other form's, in multiply-adds


def _itemsize(block: Block) -> int:
    for seg in block.segments:
        for f in (seg.right, seg.left):
            if not isinstance(f, Index):
                return f.dtype.itemsize
    return 8


def gram_row_bytes(train: Block, n_ref: int) -> float:
    """Bytes of one training row of ``chunked_gram`` against ``n_ref`` reference samples (the token-pair Grams of
    both factors and their product)."""
    tok = sum(s.tokens for s in train.segments)
    groups = max(s.left.groups for s in train.segments)
    return float(n_ref) * tok * tok * groups * _itemsize(train) * 3


def fits(block: Block, form: str, n_train: int, n_ref: int, pairwise: bool, budget: int) -> bool:
    """Whether ``form`` ("gram" or "materialize") of ``block`` stays within ``budget`` bytes: the Gram form in
    chunks of at least one training row; the contracted form's reference matrix M (read whole); pairwise
    materialised products the reference samples' gradients (kept) and one training sample's at a time."""
    need = gram_row_bytes(block, n_ref) if form == "gram" else matrix_bytes(block, n_ref, pairwise)
    return need <= budget


def matrix_bytes(block: Block, n_ref: int, pairwise: bool) -> float:
    """Bytes of the contracted form: the reference matrix (row-sparse for one-hot factors), or for pairwise
    products the reference samples' gradients and one training sample's (the whole space per sample)."""
    item = _itemsize(block)
    return block.matrix_size() * item * (n_ref + 1) if pairwise else block.matrix_size(n_ref) * item


def choose_mode(block: Block, n_train: int, n_ref: int, pairwise: bool, mode: str, ref_sum: bool = False,
                budget: int | None = None, prefer: str | None = None, paid: set | None = None,
                sharing: int = 1) -> str:
    """The form of ``block``: ``mode`` when it is not ``"auto"``, else the cheaper of the two that fit ``budget``
    (bytes; ``fits``). ``prefer`` ("materialize" when the reference is streamed or preconditioned) is taken
    whenever it fits. ``ref_sum``: the block's sum over the reference samples is already known (autograd's,
    from the verification), so the contracted form pays only its training side. Costs are multiply-adds; the
    Gram form also pays ``GRAM_FIXED`` (its two token-pair einsums, row chunks and concatenation: measured about
    130 us against a contraction's 25 us for a block of 8 samples and width 16 x 9 on one CPU thread, which runs
    15-45 multiply-adds per ns), so small blocks take the contracted form. ``paid``: the ``shared`` factors
    whose Gram an earlier block's Gram form already pays for (``Block.shared_grams``); the others' Gram costs are
    counted here, shared out over the ``sharing`` blocks that read the factor (LAI: every scored layer), and a
    block that takes the Gram form adds them to ``paid``. Raises ``MemoryBudgetError`` before
    allocating when no allowed form fits."""
    forms = ("gram", "materialize") if check_mode(mode) == "auto" else (mode,)
    ok = [f for f in forms if budget is None or fits(block, f, n_train, n_ref, pairwise, budget)]
    if not ok:
        need = {"gram": gram_row_bytes(block, n_ref), "materialize": matrix_bytes(block, n_ref, pairwise)}
        raise MemoryBudgetError(f"{block.name}: no form of this block fits memory_budget = {mib(budget)} "
                                f"({', '.join(f'{f}: {mib(need[f])}' for f in forms)}); raise memory_budget, score "
                                "fewer reference samples or shorter sequences, or use mode='auto'")
    shared = block.shared_grams(n_train, n_ref)
    if len(ok) == 1:
        form = ok[0]
    elif prefer in ok:
        form = prefer
    else:
        other = block.materialize_cost(n_train, n_ref) if pairwise else \
            block.contract_cost(n_train, 0 if ref_sum else n_ref)
        unpaid = sum(c for k, c in shared.items() if paid is None or k not in paid) / max(1, sharing)
        form = "gram" if block.gram_cost(n_train, n_ref) + unpaid + GRAM_FIXED <= other else "materialize"
    if form == "gram" and paid is not None:
        paid.update(shared)
    return form


def kept_bytes(block: Block, form: str, n_ref: int, pairwise: bool) -> float:
    """Bytes a reference side allocates to keep ``block`` in ``form``: the reference matrix (contracted) or the
    reference samples' gradients (pairwise materialised). The Gram form keeps the captured factors themselves,
    the tensors the forward and backward made, and allocates nothing."""
    if form == "gram":
        return 0.0
    return matrix_bytes(block, n_ref - 1, True) if pairwise else matrix_bytes(block, n_ref, False)


def chunked_gram(train: Block, ref: Block, budget: int) -> Tensor:
    """[n_train, n_ref] Gram products, over row chunks sized so one chunk's token-pair tensor fits ``budget``."""
    per_row = max(1.0, gram_row_bytes(train, ref.n))
    rows = max(1, int(budget // per_row))
    if rows >= train.n:
        return train.gram(ref)
    return torch.cat([train.rows(slice(i, i + rows)).gram(ref) for i in range(0, train.n, rows)])


def chunked_materialized(train: Block, ref_grads: Tensor, budget: int) -> Tensor:
    """[n_train, n_ref] = per-sample gradients of ``train`` times ``ref_grads`` [n_ref, size]ᵀ, materialising the
    training gradients over row chunks of at most ``budget`` bytes."""
    size = ref_grads.shape[1]
    rows = max(1, budget // max(1, size * ref_grads.element_size()))
    if rows >= train.n:
        return train.per_sample() @ ref_grads.T
    return torch.cat([train.rows(slice(i, i + rows)).per_sample() @ ref_grads.T for i in range(0, train.n, rows)])


SELF_ROWS = 64  # samples per row chunk of self_products' Gram diagonal (blocks without tokens)


def self_products(block: Block, budget: int | None = DEFAULT_BUDGET) -> Tensor:
    """[n]: <G_i, G_i> for every sample of ``block``: materialised per-sample gradients (in row chunks within
    ``budget``) when one gradient is smaller than the token-pair Gram of one sample and fits the budget; else, for a
    block without tokens (one token per segment), the diagonal of the Gram of row chunks of ``SELF_ROWS`` samples
    (a few einsums per block instead of one per sample); else one Gram per sample (refused by name when even that
    does not fit)."""
    budget = resolve_budget(budget)
    size, item = block.matrix_size(), _itemsize(block)
    tok = sum(s.tokens for s in block.segments)
    seg = block.segments[0]
    cheaper = size <= tok * tok * (gram_width(seg.left) + gram_width(seg.right) + 1) * 4
    if cheaper and size * item <= budget:
        rows = max(1, int(budget // max(1, size * item)))
        return torch.cat([block.rows(slice(i, i + rows)).per_sample().pow(2).sum(1) for i in range(0, block.n, rows)])
    if tok == len(block.segments) and SELF_ROWS * gram_row_bytes(block, SELF_ROWS) <= budget:
        return torch.cat([(b := block.rows(slice(i, i + SELF_ROWS))).gram(b).diagonal()
                          for i in range(0, block.n, SELF_ROWS)])
    require_fits(gram_row_bytes(block.rows(slice(0, 1)), 1), budget, f"{block.name}: one sample's token-pair Gram")
    return torch.stack([block.rows(slice(i, i + 1)).gram(block.rows(slice(i, i + 1)))[0, 0]
                        for i in range(block.n)])


def precondition_matrix(block: Block, m: Tensor, preconditioner: Mapping[int, Tensor]) -> Tensor:
    """M with every parameter's entries multiplied elementwise by its preconditioner (keyed by id(param)), through
    the block's ``unpack`` views: <G_i, P (.) M> = <P (.) G_i, M>. Refuses a block whose unpack copies."""
    params = [p for p in block.params if id(p) in preconditioner]
    if not params:
        return m
    out = m.clone()
    views = block.unpack(out)
    for p, v in zip(block.params, views):
        if id(p) not in preconditioner:
            continue
        if v.untyped_storage().data_ptr() != out.untyped_storage().data_ptr():
            raise InfluenceError(f"{block.name}: this block's layout cannot carry an elementwise preconditioner; use "
                                 "influence.exact(preconditioner=...)")
        v.mul_(preconditioner[id(p)].to(v.dtype))
    return out


class ReferenceSide:
    """Reference statistics computed once and reused for every chunk of training samples.

    Add reference batches with :meth:`add` (``blocks`` may be any mapping; its values are read one at a time, so a
    mapping that builds each block on access keeps only one block's factors alive, see ``influence.lai``), then
    score training blocks with :meth:`score`. ``n_train`` is the expected number of training samples per call
    (for the cost model); ``streamed=True`` (several reference batches) keeps the contracted form for scores.
    ``preconditioner`` (id(param) -> P) scores <P (.) G_i, mean_v G_v> (contracted form only). ``scale``
    multiplies every product (an estimator's lr: folded into the mean reference matrices once, so the
    contracted form pays nothing per call for it)."""

    def __init__(self, n_train: int, pairwise: bool, mode: str = "auto", budget: int | None = DEFAULT_BUDGET,
                 streamed: bool = False, preconditioner: Mapping[int, Tensor] | None = None,
                 scale: float = 1.0) -> None:
        self.n_train, self.pairwise, self.budget, self.scale = n_train, pairwise, resolve_budget(budget), scale
        self.mode, self.streamed = check_mode(mode), streamed
        self.preconditioner = dict(preconditioner or {})
        if self.preconditioner and pairwise:
            raise InfluenceError("a preconditioner applies to scores, not to pairwise products; use pairwise=False")
        if self.preconditioner and mode == "gram":
            raise InfluenceError("the Gram form cannot carry an elementwise preconditioner; use mode='auto' or "
                                 "'materialize'")
        self.n_ref = 0
        self.modes: dict[Hashable, str] = {}
        self.paid: set = set()  # shared factors whose Gram the Gram-form blocks compute once (``choose_mode``)
        self.kept = 0.0  # bytes the reference matrices take so far (``kept_bytes``): later blocks fit what is left
        self.names: dict[Hashable, str] = {}
        self.parts: dict[Hashable, list] = {}  # gram: reference blocks; pairwise materialize: [n_v, size] tensors
        self.sums: dict[Hashable, Tensor] = {}  # contracted: sum over reference samples of G_v
        self.blocks_seen: dict[Hashable, Block] = {}  # one block per key (for preconditioning views)
        self._means: dict[Hashable, Tensor] | None = None  # mean reference matrices, built once after the last add
        self._views: dict[Hashable, dict] = {}  # views of each mean matrix that the contraction reads

    def add(self, blocks: Mapping[Hashable, Block], n: int, sums: Mapping[Hashable, Tensor] | None = None) -> None:
        """Add one reference batch of ``n`` samples. ``sums``: block key -> the block's sum over these samples
        of G_v, when already known ([G, p, q], autograd's gradient checked against the factors by
        ``influence.verify``): the contracted form uses it instead of forming it from the factors."""
        sums = sums or {}
        self._means = None
        first = self.n_ref == 0
        for key in blocks:
            block = blocks.get(key)
            if block is None:
                continue
            if key not in self.modes:
                mode = "materialize" if self.preconditioner and self.mode == "auto" else self.mode
                if mode == "gram" and self.streamed and not self.pairwise:
                    raise InfluenceError("the Gram form needs the whole reference set in memory; with several "
                                         "reference batches use mode='auto' or 'materialize'")
                streamed = self.streamed and not self.pairwise  # contracted unless its matrix does not fit
                m = choose_mode(block, self.n_train, n, self.pairwise, mode, key in sums,
                                max(1, self.budget - self.kept), "materialize" if streamed else None, self.paid,
                                len(blocks))
                self.kept += kept_bytes(block, m, n, self.pairwise)
                self.modes[key], self.names[key] = m, block.name
                if not first and (m == "gram" or self.pairwise):  # a layer absent from earlier batches
                    self.parts[key] = [_ZeroColumns(self.n_ref)]
            m = self.modes[key]
            if m == "gram":
                self.parts.setdefault(key, []).append(block)
            elif self.pairwise:
                self.parts.setdefault(key, []).append(block.per_sample())
            else:
                mat = sums[key] if key in sums else block.reference_matrix()
                self.sums[key] = add_matrices(self.sums[key], mat) if key in self.sums else mat
                if self.preconditioner:
                    self.blocks_seen.setdefault(key, block.rows(slice(0, 0)))
            del block
        for key, m in self.modes.items():  # keys missing from this batch contribute zeros (pairwise columns)
            if key not in blocks and (m == "gram" or self.pairwise):
                self.parts[key].append(_ZeroColumns(n))
        self.n_ref += n

    def _mean(self, key: Hashable) -> "Tensor | RowSparse":
        m = self.sums[key]
        if isinstance(m, RowSparse):
            return m.scaled(self.scale / self.n_ref) if not self.preconditioner else \
                precondition_matrix(self.blocks_seen[key], self._per_ref(m.dense()), self.preconditioner)
        m = self._per_ref(m)
        if self.preconditioner:
            m = precondition_matrix(self.blocks_seen[key], m, self.preconditioner)
        return m

    def score(self, blocks: Mapping[Hashable, Block], n: int, like: Tensor) -> dict[Hashable, Tensor]:
        """Per block: [n] mean over the reference (or [n, n_ref] when pairwise) of <G_i, G_v>."""
        if self.n_ref == 0:
            raise InfluenceError("the reference side holds no sample")
        out = {}
        shape = (n, self.n_ref) if self.pairwise else (n,)
        if self._means is None:
            self._means = {key: self._mean(key) for key in self.sums}
            self._views = {key: {} for key in self.sums}
        means, views = self._means, self._views
        with shared_grams():  # LAI's output-gradient Gram once for all layers
            self._score(blocks, n, like, shape, out, means, views)
        for key in blocks.keys() - self.modes.keys():
            out[key] = like.new_zeros(shape)
            self.names[key] = blocks[key].name
        return out

    def _score(self, blocks: Mapping[Hashable, Block], n: int, like: Tensor, shape: tuple, out: dict,
               means: dict, views: dict) -> None:
        for key, m in self.modes.items():
            block = blocks.get(key)
            if block is None:
                out[key] = like.new_zeros(shape)
            elif m == "gram":
                cols = [part.zeros(n, like) if isinstance(part, _ZeroColumns) else
                        chunked_gram(block, part, self.budget) for part in self.parts[key]]
                p = torch.cat(cols, 1) if len(cols) > 1 else cols[0]
                out[key] = self._scaled(p) if self.pairwise else self._per_ref(p.sum(1))
            elif self.pairwise:
                cols = [part.zeros(n, like) if isinstance(part, _ZeroColumns) else
                        chunked_materialized(block, part, self.budget) for part in self.parts[key]]
                out[key] = self._scaled(torch.cat(cols, 1) if len(cols) > 1 else cols[0])
            else:
                out[key] = block.contract(means[key], views[key])
            del block

    def _scaled(self, x: Tensor) -> Tensor:
        return x if self.scale == 1.0 else x * self.scale

    def _per_ref(self, x: Tensor) -> Tensor:
        """``x`` / n_ref, times ``scale``."""
        return x / self.n_ref if self.scale == 1.0 else x * (self.scale / self.n_ref)

    def by_name(self, scores: dict[Hashable, Tensor]) -> dict[str, Tensor]:
        named: dict[str, Tensor] = {}
        for key, s in scores.items():
            name = self.names[key]
            named[name] = named[name] + s if name in named else s
        return named


class _ZeroColumns:
    """n reference samples for which a layer did not run: zero pairwise columns."""

    def __init__(self, n: int) -> None:
        self.n = n

    def zeros(self, rows: int, like: Tensor) -> Tensor:
        return like.new_zeros(rows, self.n)
