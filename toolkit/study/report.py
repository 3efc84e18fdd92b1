"""A study's results from its cells' directories: a table (CSV per cell, Markdown per variant,
mean and spread over seeds) and pictures (the metric against the step, against the NFE, and
samples side by side).

Everything is read back from disk (``metrics.json``, the TensorBoard events, the last
checkpoint), so a report can be rebuilt at any time (``toolkit study --report-only``).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import attrs
import numpy as np

from toolkit.errors import ToolkitError
from toolkit.evaluation import evaluation_nfes, nfe_key, sampler_nfe
from toolkit.events import read_scalars
from toolkit.files import write_json
from toolkit.study.grid import Cell, Study
from toolkit.study.runner import FAILED, cell_metrics


#: samples of each class in a study's side-by-side picture
SAMPLES_PER_CLASS = 5


@attrs.frozen
class CellResult:
    cell: Cell
    status: str  # "finished", "failed" or "missing" (not run yet)
    metrics: dict = attrs.field(factory=dict)
    #: the metric against the step, by NFE (measured every ``eval.every`` steps and at the end)
    curves: dict = attrs.field(factory=dict)
    error: str | None = None


@attrs.frozen
class Spread:
    """Mean, sample standard deviation (ddof 1; 0 for one seed) and count over seeds."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        values = [v for v in values if v is not None and math.isfinite(v)]
        if not values:
            return None
        return cls(float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values))

    def __str__(self) -> str:
        return f"{self.mean:.3g} ± {self.std:.2g}" if self.n > 1 else f"{self.mean:.3g}"

    def times(self, factor: float) -> Spread:
        """The same spread in other units (seconds -> milliseconds)."""
        return Spread(self.mean * factor, self.std * factor, self.n)


@attrs.frozen
class Group:
    """The cells of one variant at one training length, summarised over seeds."""

    variant: str
    steps: int
    results: tuple[CellResult, ...]
    nfes: tuple[int, ...]
    #: the metric at each NFE
    metric: dict
    seconds_per_step: Spread | None
    #: the first measured step at which the mean over seeds is as good as the reference's final
    #: mean, or within ``Study.tolerance`` of it (None: never, or no reference)
    reached_at: int | None = None

    @property
    def finished(self) -> list[CellResult]:
        return [r for r in self.results if r.status == "finished"]


def collect(cells: Sequence[Cell]) -> list[CellResult]:
    results = []
    for cell in cells:
        name = cell.config.eval.metric.name
        metrics_path = cell.out_dir / "metrics.json"
        if (cell.out_dir / FAILED).is_file():
            results.append(CellResult(cell, "failed", error=(cell.out_dir / FAILED).read_text().strip()))
        elif metrics_path.is_file():
            try:
                metrics = cell_metrics(cell)
            except ToolkitError as error:
                results.append(CellResult(cell, "failed", error=str(error)))
                continue
            scalars = read_scalars(cell.out_dir)
            curves = {}
            for nfe in evaluation_nfes(cell.config):
                points = dict(scalars.get(f"eval/{nfe_key(name, nfe)}", []))
                if nfe_key(name, nfe) in metrics:  # the final value at full precision
                    points[cell.steps] = metrics[nfe_key(name, nfe)]
                curves[nfe] = sorted(points.items())
            results.append(CellResult(cell, "finished", metrics, curves))
        else:
            results.append(CellResult(cell, "missing"))
    return results


def summarise(study: Study, results: Sequence[CellResult], higher_is_better: bool) -> list[Group]:
    """One :class:`Group` per variant and training length, in the study's order."""
    keys = list(dict.fromkeys((r.cell.variant, r.cell.steps) for r in results))
    groups = []
    for variant, steps in keys:
        members = tuple(r for r in results if (r.cell.variant, r.cell.steps) == (variant, steps))
        name = members[0].cell.config.eval.metric.name
        nfes = evaluation_nfes(members[0].cell.config)
        done = [r for r in members if r.status == "finished"]
        metric = {nfe: Spread.of([r.metrics.get(nfe_key(name, nfe)) for r in done]) for nfe in nfes}
        speed = Spread.of([r.metrics.get("seconds_per_step") for r in done])
        groups.append(Group(variant, steps, members, nfes, metric, speed))
    if study.reference is not None:
        groups = _with_reach(study, groups, higher_is_better)
    return groups


def primary_nfe(group: Group) -> int:
    """The NFE a variant is compared at: its sampler's."""
    return sampler_nfe(group.results[0].cell.config) or group.nfes[0]


def mean_curve(group: Group, nfe: int) -> list[tuple[int, float]]:
    """The mean over finished seeds of the metric at each step every seed measured."""
    curves = [dict(r.curves.get(nfe, [])) for r in group.finished]
    if not curves:
        return []
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return [(step, float(np.mean([c[step] for c in curves]))) for step in steps]


