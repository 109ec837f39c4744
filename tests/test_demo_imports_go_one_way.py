"""The demo's modules import each other one way (issue 19.7): ``cli`` -> ``app`` -> ``startup`` -> the engine.

Every import counts, also those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import medclip.demo

DEMO = Path(medclip.demo.__file__).parent


def _demo_imports(path: Path) -> set[str]:
    """The ``medclip.demo`` modules (short names) that ``path`` imports anywhere in its body."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                names = [node.module] if node.module else [a.name for a in node.names]
            elif node.module == "medclip.demo":
                names = [a.name for a in node.names]
            elif node.module and node.module.startswith("medclip.demo."):
                names = [node.module.split(".")[2]]
            else:
                continue
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[2] for a in node.names if a.name.startswith("medclip.demo.")]
        else:
            continue
        found.update(n.split(".")[0] for n in names if (DEMO / f"{n.split('.')[0]}.py").is_file())
    found.discard(path.stem)
    return found


def test_demo_modules_import_one_way() -> None:
    graph = {p.stem: _demo_imports(p) for p in DEMO.glob("*.py") if p.stem != "__init__"}
    assert "launch_page" not in (DEMO / "cli.py").read_text(), "serving the page belongs to the page (app.py)"
    assert graph["app"] >= {"startup"} and "cli" not in graph["app"]
    assert graph["cli"] >= {"app", "startup"}
    assert "app" not in graph["startup"] and "cli" not in graph["startup"]

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    cycles = [m for m in graph if reaches(m, m, {m})]
    assert not cycles, f"import cycle through {cycles}: {graph}"
