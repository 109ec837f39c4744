"""Zero-shot prompt ensembles from the knowledge graph.

For each finding: positive prompts (its names and synonyms in report-style templates, plus its
radiographic appearance) and negative prompts (the same names, negated). The evaluation code
embeds every prompt with the text tower, averages (and re-normalises) each list, and scores an
image by its similarity to the positive versus the negative mean.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .graph import Graph, normalize_name

POSITIVE_TEMPLATES = (
    "{name}",
    "{name}.",
    "chest x-ray showing {name}.",
    "findings consistent with {name}.",
    "there is {name}.",
)
NEGATIVE_TEMPLATES = ("no {name}.", "no evidence of {name}.", "there is no {name}.", "{name} is not seen.")
NO_FINDING_POSITIVE = (
    "no acute cardiopulmonary abnormality.",
    "normal chest radiograph.",
    "the lungs are clear. heart size is normal. no effusion or pneumothorax.",
    "no finding.",
)
NO_FINDING_NEGATIVE = (
    "abnormal chest radiograph.",
    "acute cardiopulmonary abnormality.",
    "chest x-ray with abnormal findings.",
)
_PROMPT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ,'-]*$")


def prompt_names(graph: Graph, concept_id: str, max_names: int = 4) -> list[str]:
    """Up to ``max_names`` short report-style names of a finding, preferred name first."""
    out: list[str] = []
    seen: set[str] = set()
    for name in graph[concept_id].names:
        key = normalize_name(name)
        if key in seen or not _PROMPT_NAME.match(name) or len(name.split()) > 4:
            continue
        seen.add(key)
        out.append(name.lower())
        if len(out) == max_names:
            break
    return out


def zeroshot_prompts(
    graph: Graph | None = None, findings: str | Iterable[str] | None = None, max_names: int = 4
) -> dict[str, dict[str, list[str]]]:
    """{concept_id: {"positive": [...], "negative": [...]}} for the findings (a task name or ids)."""
    graph = graph or Graph.load()
    out: dict[str, dict[str, list[str]]] = {}
    for cid in graph.resolve(findings):
        if cid == "no_finding":
            out[cid] = {"positive": list(NO_FINDING_POSITIVE), "negative": list(NO_FINDING_NEGATIVE)}
            continue
        names = prompt_names(graph, cid, max_names)
        positive = [t.format(name=n) for n in names for t in POSITIVE_TEMPLATES]
        positive += [a.text.rstrip(".").lower() + "." for a in graph[cid].appearance]
        negative = [t.format(name=n) for n in names for t in NEGATIVE_TEMPLATES]
        out[cid] = {"positive": list(dict.fromkeys(positive)), "negative": list(dict.fromkeys(negative))}
    return out


#: Templates for categorical attributes (a graph task whose concepts are the classes), by task name.
ATTRIBUTE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "imaging_modality": ("{name}.", "{name} image.", "a {name} scan.", "{name} of the patient.", "{name} images show"),
    "imaging_plane": (
        "{name} image.",
        "{name} view.",
        "{name} slice.",
        "{name} section through the body.",
        "{name} images show",
    ),
    "body_region": (
        "{name}.",
        "image of the {name}.",
        "CT or MRI of the {name}.",
        "{name} imaging.",
        "images of the {name} show",
    ),
}
#: Templates for a task without its own entry (e.g. disease subtypes): the finding templates.
DEFAULT_ATTRIBUTE_TEMPLATES = POSITIVE_TEMPLATES


def attribute_prompts(
    graph: Graph, task: str, max_names: int = 4, templates: Iterable[str] | None = None
) -> dict[str, list[str]]:
    """{concept_id: [prompts]} for each class of a categorical task (names x templates, plus the
    concept's sourced appearance); the classes are the task's concepts in the graph's order."""
    templates = tuple(templates or ATTRIBUTE_TEMPLATES.get(task, DEFAULT_ATTRIBUTE_TEMPLATES))
    out: dict[str, list[str]] = {}
    for cid in graph.task_labels(task):
        names = prompt_names(graph, cid, max_names) or [graph[cid].name]
        prompts = [t.format(name=n) for n in names for t in templates]
        prompts += [a.text.rstrip(".").lower() + "." for a in graph[cid].appearance]
        out[cid] = list(dict.fromkeys(prompts))
    return out