def _with_reach(study: Study, groups: list[Group], higher_is_better: bool) -> list[Group]:
    references = [g for g in groups if g.variant == study.reference]
    out = []
    for group in groups:
        reference = next((r for r in references if r.steps == group.steps), references[0] if references else None)
        target = reference.metric.get(primary_nfe(reference)) if reference else None
        reached = None
        if target is not None:
            slack = study.tolerance * abs(target.mean)
            for step, value in mean_curve(group, primary_nfe(reference)):
                if (value >= target.mean - slack) if higher_is_better else (value <= target.mean + slack):
                    reached = step
                    break
        out.append(attrs.evolve(group, reached_at=reached))
    return out


# -- tables ------------------------------------------------------------------------------------


def write_csv(results: Sequence[CellResult], path: Path) -> None:
    """One row per cell: its identity, status and every number it measured."""
    name = results[0].cell.config.eval.metric.name
    nfes = sorted({nfe for r in results for nfe in evaluation_nfes(r.cell.config)})
    columns = (["variant", "steps", "seed", "status"] + [nfe_key(name, nfe) for nfe in nfes]
               + [f"{name}_of_noise", f"{name}_of_training_data", "seconds_per_step", "loss", "run_dir", "error"])
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for r in results:
            row = {"variant": r.cell.variant, "steps": r.cell.steps, "seed": r.cell.seed, "status": r.status,
                   "run_dir": str(r.cell.out_dir), "error": r.error or "", **r.metrics}
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])


def markdown_table(study: Study, groups: Sequence[Group], metric_name: str) -> str:
    nfes = sorted({nfe for g in groups for nfe in g.nfes})
    lengths = len({g.steps for g in groups}) > 1
    header = (["variant"] + (["steps"] if lengths else []) + ["seeds"]
              + [f"{metric_name}, {nfe} NFE" for nfe in nfes] + ["ms / step"])
    if study.reference is not None:
        within = f" (within {study.tolerance:.0%})" if study.tolerance else ""
        header += [f"steps to reach {study.reference}'s final {metric_name}{within}"]
    rows = [header, ["---"] * len(header)]
    for g in groups:
        speed = str(g.seconds_per_step.times(1e3)) if g.seconds_per_step else ""
        row = ([g.variant] + ([str(g.steps)] if lengths else []) + [f"{len(g.finished)}/{len(g.results)}"]
               + [str(g.metric[nfe]) if g.metric.get(nfe) else "" for nfe in nfes] + [speed])
        if study.reference is not None:
            row.append("not reached" if g.reached_at is None and g.finished else
                       "" if g.reached_at is None else f"{g.reached_at} of {g.steps}")
        rows.append(row)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in rows)


def write_markdown(study: Study, groups: Sequence[Group], path: Path, metric_name: str, header: str,
                   pictures: Sequence[str], notes: Sequence[str]) -> None:
    anchors = {key: Spread.of([r.metrics.get(f"{metric_name}_{key}") for g in groups for r in g.finished])
               for key in ("of_noise", "of_training_data")}
    lines = [f"# Study {study.name}", ""]
    if study.question:
        lines += [study.question.strip(), ""]
    lines += [header, "", markdown_table(study, groups, metric_name), ""]
    if anchors["of_noise"] is not None:
        lines += [f"For scale: {metric_name} of the noise itself {anchors['of_noise'].mean:.4g}, of as many "
                  f"training examples {anchors['of_training_data'].mean:.4g} (lower is better unless the "
                  f"metric says otherwise). Mean ± sample standard deviation over seeds.", ""]
    lines += list(notes)
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in pictures]
    failed = [r for g in groups for r in g.results if r.status == "failed"]
    if failed:
        lines += ["", "Failed cells:", ""] + [f"- {r.cell.label}: {r.error}" for r in failed]
    path.write_text("\n".join(lines).rstrip() + "\n")


# -- pictures ----------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _wide(values) -> bool:
    """Whether values span more than a factor of ten (and can go on a log scale)."""
    values = list(values)
    return bool(values) and min(values) > 0 and max(values) / min(values) > 10


def _ceiling(groups: Sequence[Group], metric_name: str, higher_is_better: bool) -> float | None:
    """The worst a drawn variant may be: the metric of the noise itself, when measured. A variant
    worse than that (a collapsed one, say at 1e13) is named in the legend but not drawn, rather
    than flattening every other line."""
    noise = Spread.of([r.metrics.get(f"{metric_name}_of_noise") for g in groups for r in g.finished])
    return None if higher_is_better or noise is None else noise.mean


def _off_scale(values: Sequence[float], ceiling: float | None) -> bool:
    return ceiling is not None and max(values) > ceiling


