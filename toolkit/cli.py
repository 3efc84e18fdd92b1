"""The ``toolkit`` command line.

Exit codes: 0 success, 2 bad usage or bad config, 1 runtime failure. Errors are one
line on stderr; ``--debug`` (or ``TOOLKIT_DEBUG=1``) shows the traceback instead.
Plugins add sub-commands through the ``register_commands`` hook.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import sys
import threading
from pathlib import Path

import click
import numpy as np

from toolkit.errors import ToolkitError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="meanflow-toolkit")
def cli(debug):
    """Few-step generative modelling: flow matching and the MeanFlow family, in PyTorch and JAX."""


def _registry():
    from toolkit.registry import get_registry

    return get_registry()


def _warn_problems(registry) -> None:
    for problem in registry.problems + registry.clashes():
        click.echo(f"toolkit: warning: {problem}", err=True)


@cli.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--backend", default="torch", show_default=True, help="torch, jax, or any backend plugin.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set optimizer.lr=1e-3 (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory [default: run.out_dir, else runs/<run.name>-<backend>].")
@click.option("--overwrite", is_flag=True, help="Replace a previous run in the run directory.")
@click.option("--resume", is_flag=True, help="Continue the run in the run directory from its newest checkpoint.")
@click.option("--progress/--no-progress", default=None, help="Show a progress bar [default: logging.progress].")
@click.option("--smoke", is_flag=True, help="A few steps of the config's architecture and objective on random data of "
                                           "the data's shape (no data needed), a batch of 4, no metric.")
def run(config_path, backend, overrides, out_dir, overwrite, resume, progress, smoke):
    """Train the run described by CONFIG, then sample and evaluate it."""
    from toolkit.config import load_config
    from toolkit.train import default_out_dir, previous_run, smoke_config, train

    if resume and overwrite:
        raise click.UsageError("--resume continues the run that --overwrite would delete; give one of them")
    registry = _registry()
    _warn_problems(registry)
    registry.get("backend", backend)
    config = load_config(config_path, overrides, registry, backend=backend)
    if smoke:
        config = smoke_config(config, registry, backend)
    out_dir = Path(out_dir) if out_dir else default_out_dir(config, backend)
    if not resume:
        previous_run(out_dir, overwrite)  # refused before anything starts; removed once the run does (train)
    click.echo(f"{'resuming' if resume else 'training'} {config.run.name!r}: {config.objective.name} on "
               f"{config.data.name} with {config.model.name}, {config.run.steps} steps, backend {backend} -> "
               f"{out_dir}", err=True)
    results = train(config, backend, registry, out_dir=out_dir, progress=progress, overwrite=overwrite, resume=resume)
    if results is not None:  # None: not the main process of a multi-process run
        click.echo(json.dumps(results))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON list of objects (kind, name, plugin, version, backends, summary).")
def plugins(as_json):
    """List every registered component and the plugin that provides it."""
    registry = _registry()
    _warn_problems(registry)
    rows = [{"kind": c.kind, "name": c.name, "plugin": c.plugin.distribution or c.plugin.name,
             "version": c.plugin.version, "backends": registry.backends_of(c), "summary": c.summary}
            for c in registry.components()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = [("KIND", "NAME", "PLUGIN", "VERSION", "BACKENDS", "SUMMARY")] + [
        (r["kind"], r["name"], r["plugin"], r["version"], ", ".join(r["backends"]), r["summary"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@cli.command()
@click.argument("config_path", metavar="[CONFIG]", required=False, type=click.Path(dir_okay=False))
@click.option("--all", "every", is_flag=True, help="Every registered component that claims both backends, "
                                                   "on its registered examples.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True)
@click.option("--backends", default="torch,jax", show_default=True, help="REFERENCE,OTHER")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list of objects (component, quantity, max_abs, "
                                                     "max_rel, tol, ok).")
def parity(config_path, every, dtype, backends, overrides, as_json):
    """Check that two backends give the same numbers for the components of CONFIG (or --all).

    Exits 1 when a quantity differs beyond its tolerance: 1e-10 relative in float64; in float32,
    more than both backends' own float32 rounding errors (measured against float64) plus one
    float32 epsilon of the quantity's scale."""
    from toolkit.config import load_config
    from toolkit.parity import format_table, run_parity, run_parity_all

    if (config_path is None) == (not every):
        raise click.UsageError("give a CONFIG or --all (not both)")
    if every and overrides:
        raise click.UsageError("--set applies to a CONFIG, not to --all")
    registry = _registry()
    _warn_problems(registry)
    pair = tuple(b.strip() for b in backends.split(","))
    if len(pair) != 2:
        raise click.BadParameter(f"expected two backends REFERENCE,OTHER, got {backends!r}", param_hint="--backends")
    for backend in pair:
        registry.get("backend", backend)
    if every:
        rows = run_parity_all(registry, pair, dtype)
    else:
        rows = run_parity(load_config(config_path, overrides, registry), registry, pair, dtype)
    if as_json:
        click.echo(json.dumps([row.as_dict() for row in rows], indent=2))
    else:
        click.echo(format_table(rows))
    failed = [row for row in rows if not row.ok]
    if failed:
        click.echo(f"toolkit: parity failed for {len(failed)} of {len(rows)} quantities, first: "
                   f"{failed[0].component}: {failed[0].quantity}", err=True)
        return 1
    components = {row.component.split(" [")[0] for row in rows}
    click.echo(f"toolkit: parity ok: {len(rows)} quantities of {len(components)} components "
               f"({len({row.component for row in rows})} examples) within tolerance ({dtype})", err=True)
    return 0


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--to", "target", required=True, help="The backend to convert to: torch, jax, or any backend plugin.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Output file [default: <checkpoint stem>.<backend>.safetensors beside it].")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Compare both networks on the same inputs when the source backend is installed.")
def convert(checkpoint, target, out, check):
    """Rewrite CHECKPOINT (safetensors, named arrays) for another backend."""
    from toolkit.convert import convert_checkpoint

    registry = _registry()
    _warn_problems(registry)
    registry.get("backend", target)
    report = convert_checkpoint(checkpoint, target, registry, out, check)
    checked = (f", outputs agree to {report['max_rel']:.1e} relative" if "max_rel" in report
               else f" ({report['check']})" if "check" in report else "")
    dropped = f"; not carried over: {', '.join(report['dropped'])}" if report["dropped"] else ""
    click.echo(f"{checkpoint} ({report['source']}) -> {report['out']} ({target}): {report['arrays']} arrays"
               f"{checked}{dropped}")


