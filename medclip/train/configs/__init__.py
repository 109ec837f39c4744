"""The bundled training configs (``quickstart``, ``small-data``), shipped inside the package.

``medclip fit --config quickstart`` (or ``python -m medclip.train --config quickstart``) takes one by name;
:func:`resolve_config` turns a name into its packaged file and leaves a path as it is.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["CONFIG_DIR", "bundled_configs", "resolve_config"]

#: The folder of the bundled ``*.yaml`` configs.
CONFIG_DIR = Path(str(files(__name__)))


def bundled_configs() -> list[str]:
    """Names of the bundled configs (file names without ``.yaml``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config(name_or_path: str | Path) -> Path:
    """An existing file as given; else a bundled config's file for its name (``quickstart`` or ``quickstart.yaml``);
    else the path unchanged, for ``load_config`` to report as missing."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    text = str(name_or_path)
    stem = text[:-5] if text.endswith(".yaml") else text
    if "/" not in text and (CONFIG_DIR / f"{stem}.yaml").is_file():
        return CONFIG_DIR / f"{stem}.yaml"
    return path