def _fit_view(axis, values: list[float]) -> None:
    """A log scale for values over decades; the view fitted to the values drawn."""
    if not values:
        return
    wide = _wide(values)
    if wide:
        axis.set_yscale("log")
    low, high = min(values), max(values)
    margin = 0.05 * (high - low) or 0.05 * abs(high) or 1.0
    axis.set_ylim(*((low / 1.15, high * 1.15) if wide else (low - margin, high + margin)))


def _finish(figure, path: Path, title: str) -> Path:
    """Title, one legend under the panels (as many columns as its longest label leaves room
    for), saved."""
    figure.suptitle(title, fontsize=10)
    labels = figure.axes[0].get_legend_handles_labels()[1]
    room = int(figure.get_figwidth() * 72 / 5.2)  # characters of 8-point text across the figure
    columns = max(1, min(len(labels), room // (max(map(len, labels), default=1) + 6)))
    figure.legend(loc="outside lower center", ncol=columns, fontsize=8, frameon=False)
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)
    return path


def plot_curves(study: Study, groups: Sequence[Group], path: Path, metric_name: str,
                higher_is_better: bool = False) -> Path | None:
    """The metric against the training step, a panel per NFE, a line per variant (mean over
    seeds, the band from the best to the worst seed); the reference's final mean dashed. A
    variant worse than the noise itself is listed, not drawn (it would flatten the others)."""
    shared = [nfe for nfe in groups[0].nfes if all(nfe in g.nfes for g in groups)]
    panels = [nfe for nfe in shared if any(len(r.curves.get(nfe, [])) > 1 for g in groups for r in g.finished)]
    if not panels:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.3), squeeze=False, layout="constrained")
    ceiling = _ceiling(groups, metric_name, higher_is_better)
    for panel, (axis, nfe) in enumerate(zip(axes[0], panels)):
        drawn = []
        for index, group in enumerate(groups):
            color, label = f"C{index % 10}", _label(group, groups) if panel == 0 else None
            mean = mean_curve(group, nfe)
            if not mean:
                continue
            steps, values = [s for s, _ in mean], [v for _, v in mean]
            if _off_scale(values, ceiling):
                axis.plot([], [], color=color, marker=".", linestyle=":",
                          label=label and f"{label} (worse than noise: not drawn)")
                continue
            per_seed = np.array([[dict(r.curves[nfe])[s] for s in steps] for r in group.finished])
            axis.plot(steps, values, color=color, marker=".", label=label)
            if len(per_seed) > 1:
                axis.fill_between(steps, per_seed.min(0), per_seed.max(0), color=color, alpha=0.15, linewidth=0)
            drawn += list(per_seed.ravel())
        reference = next((g for g in groups if g.variant == study.reference), None)
        if reference is not None and reference.metric.get(nfe) is not None:
            axis.axhline(reference.metric[nfe].mean, color="0.4", linestyle="--", linewidth=1,
                         label=f"{study.reference}, final" if panel == 0 else None)
        axis.set_title(f"{nfe} NFE")
        axis.set_xlabel("training step")
        axis.set_ylabel(metric_name)
        axis.grid(alpha=0.3)
        _fit_view(axis, drawn)
    return _finish(figure, path, f"{study.name}: {metric_name} during training (mean over seeds, band: best to "
                                 f"worst seed)")


