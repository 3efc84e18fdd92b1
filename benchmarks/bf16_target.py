"""How far a bfloat16-autocast MeanFlow target is from float64, against a float32 one (a
measurement, not a test): why the torch backend takes the target's JVP outside autocast.

On a perturbed DiT (so no layer is at its zero initialisation) and a batch of (z, t, r, v), it
prints the relative error ``||a - ref|| / ||ref||`` against float64 of

* the prediction u under ``torch.autocast(bfloat16)`` (what ``mixed_precision: bf16`` computes),
* the target ``v - (t - r) du/dt`` with the JVP under autocast (the toolkit before this change),
* the target with the JVP in float32 (the toolkit now, and the authors' PyTorch code).

    python benchmarks/bf16_target.py [--width 128 --depth 4 --batch 32 --size 16]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from toolkit.backends.torch.jvp import jvp
from toolkit.interfaces import DataSpec
from toolkit.plugins.dit import DiTOptions
from toolkit.plugins.dit.torch import DiT


def relative(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).norm() / ref.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    spec = DataSpec((4, args.size, args.size))
    model = DiT(DiTOptions(depth=args.depth, width=args.width, heads=4), spec)
    with torch.no_grad():  # off the zero initialisation: adaLN-Zero would make every output 0
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    rng = np.random.default_rng(args.seed)
    z, v = (torch.from_numpy(rng.standard_normal((args.batch, *spec.shape))) for _ in range(2))
    t = torch.from_numpy(rng.uniform(0.05, 1.0, args.batch))
    r = t * torch.from_numpy(rng.random(args.batch))

    def target(network, dtype, autocast: bool):
        inputs = [a.to(dtype) for a in (z, t, r, v)]
        fn = lambda z_, t_, r_: network(z_, t_, r_)  # noqa: E731
        tangents = (inputs[3], torch.ones_like(inputs[1]), torch.zeros_like(inputs[2]))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            u, dudt = jvp(fn, tuple(inputs[:3]), tangents)
        gap = (inputs[1] - inputs[2]).view(-1, 1, 1, 1)
        return u, inputs[3] - gap * dudt.to(dtype)

    u64, target64 = target(model.double(), torch.float64, False)
    model = model.float()
    u_bf16, target_bf16 = target(model, torch.float32, True)
    _, target_f32 = target(model, torch.float32, False)
    print(f"DiT width {args.width} depth {args.depth}, batch {args.batch} of {tuple(spec.shape)}; "
          "relative error against float64:")
    print(f"  prediction u, bf16 autocast:            {relative(u_bf16, u64):.3e}")
    print(f"  target, JVP under bf16 autocast:        {relative(target_bf16, target64):.3e}")
    print(f"  target, JVP in float32 (the toolkit):   {relative(target_f32, target64):.3e}")


if __name__ == "__main__":
    main()
