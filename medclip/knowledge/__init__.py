"""Knowledge layer: the medical knowledge graph, report labeler, text augmentation and zero-shot prompts.

>>> from medclip.knowledge import Graph, ReportLabeler
>>> graph = Graph.load()
>>> ReportLabeler(graph).label("No pleural effusion or pneumothorax.")["pneumothorax"].status
'negative'
"""

from .augment import ReportAugmenter
from .graph import Concept, Fact, Graph, GraphError, normalize_name
from .labeler import Labeler, Mention, ReportLabeler
from .prompts import zeroshot_prompts

__all__ = [
    "Concept",
    "Fact",
    "Graph",
    "GraphError",
    "Labeler",
    "Mention",
    "ReportLabeler",
    "ReportAugmenter",
    "normalize_name",
    "zeroshot_prompts",
]