def _checkpoint_engine(checkpoint, backend, overrides=()):
    from toolkit.checkpoint import load_checkpoint
    from toolkit.evaluation import checkpoint_engine, resolve_checkpoint

    registry = _registry()
    _warn_problems(registry)
    registry.get("backend", backend)
    path = resolve_checkpoint(checkpoint)
    arrays, metadata = load_checkpoint(path)
    return (registry, path, metadata, *checkpoint_engine(path, arrays, metadata, backend, registry, overrides))


@cli.command()
@click.argument("checkpoint", type=click.Path(exists=True))
@click.option("--backend", default="torch", show_default=True, help="Sample with this backend (any checkpoint's).")
@click.option("--nfe", type=click.IntRange(min=1), default=None, help="Network evaluations [default: the run's sampler].")
@click.option("--n", "count", type=click.IntRange(min=1), default=100, show_default=True, help="Number of samples.")
@click.option("--class", "label", type=click.IntRange(min=0), default=None,
              help="Sample this class only [default: the classes in turn, a row each].")
@click.option("--guidance", type=float, default=None,
              help="Guidance scale, for samplers that take one (euler, heun, a plugin's such as imf).")
@click.option("--weights", default="ema", show_default=True,
              help="ema (the first EMA decay of the run), model (raw weights), or an EMA decay such as 0.999.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default="samples.png", show_default=True,
              help="The picture (PNG); the samples themselves go beside it as .npy.")
@click.option("--vae", "vae_path", type=click.Path(), default=None,
              help="Decode latent samples with this diffusers VAE folder [default: the one the run's hdf5 data "
                   "file records, if any].")
def sample(checkpoint, backend, nfe, count, label, guidance, weights, seed, out, vae_path):
    """Draw samples from CHECKPOINT (a checkpoint file or a run directory) into a picture."""
    from toolkit.evaluation import draw_samples, make_sampler, samples_picture, sampling_weights
    from toolkit.files import atomic_write
    from toolkit.plugins.hdf5.latents import decode_samples

    registry, path, metadata, engine, config, spec = _checkpoint_engine(checkpoint, backend)
    sampler = make_sampler(config, backend, registry, nfe=nfe, guidance=guidance)
    with sampling_weights(engine, config, weights) as description:
        samples = draw_samples(engine, sampler, spec, count, seed, label)
    samples, decoded = decode_samples(samples, config, vae_path)  # latents -> images when a VAE is known
    out = Path(out)
    title = f"{config.run.name}, step {metadata.get('step')}, {sampler.nfe} NFE, {description} weights"
    samples_picture(samples, out, title)
    with atomic_write(out.with_suffix(".npy")) as handle:
        np.save(handle, samples)
    click.echo(f"{path}: {count} samples at {sampler.nfe} NFE with {description} weights"
               f"{', ' + decoded if decoded else ''} -> {out}")


