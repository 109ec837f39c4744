"""Shared plumbing of the dataset recipes in ``medclip.recipes`` (each turns a published layout into a manifest)."""

from __future__ import annotations

import argparse
import functools
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from medclip.data.manifest import LABEL_PREFIX, manifest_from_records, write_manifest
from medclip.data.splits import patients_in_several_splits
from medclip.data.storage import as_location


@functools.lru_cache(maxsize=1)
def _graph():
    """The bundled knowledge graph, loaded once per process (None when the knowledge layer cannot load)."""
    try:
        from medclip.knowledge import Graph

        return Graph.load()
    except Exception:  # the knowledge layer is optional for recipes
        return None


def concept_id(name: str) -> str:
    """The knowledge-graph concept id for a dataset's label name (graph lookup, else a snake_case slug)."""
    graph = _graph()
    concept = graph.lookup(name) if graph is not None else None
    if concept is not None:
        return concept.id
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def label_columns_from(df: pd.DataFrame, names: list[str]) -> dict[str, str]:
    """Rename map {dataset label column: 'label.<concept_id>'} for the columns present."""
    return {n: LABEL_PREFIX + concept_id(n) for n in names if n in df.columns}


def recipe_parser(description: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The command line every recipe shares: ROOT -o MANIFEST [--salt] [--seed] [--keep-missing] [-q] [-v]."""
    from medclip.commands import add_global_flags

    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("root", type=Path, help="the dataset folder, as published")
    ap.add_argument(
        "-o",
        "--output",
        type=as_location,
        required=True,
        help="manifest .parquet to write (a path, or a URL such as s3://bucket/manifest.parquet)",
    )
    ap.add_argument("--salt", help="hashing salt (default: $MEDCLIP_SALT)")
    ap.add_argument("--seed", type=int, default=0, help="split seed when the dataset has no official split")
    ap.add_argument("--keep-missing", action="store_true", help="keep rows whose image file is absent")
    add_global_flags(ap)
    return ap


def write_recipe_manifest(
    records: pd.DataFrame,
    root: Path,
    output: Path,
    *,
    salt: str | None = None,
    seed: int = 0,
    require_files: bool = True,
    name: str = "",
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> pd.DataFrame:
    """Hash, split (by patient, ``fractions`` train/val/test unless the records carry a split), write the
    manifest and print a summary; returns it."""
    df, counts = manifest_from_records(
        records, root, salt=salt, seed=seed, require_files=require_files, fractions=fractions
    )
    write_manifest(
        df, output, extra={"created_by": f"datasets recipe {name}".strip(), "root": str(Path(root).resolve())}
    )
    leaks = patients_in_several_splits(df)
    print(f"{name}: {counts['rows']} rows, {df['patient_id'].nunique()} patients -> {output}")
    if counts["missing_files"]:
        print(f"  {counts['missing_files']} rows dropped: image file not found under {root}")
    print("  splits: " + ", ".join(f"{k} {v}" for k, v in df["split"].value_counts().items()))
    if leaks:
        print(f"  warning: {len(leaks)} patients appear in several official splits")
    return df


def run_recipe(
    doc: str,
    name: str,
    records: Callable[[Path, int], pd.DataFrame],
    argv: list[str] | None = None,
    prog: str | None = None,
) -> int:
    """A recipe's ``main``: parse the shared command line, build the records, write the manifest."""
    args = recipe_parser(doc.strip().splitlines()[0], prog=prog).parse_args(argv)
    write_recipe_manifest(
        records(args.root, args.seed),
        args.root,
        args.output,
        salt=args.salt,
        seed=args.seed,
        require_files=not args.keep_missing,
        name=name,
    )
    return 0


def combine_manifests(paths: list[Path], output: Path) -> pd.DataFrame:
    """One manifest holding the rows of several (absolute image paths; columns a source lacks are empty); a
    ``source`` column names the manifest each row came from (its file name without ``.parquet``) unless it has one."""
    from medclip.data.manifest import read_manifest

    frames = []
    for p in paths:
        frame = read_manifest(p)
        if "source" not in frame or frame["source"].fillna("").astype(str).str.strip().eq("").all():
            frame["source"] = Path(p).name.removesuffix(".parquet")  # where each row came from (data card, subgroups)
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True, sort=False)
    if df["image_id"].duplicated().any():
        raise ValueError(f"{output}: the manifests {', '.join(map(str, paths))} share image ids")
    write_manifest(df, output, extra={"created_by": "medclip.data.recipes.combine_manifests"})
    return df
