"""The ``medclip`` command line: index, label, cache, fit, models, eval, report, demo, quickstart."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from medclip.commands import add_global_flags
from medclip.fsutil import DiskFullError
from medclip.logging_setup import setup_logging, verbosity_of
from medclip.optional import MissingExtraError
from medclip.sample import SAMPLE_EXPORT, SAMPLE_REPORTS


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}") from None
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected train,val,test fractions, got {text!r}")
    return parts  # type: ignore[return-value]


def _add_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="index a PACS export into a de-identified, patient-split manifest",
        description="Walk EXPORT_DIR (DICOM / NIfTI / PNG / JPEG, DICOM SR), link reports, drop PHI, "
        "hash identifiers with a salt ($MEDCLIP_SALT), split by patient, write Parquet.",
    )
    p.add_argument("export_dir", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="manifest path (.parquet) or folder")
    p.add_argument("--reports", type=Path, help="reports table (CSV or Parquet)")
    p.add_argument("--report-key", help="column of the reports table that links to images (default: auto)")
    p.add_argument(
        "--link-on",
        choices=["accession", "study_uid", "path"],
        help="what --report-key holds (default: guessed from the column name)",
    )
    p.add_argument("--split", type=_fractions, default=(0.8, 0.1, 0.1), metavar="TRAIN,VAL,TEST")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--salt", help="hashing salt (default: $MEDCLIP_SALT); keep it secret and constant per site")
    p.add_argument("--workers", type=int, default=None, help="parallel reader processes (default: CPU count, max 8)")
    p.add_argument("--no-verify", action="store_true", help="read headers only (skip decoding pixels)")
    p.add_argument("--full", action="store_true", help="re-read every file instead of only new or changed ones")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=2000,
        metavar="N",
        help="save per-file progress every N files read, so a killed run resumes (default: 2000)",
    )
    _add_shard_flags(p, "files", "--merge builds the manifest from all parts")
    p.set_defaults(func=_cmd_index)


def _add_shard_flags(p: argparse.ArgumentParser, what: str, merge_help: str) -> None:
    """``--num-shards/--shard-index/--merge`` for array jobs (defaults: a SLURM array's variables)."""
    p.add_argument(
        "--num-shards",
        type=int,
        default=None,
        metavar="N",
        help="split the work into N array tasks (default: $SLURM_ARRAY_TASK_COUNT inside an array job)",
    )
    p.add_argument(
        "--shard-index",
        type=int,
        default=None,
        metavar="I",
        help=f"this task's part of the {what}, 0..N-1 (default: $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN)",
    )
    p.add_argument("--merge", action="store_true", help=f"after all array tasks: {merge_help}")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's time limit or scancel) raises KeyboardInterrupt in the block, so it can save its
    progress like Ctrl-C; the previous handler is restored after (main thread only: elsewhere nothing changes)."""
    import signal
    import threading

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _shard_of(args: argparse.Namespace):
    from medclip.data.shards import resolve_shard

    return resolve_shard(args.num_shards, args.shard_index)


def _cmd_index(args: argparse.Namespace) -> int:
    from medclip.data.indexer import index_export, skipped_path

    shard = None if args.merge else _shard_of(args)
    with _sigterm_as_interrupt():  # SLURM's time limit: progress is saved, a resubmitted task resumes
        res = index_export(
            args.export_dir,
            args.output,
            reports=args.reports,
            report_key=args.report_key,
            link_on=args.link_on,
            salt=args.salt,
            fractions=args.split,
            seed=args.seed,
            workers=args.workers,
            verify_pixels=not args.no_verify,
            incremental=not args.full,
            progress=not args.quiet,
            shard=shard,
            merge=args.merge,
            checkpoint_every=args.checkpoint_every,
        )
    if res.part_path is not None and shard is not None:
        print(
            f"index part {shard.index + 1} of {shard.count}: {res.files_seen} files, {res.files_read} read, "
            f"{res.files_reused} unchanged, {sum(res.skipped.values())} skipped -> {res.part_path}"
        )
        print("when every task has finished: medclip index EXPORT_DIR -o MANIFEST --merge (same salt and options)")
        return 0
    print(res.summary())
    if res.skipped:
        print(f"skipped files are listed in {skipped_path(res.manifest_path)}")
    rows = res.manifest["split"].value_counts().to_dict() if len(res.manifest) else {}
    if len(res.manifest) and not rows.get("train"):
        patients = res.manifest["patient_id"].nunique()
        print(
            f"warning: the train split is empty: all {patients} patient(s) fell in "
            f"{' and '.join(sorted(k for k, v in rows.items() if v))} (splits are drawn per patient, "
            f"--split {','.join(f'{f:g}' for f in args.split)}), so `medclip fit` has nothing to train on; index more "
            "patients, or give --split 1,0,0 to put every patient in train"
        )
    return 0


def _split_rows(manifest: Path) -> dict[str, int] | None:
    """Rows per split of a manifest, from its ``split`` column only; None when it cannot be read that way."""
    try:
        import pyarrow.parquet as pq

        column = pq.read_table(manifest, columns=["split"]).column("split").to_pylist()
    except Exception:  # not Parquet, no split column, ...: fit's own checks name the problem
        return None
    counts: dict[str, int] = {}
    for value in column:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return counts


def check_train_split(config: dict) -> None:
    """Stop before anything is written when a manifest-only config's train split has no rows."""
    data = config.get("data") or {}
    if not data.get("manifest") or data.get("cache_dir") or data.get("sources"):
        return
    manifest = Path(str(data["manifest"])).expanduser()
    split = data.get("train_split") or "train"
    rows = _split_rows(manifest) if manifest.is_file() else None
    if rows is None or rows.get(split):
        return
    have = ", ".join(f"{k} {v}" for k, v in sorted(rows.items())) or "none"
    raise ValueError(
        f"{manifest}: the {split!r} split is empty (rows per split: {have}), so there is nothing to train on. "
        "Splits are drawn per patient: an export of one or a few patients can leave train empty. Re-index with "
        "`medclip index EXPORT -o MANIFEST --split 1,0,0` to put every patient in train, or set data.train_split"
    )


def _add_cache(sub: argparse._SubParsersAction) -> None:
    from medclip.data.cache import CacheConfig
    from medclip.data.storage import as_location  # a path, or a URL kept as text (Path folds s3:// into s3:/)

    d = CacheConfig()
    p = sub.add_parser("cache", help="decode, window and resize every manifest image once into WebDataset shards")
    p.add_argument(
        "manifest", type=as_location, help="manifest .parquet (a path or a URL such as s3://bucket/m.parquet)"
    )
    p.add_argument("-o", "--output", type=as_location, required=True, help="cache folder, or a URL (s3://bucket/cache)")
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--window", default=d.window, help="auto | lung | mediastinum | bone | brain | abdomen | C,W")
    p.add_argument("--volume-shape", type=int, nargs=3, default=d.volume_shape, metavar=("D", "H", "W"))
    p.add_argument("--volume-spacing", type=float, nargs=3, default=d.volume_spacing, metavar=("SD", "SH", "SW"))
    p.add_argument("--shard-size", type=int, default=d.shard_size, help="samples per shard")
    p.add_argument(
        "--full-decode",
        action="store_true",
        help="decode JPEG / JPEG 2000 DICOM at full size (default: at the codec's reduced resolution "
        "still >= 2x --image-size, several times faster, same image within ~1 grey level)",
    )
    p.add_argument(
        "--all-volumes",
        action="store_true",
        help="4D series (fMRI, dynamic CT/MR): cache every volume as its own sample (default: the first)",
    )
    p.add_argument("--workers", type=int, default=None)
    p.add_argument(
        "--overwrite", action="store_true", help="rebuild even if the folder holds a cache with other settings"
    )
    _add_shard_flags(p, "tar shards", "merge the parts into cache.json (the last task does this by itself)")
    p.set_defaults(func=_cmd_cache)


def _cmd_cache(args: argparse.Namespace) -> int:
    from medclip.data.cache import CacheConfig, build_cache, merge_cache_parts

    if args.merge:
        merge_cache_parts(args.output)
        print(f"cache: parts merged into {args.output}/cache.json")
        return 0
    cfg = CacheConfig(
        image_size=args.image_size,
        window=args.window,
        volume_shape=tuple(args.volume_shape),
        volume_spacing=tuple(args.volume_spacing),
        shard_size=args.shard_size,
        reduced_decode=not args.full_decode,
        all_volumes=args.all_volumes,
    )
    res = build_cache(
        args.manifest,
        args.output,
        config=cfg,
        workers=args.workers,
        progress=not args.quiet,
        overwrite=args.overwrite,
        shard=_shard_of(args),
    )
    print(res.summary())
    return 0


LABEL_HELP = "label each report (positive / negative / uncertain / not mentioned per finding)"


def add_label_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``medclip label`` / ``python -m medclip.knowledge`` (the one definition)."""
    from medclip.knowledge.labeler import VERSUS_POLICIES

    p.add_argument("manifest", type=Path, help="manifest Parquet written by `medclip index`")
    p.add_argument("-o", "--output", type=Path, help="write here instead of updating MANIFEST in place")
    p.add_argument(
        "--findings",
        help="comma-separated concept ids or a task name (chexpert14, chest_xray_common; default: all chest findings)",
    )
    p.add_argument(
        "--versus-policy",
        choices=VERSUS_POLICIES,
        default="uncertain",
        help='status of the alternatives of a differential ("A versus B", "A or B"): '
        "uncertain (CheXpert, default), first (first positive, rest uncertain), all (all positive)",
    )
    return p


def _add_label(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label", help=LABEL_HELP)
    add_label_arguments(p)
    p.set_defaults(func=run_label_command)


def run_label_command(args: argparse.Namespace) -> int:
    """Handler of ``medclip label`` and ``python -m medclip.knowledge``."""
    from medclip.data.labels import label_manifest
    from medclip.knowledge import ReportLabeler

    findings = args.findings
    if findings and "," in findings:
        findings = [f.strip() for f in findings.split(",") if f.strip()]
    labeler = ReportLabeler(findings=findings, versus_policy=args.versus_policy)
    df = label_manifest(
        args.manifest, output_path=args.output, findings=findings, progress=not args.quiet, labeler=labeler
    )
    cols = [c for c in df.columns if c.startswith("label.")]
    print(f"labelled {len(df)} rows with {len(cols)} findings -> {args.output or args.manifest}")
    counts = {c[6:]: int((df[c] == 1).sum()) for c in cols}
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:10]
    print("most frequent positives: " + ", ".join(f"{k} {v}" for k, v in top))
    return 0


FIT_DESCRIPTION = (
    "Train a dual encoder with Lightning from a YAML config. Every lightning.Trainer option is "
    "reachable as trainer.<name>=value."
)


def add_fit_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``medclip fit`` / ``python -m medclip.train`` (the one definition)."""
    p.add_argument(
        "--config",
        required=True,
        help="training config: a YAML file, or the name of a bundled one (quickstart, small-data)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the fully resolved config (defaults + file + overrides) as YAML and exit without training",
    )
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. trainer.max_steps=100")
    return p


def _add_fit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit", help="train a dual encoder with Lightning from a YAML config", description=FIT_DESCRIPTION
    )
    add_fit_arguments(p)
    p.set_defaults(func=_cmd_fit)


