"""The PyTorch backend (plugin). Importing this package does not import torch."""

import os
from typing import Literal

import attrs

from toolkit.config import check
from toolkit.hookspecs import hookimpl



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
    #: On a CPU that other processes share, 1 keeps its speed where more collapse: OpenMP's
    #: waiting threads spin and burn the slices their partners need (the digits demo's step,
    #: ``python benchmarks/shared_cpu.py``: 15.0 ms idle and 63 ms beside one busy process with 2
    #: threads, 19.6 and 17.5 ms with 1; a sleeping wait policy costs 1.4-1.8x on an idle CPU).
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
