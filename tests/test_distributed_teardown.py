"""Why a two-process (Gloo) run aborted at random, and that the fix holds: a rank that exits while its peer still
holds the process group open dies with SIGABRT ("terminate called without an active exception") when the peer is
slower to finish (rank 0 saving results). Every torchrun script of the tests ends with ``dist.barrier()`` and
``dist.destroy_process_group()``; this test runs such a script with a slow rank 0 and checks that both ranks exit
cleanly (it aborted in 2 of 3 runs without the two lines)."""

from __future__ import annotations

from conftest import run_torchrun

SCRIPT = """
import time, torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.ones(3)
dist.all_reduce(t)
assert float(t[0]) == 2.0
if dist.get_rank() == 0:
    time.sleep(0.5)  # rank 0 still busy (saving results) while rank 1 is done
dist.barrier()
dist.destroy_process_group()
"""


def test_slow_rank_zero_with_teardown_exits_cleanly(tmp_path) -> None:
    script = tmp_path / "teardown.py"
    script.write_text(SCRIPT)
    run_torchrun([str(script)], timeout=120)
