"""Categorical image attributes (modality, plane, body region, disease subtype) as knowledge-graph concepts.

Each attribute is a manifest ``column`` whose values map to the concepts of a graph ``task`` of the imaging
extension (``knowledge/extensions/imaging.yaml``). Evaluation scores zero-shot predictions against these
columns (:mod:`medclip.eval.attributes`); training writes them into label text
(:class:`medclip.train.text.TextPolicy`, the exam line).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .graph import Graph

#: The extension with the attribute concepts (the package copy of knowledge/extensions/imaging.yaml).
IMAGING_EXTENSION = Path(str(files("medclip.knowledge") / "data" / "imaging_extension.json"))


@dataclass(frozen=True)
class AttributeSpec:
    """A categorical attribute: manifest ``column`` whose values map (``values``) to the concepts of graph ``task``."""

    name: str
    column: str
    task: str
    values: Mapping[str, str] = field(default_factory=dict)  # empty: the column holds concept ids

    def classes_of(self, column: pd.Series) -> np.ndarray:
        """Concept id per row ('' where the value is not one of the classes)."""
        raw = column.fillna("").astype(str).str.strip()
        return (raw.map(self.values) if self.values else raw).fillna("").to_numpy(dtype=object)

    def concept_of(self, value: Any) -> str:
        """The concept id of one column value ('' when it maps to none)."""
        if value is None or (isinstance(value, float) and value != value):
            return ""
        raw = str(value).strip()
        return (self.values.get(raw, "") if self.values else raw) or ""


ATTRIBUTES: dict[str, AttributeSpec] = {
    "modality": AttributeSpec(
        "modality", "modality", "imaging_modality", {"CT": "computed_tomography", "MR": "magnetic_resonance_imaging"}
    ),
    "plane": AttributeSpec(
        "plane",
        "plane",
        "imaging_plane",
        {"axial": "plane_axial", "coronal": "plane_coronal", "sagittal": "plane_sagittal"},
    ),
    "body_region": AttributeSpec("body_region", "body_region", "body_region"),
    "pneumonia_subtype": AttributeSpec(
        "pneumonia_subtype",
        "subtype",
        "pneumonia_subtype",
        {"bacterial": "bacterial_pneumonia", "viral": "viral_pneumonia"},
    ),
}
#: The attributes that describe the examination (what a report's EXAM header says), in header order.
EXAM_ATTRIBUTES = ("plane", "modality", "body_region")
#: Manifest columns the attributes read (datasets and caches carry these with each sample).
ATTRIBUTE_COLUMNS = tuple(dict.fromkeys(spec.column for spec in ATTRIBUTES.values()))


def attribute_graph(extensions: Iterable[str | Path] = ()) -> Graph:
    """The knowledge graph with the imaging-attribute extension (and any further extensions) merged."""
    return Graph.load(extensions=[IMAGING_EXTENSION, *extensions])


def row_attributes(row: Mapping[str, Any]) -> dict[str, str]:
    """``{attribute name: concept id}`` of one manifest row or sample meta (attributes it has a known value for)."""
    out = {}
    for name, spec in ATTRIBUTES.items():
        concept = spec.concept_of(row.get(spec.column))
        if concept:
            out[name] = concept
    return out
