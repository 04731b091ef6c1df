"""Per-sample gradients as sums of outer products, and their inner products without materialising them.

* ``factor``: the factors (``Dense``, ``Index``, ``Patches``) and their token-pair Grams (``gram``,
  ``shared_grams``);
* ``segments``: one sum over tokens (``Segment``) and its Gram, reference matrix, contraction and per-sample forms;
* ``matrices``: row-sparse reference matrices (``RowSparse``, ``add_matrices``);
* ``block``: the parameters of one block (``Block``) and the costs of its forms.
"""

from ..patches import Patches
from .block import Block, add_all, gram_width
from .factor import Dense, Factor, Index, gram, ones_factor, shared_grams
from .matrices import RowSparse, add_matrices
from .segments import (
    NARROW,
    Segment,
    oriented,
    rows_times,
    segment_contract,
    segment_gram,
    segment_matrix,
    segment_per_sample,
    segment_reference_matrix,
)

__all__ = [
    "Patches", "Dense", "Index", "Factor", "ones_factor", "gram", "shared_grams", "Segment", "segment_gram",
    "segment_matrix", "segment_reference_matrix", "segment_contract", "segment_per_sample", "rows_times", "NARROW",
    "RowSparse", "add_matrices", "Block", "add_all", "oriented", "gram_width",
]
