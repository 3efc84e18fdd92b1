"""``toolkit convert``: a checkpoint of one backend rewritten for another.

The arrays (weights, their moving averages and AdamW state) keep their names, shared by every backend, and take the
target backend's shapes;
the target network is built from the checkpoint's own config and data spec, so a checkpoint
of an architecture the target cannot build, or with missing or mis-sized weights, is an
error naming the file. Where the source backend is installed too, both networks are run on
the same inputs and their outputs compared (``toolkit parity`` tolerances).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.checkpoint import checkpoint_metadata, engine_arrays, load_checkpoint, non_finite_array, save_checkpoint
from toolkit.errors import BackendUnavailableError, ToolkitError
from toolkit.evaluation import checkpoint_engine
from toolkit.parity import compare

#: relative tolerance of the whole-network check: a deep float32 network accumulates rounding
#: beyond the per-operation 1e-5 of ``toolkit parity``.
CHECK_TOLERANCE = {"float64": 1e-10, "float32": 1e-4}


def convert_checkpoint(path: str | Path, target: str, registry, out: str | Path | None = None,
                       check: bool = True) -> dict:
    """Write ``path`` for backend ``target`` (default output ``<stem>.<target>.safetensors``).
    Returns what was done: ``out``, ``source``, ``arrays`` and, if checked, ``max_rel``."""
    path = Path(path)
    arrays, metadata = load_checkpoint(path)
    source = metadata.get("backend")
    out = Path(out) if out else path.with_name(f"{path.stem}.{target}.safetensors")
    if out.resolve() == path.resolve():
        raise ToolkitError(f"{out}: the output would overwrite the input checkpoint; give another --out")
    engine, config, spec = checkpoint_engine(path, arrays, metadata, target, registry)
    converted = engine_arrays(engine, config)
    dropped = sorted(set(arrays) - set(converted))
    report = {"out": str(out), "source": source, "target": target, "arrays": len(converted), "dropped": dropped}
    if check and source and source != target:
        try:
            reference, _, _ = checkpoint_engine(path, arrays, metadata, source, registry)
        except BackendUnavailableError as error:
            report["check"] = f"skipped: {error}"
        else:
            if (name := non_finite_array(arrays)) is not None:  # both networks give NaN: no parity to check
                raise ToolkitError(f"{path}: {name}: the weights are not finite (NaN or infinite values); the "
                                   f"checkpoint is of a diverged run (--no-check converts it as it is)")
            rng = np.random.default_rng(0)
            n = 4
            x = rng.standard_normal((n, *spec.shape))
            t = rng.random(n)
            y = rng.integers(0, spec.num_classes, n) if spec.conditional else None
            report["max_rel"] = compare(*(e.predict(x, t, 0.5 * t, y) for e in (reference, engine)))[1]
            if not report["max_rel"] <= CHECK_TOLERANCE[config.run.dtype]:
                raise ToolkitError(f"{path}: the {target} network differs from the {source} network on the same "
                                   f"weights (max relative error {report['max_rel']:.2e}): a parity bug, see "
                                   f"`toolkit parity`")
    save_checkpoint(out, converted, {**metadata, **checkpoint_metadata(metadata.get("step", 0), target, config, spec)})
    return report