@cli.command("eval")
@click.argument("checkpoint", type=click.Path(exists=True))
@click.option("--metric", default=None, help="A registered metric [default: the run's eval.metric].")
@click.option("--backend", default="torch", show_default=True)
@click.option("--nfe", type=click.IntRange(min=1), default=None, help="Network evaluations [default: the run's sampler].")
@click.option("--n", "count", type=click.IntRange(min=1), default=None, help="Samples [default: eval.num_samples].")
@click.option("--weights", default=None, help="ema, model, or an EMA decay [default: eval.weights].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override the run's config, e.g. --set eval.metric.epochs=5 (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
def evaluate(checkpoint, metric, backend, nfe, count, weights, overrides, as_json):
    """Measure samples of CHECKPOINT (a file or a run directory) against held-out data."""
    from toolkit.checkpoint import stored_step
    from toolkit.evaluation import evaluate as measure
    from toolkit.evaluation import evaluate_nfes, prepared_metric

    settings = [*([f"eval.metric={{name: {metric}}}"] if metric else []),
                *([f"eval.num_samples={count}"] if count else []),
                *([f"eval.weights={weights}"] if weights else []), *overrides]
    registry, path, metadata, engine, config, spec = _checkpoint_engine(checkpoint, backend, settings)
    if config.eval.metric is None:
        raise click.UsageError("the run has no eval.metric; name one with --metric (see `toolkit plugins`)")
    dataset = registry.load("dataset", config.data.name, backend)(config.data.options)
    step, metric = stored_step(path, metadata, default=0), prepared_metric(config, backend, registry, dataset)
    results, samples = measure(config, backend, registry, engine, dataset, step, nfe=nfe, metric=metric)
    if nfe is None:  # as the run measured: at each of eval.nfe too
        results.update(evaluate_nfes(config, backend, registry, engine, dataset, step, metric,
                                     known={results["nfe"]: results[config.eval.metric.name]}))
    _require_finite(path, config.eval.metric.name, results, samples)
    if as_json:
        click.echo(json.dumps(results))
        return
    name = config.eval.metric.name
    anchors = (f"; noise {results[f'{name}_of_noise']:.4g}, training data {results[f'{name}_of_training_data']:.4g}"
               if config.eval.anchors else "")
    click.echo(f"{path}: {name} {results[name]:.4g} ({results['nfe']} NFE, {results['weights']} weights, "
               f"{config.eval.num_samples} samples{anchors})")


def _require_finite(path: Path, name: str, results: dict, samples: np.ndarray) -> None:
    """A NaN metric is a failure, not a number: say whether the samples or the metric went wrong."""
    bad = [key for key, value in results.items() if key.startswith(name) and not math.isfinite(value)]
    if not bad:
        return
    cause = ("the samples are not finite (NaN or infinite values): the weights, or the sampler at this NFE, "
             "diverged" if not np.isfinite(samples).all() else "the metric is not finite on finite samples")
    raise ToolkitError(f"{path}: {bad[0]} is {results[bad[0]]}: {cause}")


@cli.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value.")
@click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel devices sharing run.batch_size.")
@click.option("--memory", "memory_gib", type=click.FloatRange(min=0, min_open=True), default=80.0,
              show_default=True, help="Memory of one device in GiB (80: an H100); above it, a WARNING.")
@click.option("--dataset-size", type=click.IntRange(min=1), default=None,
              help="Training examples, for epochs [default: from the data file, else ImageNet's 1,281,167].")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as one JSON object.")
def plan(config_path, overrides, devices, memory_gib, dataset_size, as_json):
    """Parameters, memory per device and training length of CONFIG, without running it."""
    from toolkit.config import load_config
    from toolkit.plan import format_plan, make_plan, plan_summary

    registry = _registry()
    _warn_problems(registry)
    config = load_config(config_path, overrides, registry)
    result = make_plan(config, registry, devices=devices, memory_gib=memory_gib, dataset_size=dataset_size)
    click.echo(json.dumps(plan_summary(result)) if as_json else format_plan(result, config))


@cli.command()
@click.argument("study_path", metavar="STUDY", type=click.Path(dir_okay=False))
@click.option("--backend", default="torch", show_default=True, help="torch, jax, or any backend plugin.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where the cells and the report go [default: runs/studies/<name>-<backend>].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a run config value in every cell, after the study's own (repeatable).")
@click.option("--seeds", default=None, metavar="0,1,...", help="Run these seeds instead of the study's.")
@click.option("--variants", default=None, metavar="A,B,...", help="Only these variants [default: all].")
@click.option("--rerun-changed", is_flag=True, help="Train again the cells that were run with another config.")
@click.option("--report-only", is_flag=True, help="Train nothing; rebuild the report from the cells on disk.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="A bar over the whole grid (a line per cell when not on a terminal).")
def study(study_path, backend, out_dir, overrides, seeds, variants, rerun_changed, report_only, progress):
    """Run the grid of STUDY (variants x training lengths x seeds), then write its report.

    Finished cells are not run again and interrupted ones resume, so the same command
    continues a stopped study. The report (results.csv, results.md, summary.json and PNG
    pictures) goes beside the cells. Exits 1 when a cell failed (the others still run)."""
    import attrs

    from toolkit.study import load_study, run_cells, study_cells, write_report

    registry = _registry()
    _warn_problems(registry)
    registry.get("backend", backend)
    spec = load_study(study_path, registry)
    if seeds is not None:
        try:
            spec = attrs.evolve(spec, seeds=tuple(int(s) for s in seeds.split(",")))
        except ValueError:
            raise click.BadParameter(f"expected seeds like 0,1,2, got {seeds!r}", param_hint="--seeds") from None
    chosen = tuple(v.strip() for v in variants.split(",")) if variants else ()
    out = Path(out_dir) if out_dir else Path("runs") / "studies" / f"{spec.name}-{backend}"
    cells = study_cells(spec, study_path, backend, registry, out, overrides, chosen)
    outcomes = [] if report_only else run_cells(cells, backend, registry, progress, rerun_changed)
    command = " ".join(["toolkit study", study_path, "--backend", backend, *(f"--set {o}" for o in overrides),
                        *(["--seeds", seeds] if seeds else []), *(["--variants", variants] if variants else [])])
    report = write_report(spec, cells, out, backend, registry, command)
    failed = [o for o in outcomes if o.status == "failed"]
    for path in report["results"] + report["pictures"]:
        click.echo(str(path))
    if failed:
        click.echo(f"toolkit: {len(failed)} of {len(cells)} cells failed, first: {failed[0].cell.label}: "
                   f"{failed[0].error} (run the same command to try them again)", err=True)
        return 1
    return 0


@cli.group()
def plugin():
    """Plugin packages."""


@plugin.command("new")
@click.argument("name")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="The folder to write [default: ./toolkit-NAME].")
def plugin_new(name, out):
    """A ready package registering the objective NAME in both backends, with its tests."""
    from toolkit.template import render_plugin

    out = Path(out or f"toolkit-{name.replace('_', '-')}")
    files = render_plugin(name, out)
    click.echo(f"{out}: {len(files)} files. Next:\n  pip install -e {out}\n  toolkit plugins   # lists {name}\n"
               f"  python -m pytest {out}/tests")


@cli.group()
def config():
    """Inspect run configs."""


@config.command("show")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value.")
def config_show(config_path, overrides):
    """Print CONFIG resolved: defaults filled in, overrides applied, everything validated."""
    from toolkit.config import dump_yaml, load_config

    registry = _registry()
    _warn_problems(registry)
    click.echo(dump_yaml(load_config(config_path, overrides, registry)), nl=False)


class Terminated(BaseException):
    """SIGTERM, raised where the process is, so that it stops as cleanly as on Ctrl-C (temporary
    files removed, the last complete checkpoint kept). A BaseException, as KeyboardInterrupt: no
    ``except Exception`` (a study's failed cell) swallows it."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_stops_cleanly():
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _with_plugin_commands() -> click.Group:
    """``cli`` with the plugins' commands, on a copy: ``cli`` keeps the built-in commands only, so that
    a later ``main()`` in the same process (tests, notebooks) does not find its names taken."""
    group = copy.copy(cli)
    group.commands = dict(cli.commands)
    _registry().add_commands(group)
    return group


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("TOOLKIT_DEBUG") == "1"
    try:
        with _sigterm_stops_cleanly():
            result = _with_plugin_commands().main(args=argv, prog_name="toolkit", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except Terminated:
        click.echo("toolkit: terminated (SIGTERM)", err=True)
        return 128 + signal.SIGTERM
    except click.exceptions.Abort as error:
        if isinstance(error.__cause__, KeyboardInterrupt):  # click turns Ctrl-C into Abort
            click.echo("toolkit: interrupted", err=True)
            return 128 + signal.SIGINT
        click.echo("toolkit: aborted", err=True)
        return 1
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except ToolkitError as error:
        if debug:
            raise
        click.echo(f"toolkit: error: {error}", err=True)
        return error.exit_code
    except KeyboardInterrupt:
        click.echo("toolkit: interrupted", err=True)
        return 128 + signal.SIGINT
    except Exception as error:
        if debug:
            raise
        if isinstance(error, OSError) and error.filename is not None:
            # a full disk, a read-only or forbidden folder: the file says where, the reason what
            click.echo(f"toolkit: error: {error.filename}: {error.strerror}", err=True)
        else:
            click.echo(f"toolkit: error: {type(error).__name__}: {error} (run with --debug for the traceback)",
                       err=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
