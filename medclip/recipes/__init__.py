"""Dataset recipes: a public dataset's published layout -> a medclip manifest (``medclip recipe NAME ROOT -o M``).

One module per dataset (``records(root, ...)`` -> one row per image, ``main(argv, prog)`` -> the command line);
the shared plumbing (hashing, patient split, summary, combining manifests) is :mod:`medclip.recipes.base`;
the bundled Kermany subset's manifest is :func:`medclip.recipes.kermany_pneumonia.sample_kermany_manifest`. ``datasets/<name>/`` keeps each dataset's card and a thin ``recipe.py`` that
calls the module here. :mod:`medclip.recipes.pacs_export` turns covid-chestxray-dataset into a PACS-like
DICOM export (a test fixture, not a manifest recipe).
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

__all__ = ["RECIPES", "load_recipe", "recipe_summary", "run_recipe_command"]

#: Every manifest recipe, by the name ``medclip recipe NAME`` takes (the folder name under ``datasets/``).
RECIPES = ("chexpert", "covid_chestxray", "iu_xray", "kermany_pneumonia", "medpix", "mimic_cxr", "nih_chestxray14")


def load_recipe(name: str) -> ModuleType:
    """The recipe module ``medclip.recipes.<name>``; ValueError listing the names for an unknown one."""
    if name not in RECIPES:
        raise ValueError(f"no recipe named {name!r}; recipes: {', '.join(RECIPES)}")
    return importlib.import_module(f"medclip.recipes.{name}")


def recipe_summary(name: str) -> str:
    """The first line of a recipe's docstring (what it reads and writes)."""
    doc = load_recipe(name).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def add_recipe_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``medclip recipe``: ``--list``, or NAME and the recipe's own arguments."""
    p.add_argument("--list", action="store_true", help="list the recipes and what each reads")
    p.add_argument("name", nargs="?", metavar="NAME", help=f"one of {', '.join(RECIPES)}")
    p.add_argument(
        "recipe_args",
        nargs=argparse.REMAINDER,
        metavar="...",
        help="the recipe's arguments: ROOT -o MANIFEST [--salt S] [--seed N] [--keep-missing] "
        "(medclip recipe NAME --help shows them)",
    )
    return p


def run_recipe_command(args: argparse.Namespace) -> int:
    """Handler of ``medclip recipe``."""
    if args.list or not args.name:
        width = max(map(len, RECIPES))
        for name in RECIPES:
            print(f"{name.ljust(width)}  {recipe_summary(name)}")
        if not args.list:
            print("\nrun one: medclip recipe NAME ROOT -o MANIFEST  (medclip recipe NAME --help for its options)")
        return 0
    return int(load_recipe(args.name).main(args.recipe_args, prog=f"medclip recipe {args.name}") or 0)
