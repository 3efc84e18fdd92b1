"""The PyTorch backend (plugin). Importing this package does not import torch."""

import os
from typing import Literal

import attrs

from toolkit.config import check
from toolkit.hookspecs import hookimpl

# OpenMP threads that wait between parallel regions sleep instead of spinning. A spinning thread
# burns the time slice its partner needs whenever another process shares the CPU: the digits
# demo's step went from 11 ms to 276 ms beside the test suite (benchmarks/shared_cpu.py measures
# it). libgomp reads this when torch loads, which is after this module (it does not import torch);
# a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@attrs.frozen
class TorchOptions:
    """PyTorch engine options (config section ``backend: {torch: {...}}``)."""

    #: torch.compile the whole loss function, JVP included (compiles once, ~30 s on 2 cores).
    compile: bool = False
    #: how JVPs are taken: ``func`` (torch.func.jvp) or ``forward_ad`` (dual tensors, which
    #: also work through DistributedDataParallel). Under torchrun (several processes, DDP) the
    #: engine always takes ``forward_ad``: see toolkit/backends/torch/distributed.py.
    jvp: Literal["func", "forward_ad"] = "func"
    #: where the model trains: ``auto`` (a GPU when torch sees one, under torchrun the one of
    #: ``LOCAL_RANK``; else the CPU), or a torch device such as ``cpu`` or ``cuda:1``.
    device: str = "auto"
    #: CPU threads of torch's operators: ``auto`` is ``OMP_NUM_THREADS`` when set, else the CPUs
    #: this process may run on (its affinity mask, which a container or ``taskset`` narrows).
    threads: int | Literal["auto"] = attrs.field(default="auto", validator=check(
        lambda v: v == "auto" or v >= 1, "auto or a number of threads >= 1"))

    def thread_count(self) -> int:
        if self.threads != "auto":
            return int(self.threads)
        configured = os.environ.get("OMP_NUM_THREADS", "")
        if configured.isdigit() and int(configured) >= 1:
            return int(configured)
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@hookimpl
def register_backends(register):
    register("torch", {"torch": "toolkit.backends.torch.engine:TorchEngine"}, options=TorchOptions,
             summary="PyTorch engine (eager or torch.compile, CPU or CUDA)")
