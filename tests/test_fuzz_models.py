"""The model fuzzer: random small models (``tests/fuzz_models.py``: Linear/Conv/Embedding/norms/attention, weights
reused inside and outside their modules, tied heads, reshapes and transposes that move the batch dimension,
[1, d] context tensors, broadcasting, batch statistics, parametrizations, custom autograd.Functions, frozen parts,
micro-batching), each checked in float64 for Ghost, Exact, LAI, last-layer LAI and theory: the exact number or a
named error, never a wrong number, never an obscure error.

    python tests/test_fuzz_models.py --default           # the default suite's examples, with the count table
    python tests/test_fuzz_models.py --examples 300      # prints the count table (examples, exact, routed, ...)
    bash scripts/test.sh --slow -k fuzz                   # thousands of examples, with the table

Default suite: ``EXAMPLES_DEFAULT`` examples, derandomized (the same models on every run). Each failure found
becomes a fixed case in ``tests/test_adversarial.py``.
"""

from __future__ import annotations

import argparse
import sys

import fuzz_models as fm
import pytest
import torch
from hypothesis import HealthCheck, given, settings

EXAMPLES_DEFAULT, EXAMPLES_SLOW = 300, 3000


def _assert_clean(spec: fm.Spec) -> None:
    out = fm.check(spec)
    bad = {est: r for est, r in out.items() if r[0] in ("wrong", "obscure")}
    assert not bad, f"{spec}: {bad}"


@pytest.mark.usefixtures("one_thread")
@settings(max_examples=EXAMPLES_DEFAULT, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(fm.specs())
def test_fuzzed_models_give_the_exact_number_or_a_named_error(spec: fm.Spec) -> None:
    _assert_clean(spec)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@settings(max_examples=EXAMPLES_SLOW, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(fm.specs(max_blocks=6))
def test_fuzzed_models_many(spec: fm.Spec) -> None:
    _assert_clean(spec)


@pytest.mark.slow
def test_fuzz_table_printed(capsys: pytest.CaptureFixture) -> None:
    """After the slow fuzz run (same process): print the count table; wrong and obscure must be 0."""
    with capsys.disabled():
        print("\n" + fm.table())
    assert sum(v for (e, o), v in fm.COUNTS.items() if o in ("wrong", "obscure")) == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-blocks", type=int, default=4)
    ap.add_argument("--verbose", action="store_true", help="print every wrong or obscure outcome")
    ap.add_argument("--default", action="store_true",
                    help="the default suite's examples (derandomized, EXAMPLES_DEFAULT, at most 4 blocks)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    from hypothesis import seed

    bad = []
    if a.default:
        a.examples, a.max_blocks = EXAMPLES_DEFAULT, 4
    chosen = settings(max_examples=a.examples, deadline=None, database=None, derandomize=a.default,
                      suppress_health_check=list(HealthCheck))

    @(lambda f: f) if a.default else seed(a.seed)
    @chosen
    @given(fm.specs(max_blocks=a.max_blocks))
    def sweep(spec: fm.Spec) -> None:
        out = fm.check(spec)
        for est, (kind, detail) in out.items():
            if kind in ("wrong", "obscure"):
                bad.append((spec, est, kind, detail))
                if a.verbose:
                    print(f"{kind}: {est}: {detail}\n  {spec}", flush=True)

    sweep()
    print(fm.table())
    print(f"wrong or obscure outcomes: {len(bad)}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    sys.path.insert(0, __file__.rpartition("/")[0])
    main()