def plot_nfe(study: Study, groups: Sequence[Group], path: Path, metric_name: str,
             higher_is_better: bool = False) -> Path:
    """The final metric against the number of network evaluations (mean ± std over seeds)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.8), layout="constrained")
    ceiling = _ceiling(groups, metric_name, higher_is_better)
    drawn = []
    for index, group in enumerate(groups):
        points = [(nfe, s) for nfe, s in sorted(group.metric.items()) if s is not None]
        if not points:
            continue
        color, label = f"C{index % 10}", _label(group, groups)
        if _off_scale([s.mean for _, s in points], ceiling):
            axis.plot([], [], color=color, marker="o", linestyle=":", label=f"{label} (worse than noise: not drawn)")
            continue
        drawn += [s.mean - s.std for _, s in points] + [s.mean + s.std for _, s in points]
        axis.errorbar([n for n, _ in points], [s.mean for _, s in points], yerr=[s.std for _, s in points],
                      marker="o", capsize=3, color=color, label=label)
    axis.set_xscale("log", base=2)
    ticks = sorted({nfe for g in groups for nfe in g.nfes})
    axis.set_xticks(ticks, [str(n) for n in ticks])
    axis.minorticks_off()
    _fit_view(axis, drawn)
    axis.set_xlabel("network evaluations (NFE)")
    axis.set_ylabel(metric_name)
    axis.grid(alpha=0.3, which="both")
    return _finish(figure, path, f"{study.name}: {metric_name} after training (mean ± std over seeds)")


def plot_samples(study: Study, groups: Sequence[Group], path: Path, backend: str, registry) -> Path | None:
    """Samples of each variant (its first finished seed, the run's evaluation weights, the same
    noise for all) at the first ``study.picture_nfe`` NFE every variant was measured at."""
    from toolkit.checkpoint import list_checkpoints, load_checkpoint
    from toolkit.evaluation import (GRID_COLUMNS, as_images, checkpoint_engine, draw_samples, drawable, grid_size,
                                    make_sampler, sampling_weights)
    from toolkit.plotting import image_grid

    shared = [nfe for nfe in groups[0].nfes if all(nfe in g.nfes for g in groups)]
    nfes = sorted(shared)[:study.picture_nfe]
    rows = [(g, g.finished[0]) for g in groups if g.finished]
    if not rows or not nfes:
        return None
    config = rows[0][1].cell.config
    dataset = registry.load("dataset", config.data.name, backend)(config.data.options)
    if not drawable(dataset.spec, dataset):
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(len(rows), len(nfes), figsize=(2.2 * len(nfes), 3.2 * len(rows)), squeeze=False)
    for (group, result), row in zip(rows, axes):
        checkpoint = list_checkpoints(result.cell.out_dir / "checkpoints")[-1]
        arrays, metadata = load_checkpoint(checkpoint)
        engine, config, spec = checkpoint_engine(checkpoint, arrays, metadata, backend, registry)
        for nfe, axis in zip(nfes, row):
            with sampling_weights(engine, config, config.eval.weights):
                samples = draw_samples(engine, make_sampler(config, backend, registry, nfe=nfe), spec,
                                       grid_size(spec), seed=0)
            pictures = as_images(samples, dataset)
            if pictures is not None and pictures.ndim == 4:
                if spec.conditional:  # a row per class: its first few samples, so many panels stay small
                    pictures = pictures.reshape(-1, GRID_COLUMNS, *pictures.shape[1:])[:, :SAMPLES_PER_CLASS]
                    pictures = pictures.reshape(-1, *pictures.shape[2:])
                axis.imshow(image_grid(pictures, columns=SAMPLES_PER_CLASS if spec.conditional else 8))
            else:
                axis.scatter(samples[:, 0], samples[:, 1], s=2)
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(f"{nfe} NFE", fontsize=9)
        row[0].set_ylabel(_label(group, groups), fontsize=9)
        if hasattr(engine, "close"):
            engine.close()
    figure.suptitle(f"{study.name}: samples\n(seed {rows[0][1].cell.seed} of each, the same noise)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _label(group: Group, groups: Sequence[Group]) -> str:
    return f"{group.variant} ({group.steps} steps)" if len({g.steps for g in groups}) > 1 else group.variant


def write_report(study: Study, cells: Sequence[Cell], out_root: Path, backend: str, registry,
                 command: str = "") -> dict:
    """Write ``results.csv``, ``results.md``, ``summary.json`` and the PNG pictures into
    ``out_root``; returns their paths and the summary. ``command``: what reproduces it."""
    results = collect(cells)
    finished = [r for r in results if r.status == "finished"]
    hours = sum(r.metrics.get("wall_seconds") or 0.0 for r in finished) / 3600
    header = (f"`{command}`: " if command else "") + (
        f"{len(cells)} runs in {backend}, {len(finished)} finished; their wall time (training and evaluation, "
        f"one after another) {hours * 60:.1f} min.")
    metric_name = cells[0].config.eval.metric.name
    metric_class = registry.load("metric", metric_name, backend)
    higher_is_better = bool(getattr(metric_class, "higher_is_better", False))
    groups = summarise(study, results, higher_is_better)
    out_root.mkdir(parents=True, exist_ok=True)
    write_csv(results, out_root / "results.csv")
    pictures, notes = [], []
    if any(g.finished for g in groups):
        curves = plot_curves(study, groups, out_root / "curves.png", metric_name, higher_is_better)
        if curves is None:
            notes.append("No curve against the step: the cells measured only at the end (set eval.every).\n")
        pictures = [p for p in (curves, plot_nfe(study, groups, out_root / "nfe.png", metric_name, higher_is_better),
                                plot_samples(study, groups, out_root / "samples.png", backend, registry)) if p]
    write_markdown(study, groups, out_root / "results.md", metric_name, header, pictures, notes)
    summary = {"study": study.name, "backend": backend, "metric": metric_name, "groups": [
        {"variant": g.variant, "steps": g.steps, "seeds": len(g.finished), "cells": len(g.results),
         "metric": {str(nfe): attrs.asdict(s) if s else None for nfe, s in g.metric.items()},
         "seconds_per_step": attrs.asdict(g.seconds_per_step) if g.seconds_per_step else None,
         "reached_at": g.reached_at} for g in groups]}
    write_json(out_root / "summary.json", summary)
    return {"results": [out_root / n for n in ("results.csv", "results.md", "summary.json")],
            "pictures": pictures, "summary": summary}
