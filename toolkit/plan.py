"""``toolkit plan``: what a run of a config costs, before it runs.

Everything here is arithmetic on the config; no weights are allocated. The parameter count
comes from building the backbone on PyTorch's ``meta`` device (shapes only), or from
``equinox.filter_eval_shape`` when only JAX is installed.

Memory per device, for data parallelism (every device holds a full replica and
``run.batch_size / devices`` examples of the global batch, as ``torchrun`` does here):

* weights and gradients: ``2 P b``, with ``P`` parameters of ``b`` bytes each (``run.dtype``;
  ``mixed_precision: bf16`` keeps float32 weights, gradients and optimiser state);
* AdamW: two moments, ``2 P b``;
* EMA: one copy per ``ema.decays`` entry, ``len(decays) P b``;
* activations, an ESTIMATE: ``ceil(B / devices) * A * F * a`` bytes, where ``a`` is the
  activation element size (2 under ``bf16``, else ``b``), ``A`` the activation elements one
  example keeps for the backward pass, and ``F`` the objective's factor below.

``A`` for a DiT with ``L`` blocks, width ``w``, ``h`` heads and ``n`` tokens:
``A = L n (20 w + 2 h n)``. Per block and token, the tensors autograd keeps are counted
from ``plugins/dit/torch.py``: the block input, layer-norm output and modulated input twice
(attention and MLP branch, ``6 w``), q, k, v (``3 w``), the attention output and the gated
projection (``2 w``), the MLP's hidden layer before and after GELU (``2 * 4 w``) and its
output (``w``), i.e. ``20 w`` with ``mlp_ratio`` 4 (``(12 + 2 m) w`` in general); plus the
attention probabilities and logits, ``2 h n``, as when attention is computed explicitly
(the fused kernels keep less, so this term is an upper bound). Embedders, the final layer,
allocator overhead and temporary buffers are not counted. For other backbones ``A`` is not
modelled (reported as unknown).

``F``, the objective's factor (reasoned from what each step keeps alive, not measured): flow matching 1; MeanFlow ``1 + ratio``: the JVP's tangents
double the forward activations of the pairs with r < t (the leading ``ratio`` share of the
batch) when the JVP is part of the differentiated graph (``backend.torch.compile``, the
joint path); eager PyTorch takes the JVP without a graph, so there ``F`` is an upper bound;
SplitMeanFlow 1 (its two extra forwards run without gradient). Guidance's two extra
forwards run without gradient and are not counted.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs

from toolkit.config import Config
from toolkit.interfaces import DataSpec

#: ImageNet-1k's training set (ILSVRC 2012), the default data set size for epochs.
IMAGENET_TRAIN = 1_281_167
GIB = 1024**3
#: the default ``--memory``: an 80 GB H100 (80 GiB is what ``toolkit plan`` compares with).
DEFAULT_MEMORY_GIB = 80.0


@attrs.frozen
class Plan:
    """The numbers ``toolkit plan`` prints; memory in bytes, per device."""

    parameters: int
    devices: int
    batch_size: int
    batch_per_device: int
    steps: int
    dataset_size: int | None
    dataset_size_source: str
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    ema_bytes: int
    ema_copies: int
    activation_bytes: int | None
    activation_factor: float
    activation_formula: str
    memory_gib: float

    @property
    def images(self) -> int:
        return self.steps * self.batch_size

    @property
    def epochs(self) -> float | None:
        return None if not self.dataset_size else self.images / self.dataset_size

    @property
    def total_bytes(self) -> int:
        return (self.weight_bytes + self.gradient_bytes + self.optimizer_bytes + self.ema_bytes
                + (self.activation_bytes or 0))

    @property
    def over_memory(self) -> bool:
        return self.total_bytes > self.memory_gib * GIB


def data_spec_and_size(config: Config, registry, dataset_size: int | None) -> tuple[DataSpec, int | None, str]:
    """``(spec, training examples or None, where that number came from)``.

    The spec comes from ``data.shape``/``data.num_classes`` when the data section states both;
    else from the HDF5 file when it exists, else from the data set itself (which, for a file
    with a ``source``, builds it, as a run would). The size is ``dataset_size`` when given,
    else the file's training examples, else ImageNet's 1,281,167 for a file that is missing;
    None for generated data (toy sets, ``synthetic``), which have no epochs."""
    options = config.data.options
    shape, classes = getattr(options, "shape", None), getattr(options, "num_classes", None)
    path = getattr(options, "path", None)
    spec = DataSpec(tuple(shape), classes) if shape is not None and classes is not None else None
    size, source = None, "generated data: no epochs"
    if path is not None and Path(path).exists():
        from toolkit.plugins.hdf5.format import inspect_file

        from toolkit.plugins.hdf5.dataset import AUTO_HOLDOUT_FRACTION, AUTO_HOLDOUT_MAX

        info = inspect_file(path)
        spec = spec or DataSpec(tuple(info.shape), info.num_classes)
        size, held = info.train.count, 0
        if info.test is None:  # the dataset holds out part of 'x' (plugins/hdf5/dataset.py)
            held = getattr(options, "holdout", 0) or min(max(1, int(size * AUTO_HOLDOUT_FRACTION)), AUTO_HOLDOUT_MAX)
        size, source = size - held, f"training examples of {path}"
    elif path is not None and getattr(options, "source", None):
        source = f"{path} is missing; it is built from {options.source} on first use"
    elif path is not None:
        size, source = IMAGENET_TRAIN, f"{path} is missing: ImageNet-1k's training set (--dataset-size to change)"
    if spec is None:
        backend = registry.backends_of(registry.get("dataset", config.data.name))[0]
        dataset = registry.load("dataset", config.data.name, backend)(options)
        spec = dataset.spec
        if size is None and hasattr(dataset, "num_train"):
            size, source = dataset.num_train, f"training examples of {path}"
    if dataset_size is not None:
        size, source = dataset_size, "--dataset-size"
    return spec, size, source


def count_parameters(config: Config, registry, spec: DataSpec) -> int:
    """Parameters of the config's backbone, from shapes alone (nothing allocated)."""
    options, spec = config.model.options, config.network_spec(spec)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and registry.get("backbone", config.model.name).supports("torch"):
        cls = registry.load("backbone", config.model.name, "torch")
        with torch.device("meta"):
            return sum(p.numel() for p in cls(options, spec).parameters())
    import equinox as eqx
    import jax

    cls = registry.load("backbone", config.model.name, "jax")
    shapes = eqx.filter_eval_shape(cls, options, spec, key=jax.random.PRNGKey(0))
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes) if hasattr(leaf, "shape"))


