"""The papers' five studies as commands (issue 20): ``hwsim study NAME``.

:mod:`~hwsim.studies.spec` defines the grids, :mod:`~hwsim.studies.cells` the cached trainings and
evaluation cells, :mod:`~hwsim.studies.runner` runs them, :mod:`~hwsim.studies.output` writes
NAME.csv / NAME.md / NAME.png. docs/results.md describes each study and its results.
"""

from hwsim.studies.spec import STUDIES, STUDY_NAMES

__all__ = ["STUDIES", "STUDY_NAMES"]