def run_fit_command(args: argparse.Namespace) -> Path | None:
    """Handler of ``medclip fit`` and ``python -m medclip.train``: the exported model folder on rank 0, None
    on other ranks and for ``--print-config`` (which prints the resolved YAML)."""
    from medclip.train import fit, load_config
    from medclip.train.configs import bundled_configs, resolve_config

    path = resolve_config(args.config)
    if not path.is_file():
        raise FileNotFoundError(
            f"{args.config}: no such config file, nor a bundled config ({', '.join(bundled_configs())})"
        )
    config = load_config(path, args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config, sort_keys=False), end="")
        return None
    check_train_split(config)
    out = fit(config)
    from lightning.pytorch.utilities import rank_zero_only

    return (
        Path(out) if getattr(rank_zero_only, "rank", 0) == 0 else None
    )  # every DDP process returns from fit(); one prints


def _cmd_fit(args: argparse.Namespace) -> int:
    out = run_fit_command(args)
    if out is not None:
        print(f"model saved to {out}")
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list the bundled model configs: towers, input, embedding size, parameters",
        description="Parameter counts come from the configs (built on the meta device: no weights are "
        "read). Use a name as model.name in a fit config, or create_model(NAME).",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_models)


def _cmd_models(args: argparse.Namespace) -> int:
    from medclip.model.factory import describe_models, format_parameter_count

    models = describe_models()
    if args.json:
        import json

        print(json.dumps(models, indent=2))
        return 0
    rows = [("name", "input", "vision tower", "text tower", "embed", "vision", "text", "total")]
    for name, info in models.items():
        params = info["params"]
        rows.append(
            (
                name,
                info["input"].split()[0],
                f"{info['vision']} ({info['vision_weights'].split('/')[-1]})",
                f"{info['text']} ({info['text_weights']})",
                str(info["embed_dim"]),
                *(format_parameter_count(params[k]) for k in ("vision", "text", "total")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(
                cell.ljust(w) if i < 4 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))
            ).rstrip()
        )
    if any(None in info["params"].values() for info in models.values()):
        print(
            "n/a: the tower's architecture is a hub id not in the local Hugging Face cache "
            "(MEDCLIP_ALLOW_DOWNLOADS=1 lets medclip fetch it)"
        )
    print("also accepted as a model name: a config .json, a checkpoint folder, hf-hub:ORG/NAME, open_clip:FOLDER")
    return 0


