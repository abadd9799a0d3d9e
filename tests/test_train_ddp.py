"""qfx.train.fit inside DistributedDataParallel: 2 processes, gloo, ranks end identical."""

from __future__ import annotations

import datetime
import faulthandler
import gc
import signal
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.multiprocessing.spawn import ProcessException

# Two 2-step ranks take ~6 s here (~12 s on loaded cores); the bounds are far above that.
_GLOO_TIMEOUT_S = 120
_RANK_WATCHDOG_S = 240
_TEST_DEADLINE_S = 300

CFG = {
    "default": {
        "input": "ap_fixed<8,3,AP_RND,AP_SAT>",
        "weight": "ap_fixed<8,1,AP_RND_CONV,AP_SAT>",
        "bias": "ap_fixed<16,4,AP_RND,AP_SAT>",
        "output": "ap_fixed<8,3,AP_RND,AP_SAT>",
        "learn_binary_point": True,
    }
}


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 8 * 8, 10)
    )


def _train_rank(rank: int, world: int, out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    import qfx
    from qfx import train as qtrain

    model = qfx.convert(_tiny(), CFG)
    # every rank has its own data, on different scales: calibrations differ unless synchronised
    g = torch.Generator().manual_seed(123 + rank)
    x = torch.rand(64, 1, 8, 8, generator=g) * (1 + 7 * rank)
    y = torch.randint(0, 10, (64,), generator=g)
    ds = TensorDataset(x, y)
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(ds, batch_size=16, sampler=sampler)  # 32 samples per rank: 2 steps
    ddp = DDP(model)
    r = qtrain.fit(ddp, loader, None, epochs=1, lr=1e-2, frac_lr=0.1, seed=rank, calibrate_batches=2,
                   progress=False, freeze=False)
    assert r.epochs_run == 1
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, Path(out_dir) / f"rank{rank}.pt")


def _worker(rank: int, world: int, store_port: int, out_dir: str) -> None:
    import torch.distributed as dist

    # A rank stuck anywhere (a collective, the gloo shutdown, interpreter exit) writes every
    # thread's stack to stack<rank>.txt and exits: the test then fails with where it hung instead of
    # stalling the suite (a CI run once waited here past pytest-timeout's 1200 s with no clue).
    stack_file = open(Path(out_dir) / f"stack{rank}.txt", "w")  # noqa: SIM115 - lives as long as the process
    faulthandler.dump_traceback_later(_RANK_WATCHDOG_S, exit=True, file=stack_file)
    # the other ranks, stopped by torch with SIGTERM once one fails, say where they were too
    faulthandler.register(signal.SIGTERM, file=stack_file, chain=True)
    torch.set_num_threads(1)
    # a bounded wait: a lost peer fails the test instead of hanging the suite (gloo waits 30 min by default)
    timeout = datetime.timedelta(seconds=_GLOO_TIMEOUT_S)
    store = dist.TCPStore("127.0.0.1", store_port, is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    try:
        # the DDP object dies inside _train_rank, before the process group is destroyed: were its
        # reducer the last holder of the group, ~ProcessGroupGloo would run under the GIL and join a
        # gloo worker thread that needs the GIL to free a finished broadcast's tensors -- a deadlock
        # in torch (seen here about one run in three on loaded cores, gdb: Reducer::~Reducer ->
        # ~ProcessGroupGloo -> thread::join, the pt_gloo_runloop thread in take_gil)
        _train_rank(rank, world, out_dir)
        gc.collect()  # a DDP object in a reference cycle, freed now rather than by a later collection
    finally:
        dist.destroy_process_group()


def _run_ranks(world: int, tmp_path: Path) -> None:
    """Both ranks to their end, or a failure with each rank's error and where it hung (stack dumps)."""
    import torch.distributed as dist

    # the rendezvous: a TCP store on loopback held by this process (no lock file on a shared /tmp)
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=_GLOO_TIMEOUT_S))
    ctx = mp.start_processes(_worker, args=(world, store.port, str(tmp_path)), nprocs=world,
                             join=False, start_method="spawn")

    def stacks() -> str:
        return "\n".join(f"--- rank {r} (stacks at its watchdog or SIGTERM) ---\n" + dump.read_text()
                         for r in range(world) if (dump := tmp_path / f"stack{r}.txt").is_file() and dump.stat().st_size)

    deadline = time.monotonic() + _TEST_DEADLINE_S
    try:
        while not ctx.join(timeout=2):
            if time.monotonic() > deadline:
                for proc in ctx.processes:
                    proc.kill()
                pytest.fail(f"the gloo ranks did not finish in {_TEST_DEADLINE_S} s\n{stacks()}")
    except ProcessException as err:  # a rank raised, or exited non-zero (its watchdog fired)
        pytest.fail(f"{err}\n{stacks()}")


def test_two_gloo_ranks_end_with_identical_parameters(tmp_path, monkeypatch):
    # the ranks talk over loopback: no hostname lookup, whatever the machine's network
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    _run_ranks(2, tmp_path)
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    assert a.keys() == b.keys()
    fracs = [k for k in a if k.endswith("frac_bits")]
    assert len(fracs) >= 8
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # training happened: the learned binary points left their calibrated integer values
    assert any(not torch.equal(a[k], torch.round(a[k])) for k in fracs)
    assert int(a["1.num_batches_tracked"]) > 0
