"""``mosa.distributed.join`` under torchrun (2 CPU processes, gloo)."""

import os
import subprocess
import sys
import textwrap

import pytest

# Each rank joins, builds a model on the meta device (its first random op on a meta tensor
# imports torch._dynamo), gathers, destroys the group and counts its gloo threads.
WORKER = textwrap.dedent(
    """
    import os
    import sys
    import torch
    import torch.distributed as dist
    from mosa.distributed import join

    runtime = join()
    with torch.device("meta"):
        torch.nn.Embedding(16, 4)
    shares = [None] * runtime.world
    dist.all_gather_object(shares, runtime.rank)
    assert shares == list(range(runtime.world))
    dist.destroy_process_group()
    names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
    left = sum(name.startswith(("pt_gloo", "gloo")) for name in names)
    # A file per rank: the ranks' prints would interleave on the shared stdout.
    with open(os.path.join(sys.argv[1], f"rank{runtime.rank}.txt"), "w") as f:
        f.write(str(left))
    """
)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="lists threads through /proc")
@pytest.mark.slow
def test_destroying_the_group_stops_gloo_threads(tmp_path):
    # A gloo thread alive at interpreter exit aborts the process when it frees a tensor
    # ('terminate called without an active exception'), as `mosa eval` did now and then.
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launcher, str(script), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    left = [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(2)]
    assert left == ["0", "0"], f"gloo threads left after destroy_process_group: {left}"