def _add_quickstart(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="index, label, cache, train, evaluate, build the demo gallery and write the audited report on the "
        "bundled sample (offline)",
    )
    p.add_argument("-o", "--output", type=Path, default=Path("runs/quickstart"))
    p.add_argument("--max-steps", type=int, default=None, help="training steps (default: the quickstart config's)")
    p.add_argument("--skip-train", action="store_true", help="stop after indexing and caching")
    p.set_defaults(func=_cmd_quickstart)


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from medclip.data.cache import CacheConfig, build_cache
    from medclip.data.indexer import index_export

    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    print(f"[1/7] indexing the bundled sample export {SAMPLE_EXPORT}")
    res = index_export(
        SAMPLE_EXPORT, out / "manifest.parquet", reports=SAMPLE_REPORTS, progress=not args.quiet, default_salt_ok=True
    )  # public sample data
    print(res.summary())
    from medclip.recipes.base import combine_manifests
    from medclip.recipes.kermany_pneumonia import sample_kermany_manifest

    print("  + the bundled Kermany subset: 360 pediatric chest X-rays, labels only (CC BY 4.0, medclip/sample/kermany)")
    sample_kermany_manifest(out / "kermany.parquet")
    print("[2/7] labelling reports with the knowledge graph")
    try:
        from medclip.data.labels import label_manifest
    except ImportError as exc:  # the knowledge layer is optional for indexing/caching
        print(f"  labeller not available ({exc}); continuing without labels")
    else:
        df = label_manifest(out / "manifest.parquet", progress=not args.quiet)
        cols = [c for c in df.columns if c.startswith("label.")]
        pos = {c[6:]: int((df[c] == 1).sum()) for c in cols}
        print("  positives: " + ", ".join(f"{k} {v}" for k, v in sorted(pos.items(), key=lambda kv: -kv[1]) if v))
    print("[3/7] caching preprocessed images")
    cres = build_cache(
        out / "manifest.parquet",
        out / "cache",
        config=CacheConfig(image_size=224, shard_size=64),
        progress=not args.quiet,
    )
    print(cres.summary())
    print(
        build_cache(
            out / "kermany.parquet",
            out / "cache_kermany",
            config=CacheConfig(image_size=224, shard_size=64),
            progress=not args.quiet,
        ).summary()
    )
    if args.skip_train:
        return 0
    print(
        "[4/7] training the offline default model (EfficientNet-Lite0 + MiniLM) on the sample's reports and the "
        "Kermany labels (as text), image tower locked (LiT)"
    )
    import json

    from medclip.train import fit, load_config
    from medclip.train.configs import resolve_config

    sources = [
        {
            "name": "sample",
            "manifest": str(out / "manifest.parquet"),
            "cache_dir": str(out / "cache"),
            "text": "report",
        },
        {
            "name": "kermany",
            "manifest": str(out / "kermany.parquet"),
            "cache_dir": str(out / "cache_kermany"),
            "text": "labels",
        },
    ]
    # the sources replace the config's single manifest / cache (which would only raise a warning)
    overrides = [
        f"data.sources={json.dumps(sources)}",
        "data.manifest=null",
        "data.cache_dir=null",
        f"output_dir={out}",
    ]
    if args.max_steps is not None:
        overrides.append(f"trainer.max_steps={args.max_steps}")
    model_dir = Path(fit(load_config(resolve_config("quickstart"), overrides)))
    print(f"  model folder: {model_dir}")
    print("[5/7] evaluating on the held-out patients (zero-shot, retrieval, report drafting)")
    from medclip.eval.runner import evaluate, format_results

    combine_manifests([out / "manifest.parquet", out / "kermany.parquet"], out / "eval_manifest.parquet")
    results = evaluate(
        model_dir,
        out / "eval_manifest.parquet",
        ("zeroshot", "retrieval", "report"),
        output_dir=out / "eval",
        save_to_checkpoint=True,
        split="test",
        val_split="val",
        train_split="train",
        n_boot=200,
    )
    print(format_results(results))
    from medclip.eval.attributes import vs_chance

    held = evaluate(
        model_dir,
        out / "kermany.parquet",
        ("zeroshot", "attributes"),
        split="test",
        val_split=None,
        findings=["pneumonia"],
        n_boot=1000,
    )
    pneu = held["zeroshot"]["per_finding"]["pneumonia"]
    print(
        f"Patients it never trained on (bundled Kermany subset, test split: {pneu['n']} images of "
        f"{held['data']['test']['patients']} patients, {pneu['positives']} with pneumonia; 95% CI by patient bootstrap):"
    )
    print(f"  pneumonia vs normal, zero-shot AUROC: {vs_chance(pneu['auroc'], 0.5)}")
    if "pneumonia_subtype" in held["attributes"]:
        print(
            f"  bacterial vs viral pneumonia, zero-shot AUROC: {vs_chance(held['attributes']['pneumonia_subtype']['macro_auroc'], 0.5)}"
        )
    print("  (the covid sample's own test patients are few and of one class: its AUROCs above say n/a)")
    print("[6/7] embedding the reference gallery for the demo")
    from medclip.checkpoint import CheckpointDir
    from medclip.demo.gallery import build_gallery
    from medclip.model import DualEncoder

    build_gallery(
        DualEncoder.from_pretrained(model_dir).eval(), out / "cache", CheckpointDir(model_dir).gallery, split="train"
    )
    print("[7/7] writing the audited report (data card, leakage audit, subgroups, calibration, failures, PHI scan)")
    from medclip.report import ReportOptions, build_report

    report = build_report(
        model_dir,
        out / "eval_manifest.parquet",
        out / "report",
        options=ReportOptions(n_boot=200, eval_dir=str(out / "eval"), progress=not args.quiet),
    )
    print(report.summary())
    print(f"done: checkpoint folder {model_dir}")
    print(f"report: open {report.html} in a browser (one self-contained file)")
    print(
        f"next: medclip demo --checkpoint {model_dir}   (or, in the repository: python app.py --checkpoint {model_dir})"
    )
    return 0


