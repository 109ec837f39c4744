"""medclip: a medical vision-language foundation kit.

Index a PACS export, label its reports from a medical knowledge graph, train a CLIP-style
dual encoder, evaluate it and show it in a triage demo.
"""

__version__ = "0.1.0"
