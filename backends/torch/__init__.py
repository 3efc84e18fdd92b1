"""The PyTorch backend (plugin). Importing this package does not import torch."""

from typing import Literal

import attrs

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


@hookimpl
def register_backends(register):
    register("torch", {"torch": "toolkit.backends.torch.engine:TorchEngine"}, options=TorchOptions,
             summary="PyTorch engine (eager or torch.compile, CPU or CUDA)")
