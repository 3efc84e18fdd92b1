"""``toolkit study``: a grid of runs (variants x training lengths x seeds) with one shared
evaluation, resumable cell by cell, reported as tables and pictures.

:mod:`~toolkit.study.grid` reads a study file into cells (each an ordinary run config and run
directory), :mod:`~toolkit.study.runner` trains the cells that are not finished, and
:mod:`~toolkit.study.report` reads them back into ``results.csv``, ``results.md``,
``summary.json`` and PNG pictures.
"""

from toolkit.study.grid import Cell, Study, load_study, study_cells
from toolkit.study.report import write_report
from toolkit.study.runner import run_cells

__all__ = ["Cell", "Study", "load_study", "run_cells", "study_cells", "write_report"]
