"""The study manifest: every cell a study's stages are expected to produce, as the list of its plans' cells.

The study grid (:mod:`medxfer.workflows.grid`) composes each cell's stage config and builds its plan
(:mod:`medxfer.plans`); the stages run those same plans. The analysis (``medxfer-analyze``), ``medxfer-rank``'s
tau and the notebook read exactly the manifest's cells, by cell id: a run with other settings in the same
experiment is never read, and a missing one is named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from medxfer.cells import Cell, hash_parts


@dataclass
class Manifest:
    """The cells a study expects, per stage."""

    study: str
    score: list[Cell] = field(default_factory=list)
    finetune: list[Cell] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. a dataset without an OOD set: no ood score cells

    @classmethod
    def from_plans(cls, study: str, plans: Iterable[Any]) -> "Manifest":
        """The manifest of a study's plans (:class:`medxfer.plans.ScorePlan`, :class:`medxfer.plans.FinetunePlan`):
        each plan's cells, in order, by stage."""
        manifest = cls(study)
        for plan in plans:
            for cell in plan.cells.values():
                getattr(manifest, cell.kind).append(cell)
            for split in getattr(plan, "absent", []):
                dataset = plan.config["dataset"]["name"]
                manifest.notes.append(f"{dataset} has no out-of-distribution set: no {split} score cells")
        manifest.notes = list(dict.fromkeys(manifest.notes))
        return manifest

    @property
    def id(self) -> str:
        """A hash of every cell id: two analyses of the same manifest read the same cells."""
        return hash_parts(sorted(self.ids("score")) + sorted(self.ids("finetune")))

    def ids(self, stage: str) -> list[str]:
        """The cell ids of one stage (``score`` or ``finetune``)."""
        return [cell.id for cell in getattr(self, stage)]