def _add_recipe(sub: argparse._SubParsersAction) -> None:
    from medclip.recipes import add_recipe_arguments, run_recipe_command

    p = sub.add_parser(
        "recipe",
        help="turn a public dataset's published layout into a manifest (--list: the recipes)",
        description="Run a dataset recipe: medclip recipe NAME ROOT -o MANIFEST. Cards: datasets/<name>/CARD.md.",
    )
    add_recipe_arguments(p)
    p.set_defaults(func=run_recipe_command)


def apply_download_policy() -> bool:
    """Turn Hugging Face hub downloads off (``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``) unless
    ``MEDCLIP_ALLOW_DOWNLOADS=1`` or the user set ``HF_HUB_OFFLINE`` (``HF_HUB_OFFLINE=0`` allows them).

    Runs before transformers or huggingface_hub are imported (they read these once). Returns True when
    it turned downloads off; the first hub id a model then asks for gets a one-time notice saying so
    (``medclip.model.resources.note_hub_access``).
    """
    if os.environ.get("MEDCLIP_ALLOW_DOWNLOADS", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if "HF_HUB_OFFLINE" in os.environ:
        if os.environ["HF_HUB_OFFLINE"].strip().lower() not in ("1", "true", "yes", "on"):
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "0")  # an explicit HF_HUB_OFFLINE=0 allows downloads
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ["MEDCLIP_OFFLINE_BY_DEFAULT"] = "1"
    return True


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from medclip import __version__

    parser = argparse.ArgumentParser(prog="medclip", description="Medical vision-language foundation kit.")
    parser.add_argument("--version", action="version", version=f"medclip {__version__}")
    add_global_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_index(sub)
    _add_label(sub)
    _add_cache(sub)
    _add_fit(sub)
    _add_models(sub)
    from medclip.adapt.cli import add_adapt_parser
    from medclip.demo.cli import add_demo_parser
    from medclip.eval.cli import add_eval_parser
    from medclip.pretrain.cli import add_pretrain_image_parser
    from medclip.report.cli import add_report_parser

    add_eval_parser(sub)
    add_adapt_parser(sub)
    add_pretrain_image_parser(sub)
    add_report_parser(sub)
    add_demo_parser(sub)
    _add_quickstart(sub)
    _add_recipe(sub)
    for subparser in sub.choices.values():  # -q / -v also after the subcommand: `medclip index ... -q`
        add_global_flags(subparser, default=argparse.SUPPRESS)
    return parser


def _run_stopped(exc: BaseException) -> bool:
    """A training run that stopped on purpose with its own message (NaN/Inf steps in a row)."""
    module = sys.modules.get("medclip.train.module")  # not imported: the error cannot come from it
    return module is not None and isinstance(exc, module.NonFiniteLossError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medclip`` console script."""
    apply_download_policy()
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(verbosity_of(args))
    from medclip.progress import is_terminal, plain_progress_bars

    if not is_terminal(sys.stderr):  # a log file (SLURM .out): progress bars become periodic plain lines
        plain_progress_bars()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MissingExtraError as exc:  # one line naming the extra to install, no traceback
        print(f"medclip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except DiskFullError as exc:  # which file, the space it needs and the space free; earlier files intact
        print(f"medclip {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        if not _run_stopped(exc):
            raise
        print(f"medclip {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        print(f"medclip {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