def activation_elements(config: Config, spec: DataSpec) -> tuple[int | None, str]:
    """``(A, formula)``: activation elements one example keeps for backward (module docstring)."""
    if config.model.name != "dit":
        return None, f"not modelled for backbone {config.model.name!r}"
    o = config.model.options
    depth, width, heads = o.resolved_depth, o.resolved_width, o.resolved_heads
    tokens = (spec.shape[1] // o.patch) * (spec.shape[2] // o.patch)
    per_token = int((12 + 2 * o.mlp_ratio) * width) + 2 * heads * tokens
    formula = (f"L n ((12 + 2 m) w + 2 h n) = {depth} x {tokens} x ((12 + 2 x {o.mlp_ratio:g}) x {width} "
               f"+ 2 x {heads} x {tokens})")
    return depth * tokens * per_token, formula


def objective_factor(config: Config) -> float:
    """F of the module docstring."""
    if config.objective.name == "meanflow":
        return 1.0 + config.objective.options.ratio
    return 1.0


def make_plan(config: Config, registry, devices: int = 1, memory_gib: float = DEFAULT_MEMORY_GIB,
              dataset_size: int | None = None) -> Plan:
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    spec, size, source = data_spec_and_size(config, registry, dataset_size)
    parameters = count_parameters(config, registry, spec)
    weight = {"float32": 4, "float64": 8}[config.run.dtype]
    activation = 2 if config.run.mixed_precision == "bf16" else weight
    per_device = -(-config.run.batch_size // devices)
    elements, formula = activation_elements(config, spec)
    factor = objective_factor(config)
    copies = len(config.ema.decays)
    return Plan(parameters=parameters, devices=devices, batch_size=config.run.batch_size, batch_per_device=per_device,
                steps=config.run.steps, dataset_size=size, dataset_size_source=source,
                weight_bytes=parameters * weight, gradient_bytes=parameters * weight,
                optimizer_bytes=2 * parameters * weight, ema_bytes=copies * parameters * weight, ema_copies=copies,
                activation_bytes=None if elements is None else int(per_device * elements * factor * activation),
                activation_factor=factor, activation_formula=formula, memory_gib=memory_gib)


def _gib(n: int) -> str:
    return f"{n / GIB:8.2f} GiB" if n >= GIB // 10 else f"{n / 1024**2:8.2f} MiB"


def format_plan(plan: Plan, config: Config) -> str:
    epochs = ("epochs unknown" if plan.epochs is None else
              f"{plan.epochs:.2f} epochs of {plan.dataset_size:,}")
    activations = ("unknown (not modelled for this backbone)" if plan.activation_bytes is None
                   else f"{_gib(plan.activation_bytes)}   (estimate)")
    lines = [
        f"config:       {config.run.name}: {config.objective.name} with {config.model.name}, dtype {config.run.dtype}, "
        f"mixed precision {config.run.mixed_precision}",
        f"parameters:   {plan.parameters:,} ({plan.parameters / 1e6:.1f}M)",
        f"devices:      {plan.devices}, batch {plan.batch_size} = {plan.batch_per_device} per device",
        f"training:     {plan.steps:,} steps x batch {plan.batch_size} = {plan.images:,} images = {epochs} "
        f"({plan.dataset_size_source})",
        "memory per device:",
        f"  weights      {_gib(plan.weight_bytes)}",
        f"  gradients    {_gib(plan.gradient_bytes)}",
        f"  AdamW        {_gib(plan.optimizer_bytes)}   (2 moments)",
        f"  EMA          {_gib(plan.ema_bytes)}   ({plan.ema_copies} {'copy' if plan.ema_copies == 1 else 'copies'})",
        f"  activations  {activations}",
    ]
    if plan.activation_bytes is not None:
        lines.append(f"               = {plan.batch_per_device} examples x A x F x bytes, A = {plan.activation_formula}, "
                     f"F = {plan.activation_factor:g} ({config.objective.name}); see toolkit/plan.py")
    lines.append(f"  total        {_gib(plan.total_bytes)}   of {plan.memory_gib:g} GiB"
                 + ("" if plan.activation_bytes is not None else " (without activations)"))
    if plan.over_memory:
        lines.append(f"WARNING: the estimated {plan.total_bytes / GIB:.1f} GiB per device exceeds --memory "
                     f"{plan.memory_gib:g} GiB; use more devices (--devices), a smaller run.batch_size, or "
                     f"run.mixed_precision=bf16")
    return "\n".join(lines)


def plan_summary(plan: Plan) -> dict[str, Any]:
    """The plan as plain data (``toolkit plan --json``)."""
    return {**attrs.asdict(plan), "images": plan.images, "epochs": plan.epochs, "total_bytes": plan.total_bytes,
            "over_memory": plan.over_memory}
