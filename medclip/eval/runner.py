"""Run evaluation tasks on a model and a manifest: the Python API behind ``medclip eval``.

>>> results = evaluate("runs/quickstart/model", "runs/quickstart/manifest.parquet",
...                    tasks=["zeroshot", "retrieval"], output_dir="runs/quickstart/eval")
>>> print(format_results(results))

Images are embedded once per split and shared by the tasks. Metrics come with patient-level
bootstrap 95% CIs where the issue asks for them; ``metrics.json`` and PNG plots are written to
``output_dir``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from medclip.checkpoint import CheckpointDir
from medclip.data.dataset import ManifestDataset, report_text
from medclip.data.manifest import LABEL_PREFIX, label_columns, read_manifest
from medclip.fsutil import atomic_write
from medclip.inference.encoders import (
    FEATURE_KINDS,
    EmbeddingModel,
    describe_model,
    embed_images_and_backbone,
    embed_texts,
    load_model,
    model_preprocess,
)
from medclip.inference.thresholds import (
    AUROC_FLOOR,
    DEFAULT_THRESHOLD,
    FALLBACK,
    MIN_NEGATIVES,
    MIN_POSITIVES,
    CalibrationRules,
    OperatingPoint,
    calibrate,
    judge,
    save_thresholds,
)
from medclip.inference.zeroshot import PROMPT_STYLES, ZeroShotClassifier

from . import metrics as M

log = logging.getLogger(__name__)

TASKS = ("zeroshot", "retrieval", "report", "fewshot", "attributes")
METRICS_FILE = "metrics.json"


@dataclass
class EvalOptions:
    """Settings shared by the tasks."""

    split: str = "test"
    val_split: str | None = "val"
    train_split: str = "train"
    findings: list[str] | None = None  # None: every label column the graph knows
    text_field: str = "body"
    style: str = "ensemble"
    unmentioned_as_negative: bool = False  # NaN labels count as negative (labeler output) instead of unknown
    n_boot: int = 1000
    seed: int = 0
    batch_size: int = 32
    num_workers: int = 0
    use_faiss: bool | str = "auto"
    shots: tuple[int, ...] = (1, 4, 16)
    fewshot_trials: int = 5
    #: what the few-shot probes see: "backbone" (the encoder's features before the projection, CLIP's own
    #: linear-probe choice and the default) or "embedding" (the normalised joint embedding zero-shot scores)
    fewshot_features: str = "backbone"
    #: saved few-shot classifiers (``medclip adapt``, ``<checkpoint>/adapters/<method>/``) scored beside zero-shot
    adapters: list[str] | None = None
    criterion: str = "youden"
    min_positives: int = MIN_POSITIVES  # validation support an operating point needs to count as calibrated
    min_negatives: int = MIN_NEGATIVES
    auroc_floor: float = AUROC_FLOOR  # validation AUROC CI lower bound a point needs to raise the triage priority
    max_images: int | None = None  # cap per split (quick looks), patients kept whole


@dataclass
class EmbeddedSplit:
    """One manifest split with its image embeddings."""

    frame: pd.DataFrame
    image_features: torch.Tensor
    texts: list[str] = field(default_factory=list)
    #: the backbone's pooled output before the projection (None for models without one, e.g. open_clip)
    backbone_features: torch.Tensor | None = None

    def features(self, kind: str) -> torch.Tensor:
        """``"embedding"`` (:attr:`image_features`) or ``"backbone"`` (pre-projection) features."""
        if kind not in FEATURE_KINDS:
            raise ValueError(f"image features must be one of {FEATURE_KINDS}, got {kind!r}")
        if kind == "backbone":
            if self.backbone_features is None:
                raise ValueError("this model has no pre-projection image features (use the embedding)")
            return self.backbone_features
        return self.image_features

    def labels(self, findings: Sequence[str], unmentioned_as_negative: bool = False) -> np.ndarray:
        """(N, F) labels: 1 / 0 known, NaN unknown (uncertain -1 and, unless asked otherwise, not mentioned)."""
        out = np.full((len(self.frame), len(findings)), np.nan)
        for j, cid in enumerate(findings):
            col = LABEL_PREFIX + cid
            if col not in self.frame:
                continue
            v = pd.to_numeric(self.frame[col], errors="coerce").to_numpy(dtype=float)
            if unmentioned_as_negative:
                v = np.where(np.isnan(v), 0.0, v)
            out[:, j] = np.where(np.isin(v, (0.0, 1.0)), v, np.nan)
        return out

    @property
    def patients(self) -> np.ndarray:
        return self.frame["patient_id"].astype(str).to_numpy()

    @property
    def studies(self) -> np.ndarray:
        return self.frame["study_id"].astype(str).to_numpy()


class Evaluator:
    """Holds a model, a manifest and the embedded splits; each ``run_<task>`` returns a JSON-able dict."""

    def __init__(
        self,
        model: EmbeddingModel,
        manifest: str | Path | pd.DataFrame,
        options: EvalOptions | None = None,
        output_dir: str | Path | None = None,
        checkpoint_dir: str | Path | None = None,
    ) -> None:
        self.model = model.eval()
        self.options = options or EvalOptions()
        self.manifest_path = None if isinstance(manifest, pd.DataFrame) else Path(manifest)
        self.frame = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
        for col in ("image_id", "patient_id", "study_id", "split"):
            if col not in self.frame:
                raise ValueError(f"{self.manifest_path or 'manifest'}: missing column {col!r}")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.checkpoint = CheckpointDir(checkpoint_dir) if checkpoint_dir is not None else None
        #: the folder saved adapters are read from (the evaluated checkpoint folder)
        self.adapter_dir: CheckpointDir | None = self.checkpoint
        self.calibration_rules()  # bad rules (e.g. --min-positives 0) stop before any image is embedded
        self._splits: dict[str, EmbeddedSplit] = {}
        self._zeroshot: ZeroShotClassifier | None = None
        self.plots: list[str] = []

    # ------------------------------------------------------------------ data
    def _where(self) -> str:
        return str(self.manifest_path) if self.manifest_path else "manifest"

    def dataset(self, frame: pd.DataFrame) -> ManifestDataset:
        """The images of ``frame`` as the model sees them: the checkpoint's saved preprocessing (window,
        size, slice; :func:`medclip.inference.model_preprocess`), so a model trained on a lung-window cache
        is evaluated on lung-window pixels."""
        return ManifestDataset(
            frame, config=model_preprocess(self.model), text_field=self.options.text_field, label_names=[]
        )

    def split(self, name: str) -> EmbeddedSplit:
        """The embedded split ``name`` (computed once)."""
        if name not in self._splits:
            df = self.frame[self.frame["split"] == name]
            if df.empty:
                have = sorted(self.frame["split"].dropna().unique())
                raise ValueError(f"{self._where()}: no rows in split {name!r} (splits present: {have})")
            if self.options.max_images and len(df) > self.options.max_images:
                rng = np.random.default_rng(self.options.seed)
                patients = df["patient_id"].unique()
                keep, n = [], 0
                for p in rng.permutation(patients):
                    n += int((df["patient_id"] == p).sum())
                    keep.append(p)
                    if n >= self.options.max_images:
                        break
                df = df[df["patient_id"].isin(keep)]
            df = df.reset_index(drop=True)
            dataset = self.dataset(df)
            log.info("embedding %d images of split %s", len(df), name)
            feats, backbone = embed_images_and_backbone(
                self.model, dataset, self.options.batch_size, self.options.num_workers
            )
            texts = [report_text(r, self.options.text_field) for r in df.to_dict("records")]
            self._splits[name] = EmbeddedSplit(df, feats, texts, backbone)
        return self._splits[name]

    def findings(self) -> list[str]:
        """The findings evaluated: label columns the knowledge graph has prompts for (or the ones asked for)."""
        from medclip.knowledge import Graph

        graph = Graph.load()
        present = [c[len(LABEL_PREFIX) :] for c in label_columns(self.frame)]
        if self.options.findings:
            wanted = graph.resolve(self.options.findings)
            missing = [f for f in wanted if f not in present]
            if missing:
                raise ValueError(f"{self._where()}: no label column for {missing} (have {present})")
            return wanted
        if not self.options.unmentioned_as_negative:  # a column with no 0/1 value cannot be scored
            present = [
                f
                for f in present
                if pd.to_numeric(self.frame[LABEL_PREFIX + f], errors="coerce").isin((0.0, 1.0)).any()
            ]
        usable = [f for f in present if f in graph]
        skipped = [f for f in present if f not in graph]
        if skipped:
            log.warning("label columns without knowledge-graph prompts are skipped: %s", skipped)
        if not usable:
            raise ValueError(
                f"{self._where()}: no label.<finding> column with known (0/1) labels that the "
                f"knowledge graph has prompts for (run `medclip label` first)"
            )
        return usable

    def zeroshot_classifier(self, style: str | None = None) -> ZeroShotClassifier:
        """The zero-shot classifier over :meth:`findings` (the default style is cached)."""
        style = style or self.options.style
        if style == self.options.style and self._zeroshot is not None:
            return self._zeroshot
        clf = ZeroShotClassifier.from_model(self.model, self.findings(), style=style)
        if style == self.options.style:
            self._zeroshot = clf
        return clf

    def _validation_record(self) -> dict[str, Any]:
        """Where operating points are chosen (kept in thresholds.json for the recalibration command)."""
        opt = self.options
        return {
            "manifest": str(self.manifest_path.resolve()) if self.manifest_path else None,
            "split": opt.val_split,
            "test_split": opt.split,
            "findings": opt.findings,
            "criterion": opt.criterion,
            "unmentioned_as_negative": opt.unmentioned_as_negative,
            "min_positives": opt.min_positives,
            "min_negatives": opt.min_negatives,
            "auroc_floor": opt.auroc_floor,
        }

    def calibration_rules(self) -> CalibrationRules:
        """When an operating point counts as calibrated and when it may raise the triage priority."""
        opt = self.options
        return CalibrationRules(
            min_positives=opt.min_positives, min_negatives=opt.min_negatives, auroc_floor=opt.auroc_floor
        )

    def _plot(self, fn, *args, name: str) -> None:
        if self.output_dir is None:
            return
        try:
            path = fn(*args, self.output_dir / name)
            self.plots.append(str(path))
        except Exception as exc:  # a plot failing must not lose the metrics
            log.warning("plot %s failed: %s", name, exc)

    def identity(self) -> dict[str, str | None]:
        """The model's fingerprint and the manifest's SHA-256 (computed once): what results belong to."""
        if not hasattr(self, "_identity"):
            from medclip.checkpoint import model_fingerprint
            from medclip.data.storage import content_fingerprint
            from medclip.model import DualEncoder

            self._identity = {
                "model_fingerprint": model_fingerprint(self.model) if isinstance(self.model, DualEncoder) else None,
                "manifest_sha256": content_fingerprint(self.manifest_path) if self.manifest_path else None,
            }
        return self._identity

    def _save_scores(self, split: EmbeddedSplit, prob: np.ndarray, findings: Sequence[str]) -> None:
        """Keep the split's zero-shot probabilities beside metrics.json (``scores/``) for ``medclip report``."""
        ident = self.identity()
        if self.output_dir is None or ident["model_fingerprint"] is None or ident["manifest_sha256"] is None:
            return
        from .scores import save_scores, scores_path

        name = str(split.frame["split"].iloc[0]) if len(split.frame) else self.options.split
        try:
            save_scores(
                scores_path(self.output_dir, ident["manifest_sha256"], name),
                split.frame["image_id"].astype(str).tolist(),
                np.asarray(prob),
                findings,
                model_fingerprint=ident["model_fingerprint"],
                manifest_sha256=ident["manifest_sha256"],
                style=self.options.style,
            )
        except OSError as exc:  # the metrics still get written
            log.warning("could not keep the zero-shot scores for medclip report (%s)", exc)

    # ------------------------------------------------------------------ zero-shot
    def run_zeroshot(self) -> dict[str, Any]:
        """AUROC / AUPRC / F1 / accuracy per finding with patient-bootstrap CIs, thresholds from the
        validation split, calibration, multi-class softmax AUROC, and the prompt-style sweep."""
        from .plots import plot_prompt_sensitivity, plot_reliability, plot_roc_curves

        opt = self.options
        test = self.split(opt.split)
        clf = self.zeroshot_classifier()
        findings = clf.findings
        y = test.labels(findings, opt.unmentioned_as_negative)
        prob = clf.predict_proba(test.image_features)
        self._save_scores(test, prob, findings)
        multi = clf.predict_multiclass(test.image_features)

        rules = self.calibration_rules()
        points = {
            f: judge(OperatingPoint(DEFAULT_THRESHOLD, FALLBACK, reason="no validation split"), rules) for f in findings
        }
        calibrated_on = None
        threshold_source = "default 0.5"
        saved_to = None
        if opt.val_split and (self.frame["split"] == opt.val_split).any():
            val = self.split(opt.val_split)
            y_val = val.labels(findings, opt.unmentioned_as_negative)
            p_val = clf.predict_proba(val.image_features)
            val_auroc = {}
            for j, cid in enumerate(findings):
                known = ~np.isnan(y_val[:, j])
                val_auroc[cid] = M.bootstrap_ci(
                    M.auroc,
                    y_val[known, j],
                    p_val[known, j],
                    groups=val.patients[known],
                    n_boot=opt.n_boot,
                    seed=opt.seed,
                ).to_dict()
            points = calibrate(
                y_val,
                p_val,
                findings,
                opt.criterion,
                split=opt.val_split,
                auroc=val_auroc,
                groups=val.patients,
                n_boot=opt.n_boot,
                seed=opt.seed,
                rules=rules,
            )
            threshold_source = f"{opt.criterion} on split {opt.val_split!r}"
            calibrated_on = opt.val_split
            if self.checkpoint is not None:
                saved_to = str(
                    save_thresholds(
                        self.checkpoint.path,
                        points,
                        criterion=opt.criterion,
                        validation=self._validation_record(),
                        rules=rules,
                    )
                )
        thresholds = {cid: p.threshold for cid, p in points.items()}

        per_finding: dict[str, dict] = {}
        curves = {}
        pooled_y, pooled_p = [], []
        for j, cid in enumerate(findings):
            known = ~np.isnan(y[:, j])
            yj, pj, groups = y[known, j], prob[known, j], test.patients[known]
            t = thresholds[cid]
            boot = dict(groups=groups, n_boot=opt.n_boot, seed=opt.seed)
            entry: dict[str, Any] = {
                "n": int(known.sum()),
                "positives": int(yj.sum()),
                "threshold": t,
                "threshold_calibrated": points[cid].calibrated,
                "threshold_method": points[cid].method,
                "can_raise_priority": bool(points[cid].can_raise_priority),
                "auroc": M.bootstrap_ci(M.auroc, yj, pj, **boot).to_dict(),
                "auprc": M.bootstrap_ci(M.auprc, yj, pj, **boot).to_dict(),
                "f1": M.bootstrap_ci(M.f1_at(t), yj, pj, **boot).to_dict(),
                "accuracy": M.bootstrap_ci(M.accuracy_at(t), yj, pj, **boot).to_dict(),
                "ece": M.expected_calibration_error(yj, pj) if yj.size else math.nan,
                "auroc_multiclass_softmax": M.auroc(yj, multi[known, j]) if yj.size else math.nan,
            }
            per_finding[cid] = entry
            if yj.size and 0 < yj.sum() < yj.size:
                from sklearn.metrics import roc_curve

                fpr, tpr, _ = roc_curve(yj, pj)
                curves[cid] = (fpr, tpr, entry["auroc"]["value"])
            pooled_y.append(yj)
            pooled_p.append(pj)
        pooled_y_arr, pooled_p_arr = np.concatenate(pooled_y), np.concatenate(pooled_p)
        table = M.reliability_table(pooled_y_arr, pooled_p_arr)
        ece = M.expected_calibration_error(pooled_y_arr, pooled_p_arr)

        sweep: dict[str, dict[str, float]] = {}
        for style in PROMPT_STYLES:
            p_style = self.zeroshot_classifier(style).predict_proba(test.image_features)
            sweep[style] = {}
            for j, cid in enumerate(findings):
                known = ~np.isnan(y[:, j])
                sweep[style][cid] = M.auroc(y[known, j], p_style[known, j]) if known.any() else math.nan
        spread = {cid: _spread([sweep[s][cid] for s in PROMPT_STYLES]) for cid in findings}
        mean_by_style = {s: _nanmean(sweep[s].values()) for s in PROMPT_STYLES}

        self._plot(plot_roc_curves, curves, name="zeroshot_roc.png")
        self._plot(plot_reliability, table, ece, name="zeroshot_calibration.png")
        self._plot(plot_prompt_sensitivity, sweep, name="zeroshot_prompt_sensitivity.png")
        return {
            "split": opt.split,
            "style": opt.style,
            "findings": findings,
            "threshold_source": threshold_source,
            "thresholds_saved_to": saved_to,
            "operating_points": (
                {
                    "split": calibrated_on,
                    "rules": rules.to_dict(),
                    "findings": {cid: p.to_dict() for cid, p in points.items()},
                }
                if calibrated_on is not None
                else None
            ),
            "per_finding": per_finding,
            "mean_auroc": _nanmean(e["auroc"]["value"] for e in per_finding.values()),
            "mean_auroc_multiclass_softmax": _nanmean(e["auroc_multiclass_softmax"] for e in per_finding.values()),
            "ece": ece,
            "reliability": {k: v.tolist() for k, v in table.items()},
            "prompt_sensitivity": {
                "auroc": sweep,
                "spread": spread,
                "mean_auroc": mean_by_style,
                "mean_spread": _spread(list(mean_by_style.values())),
            },
        }

    # ------------------------------------------------------------------ retrieval
    def _reports(self, split: EmbeddedSplit) -> tuple[list[str], list[str], np.ndarray]:
        """Unique (study, report) pairs of a split, and which image rows have text."""
        has_text = np.array([bool(t) for t in split.texts])
        if not has_text.any():
            raise ValueError(
                f"{self._where()}: split {split.frame['split'].iloc[0]!r} has no report text "
                f"in field {self.options.text_field!r}"
            )
        pairs = dict.fromkeys((s, t) for s, t, h in zip(split.studies, split.texts, has_text) if h)
        return [t for _, t in pairs], [s for s, _ in pairs], has_text

    def run_retrieval(self) -> dict[str, Any]:
        """Image->report and report->image Recall@1/5/10 and median rank at study level."""
        from .plots import plot_recall_curves
        from .retrieval import evaluate_retrieval

        test = self.split(self.options.split)
        texts, text_studies, has_text = self._reports(test)
        text_features = embed_texts(self.model, texts, self.options.batch_size)
        result: dict[str, Any] = evaluate_retrieval(
            test.image_features[torch.from_numpy(has_text)],
            text_features,
            test.studies[has_text],
            text_studies,
            use_faiss=self.options.use_faiss,
        )
        ranks = result.pop("ranks")
        n_studies = result["n_studies"]
        result["chance_R@10"] = min(1.0, 10 / max(len(texts), 1))
        result["split"] = self.options.split
        self._plot(plot_recall_curves, ranks, name="retrieval_recall.png")
        log.info("retrieval over %d studies", n_studies)
        return result

    # ------------------------------------------------------------------ drafting
    def build_drafter(self):
        """A :class:`ReportDrafter` over the training split's reports, under the one corpus policy
        (:func:`medclip.inference.drafting.drafting_corpus`) the demo's drafter has too."""
        from medclip.inference.drafting import ReportDrafter, drafting_corpus

        train_rows = self.frame[self.frame["split"] == self.options.train_split]
        corpus = drafting_corpus(train_rows.to_dict("records"))
        if not corpus:
            raise ValueError(f"{self._where()}: split {self.options.train_split!r} has no report text to draft from")
        return ReportDrafter.build(self.model, corpus, self.options.batch_size)

    def run_report(self, examples: int = 3) -> dict[str, Any]:
        """Retrieval-based drafts for the test images, scored against their true reports."""
        from medclip.knowledge import ReportLabeler

        from .drafting import score_drafts

        test = self.split(self.options.split)
        _, _, has_text = self._reports(test)
        drafter = self.build_drafter()
        if self.checkpoint is not None:
            source = {
                "manifest": str(self.manifest_path.resolve()) if self.manifest_path else None,
                "split": self.options.train_split,
            }
            fingerprint = self.checkpoint.fingerprint() if self.checkpoint.is_model() else None  # open_clip: none
            drafter.save(self.checkpoint.drafter, model_fingerprint=fingerprint, source=source)
        rows = np.flatnonzero(has_text)
        drafts = [drafter.draft(test.image_features[i]) for i in rows]
        references = [test.texts[i] for i in rows]
        labeler = ReportLabeler()
        scores = score_drafts([d.text for d in drafts], references, labeler)
        # reference points: the single nearest training report verbatim, and a random training report
        nearest = [drafter.corpus_report(d.neighbours[0]).text for d in drafts]
        rng = np.random.default_rng(self.options.seed)
        random_reports = [drafter.corpus_report(int(i)).text for i in rng.integers(0, len(drafter), len(rows))]
        scores["nearest_report"] = {
            k: v for k, v in score_drafts(nearest, references, labeler).items() if k != "per_finding"
        }
        scores["random_report"] = {
            k: v for k, v in score_drafts(random_reports, references, labeler).items() if k != "per_finding"
        }
        scores["corpus_reports"] = len(drafter)
        scores["split"] = self.options.split
        scores["examples"] = [{"draft": d.text, "truth": r} for d, r in list(zip(drafts, references))[:examples]]
        if self.checkpoint is not None:
            scores["drafter_saved_to"] = str(self.checkpoint.drafter)
        return scores

    # ------------------------------------------------------------------ few-shot
    def run_fewshot(self) -> dict[str, Any]:
        """Linear probe and GDA with k shots per class (from the training split), alone and + zero-shot."""
        from .fewshot import evaluate_fewshot
        from .plots import plot_fewshot

        opt = self.options
        if opt.fewshot_features not in FEATURE_KINDS:
            raise ValueError(f"few-shot features must be one of {FEATURE_KINDS}, got {opt.fewshot_features!r}")
        train, test = self.split(opt.train_split), self.split(opt.split)
        kind, note = opt.fewshot_features, None
        if kind == "backbone" and train.backbone_features is None:
            kind, note = "embedding", "this model has no pre-projection features"
            log.warning("few-shot probes use the embedding: %s", note)
        clf = self.zeroshot_classifier()
        findings = clf.findings
        result = evaluate_fewshot(
            train.features(kind).numpy(),
            train.labels(findings, opt.unmentioned_as_negative),
            test.features(kind).numpy(),
            test.labels(findings, opt.unmentioned_as_negative),
            findings,
            zeroshot_logits=clf.logits(test.image_features).numpy(),
            shots=opt.shots,
            trials=opt.fewshot_trials,
            seed=opt.seed,
            train_groups=train.patients,
            train_zeroshot_logits=clf.logits(train.image_features).numpy(),
        )
        result["split"] = opt.split
        result["features"] = {"kind": kind, "dim": int(train.features(kind).shape[1])}
        if note:
            result["features"]["note"] = note
        self._plot(plot_fewshot, result, name="fewshot_auroc.png")
        return result

    def run_adapted(self) -> dict[str, Any]:
        """Saved few-shot classifiers (``medclip adapt``) on the test split: AUROC with patient-bootstrap CIs
        per finding, beside zero-shot, and each classifier's provenance."""
        from medclip.adapt.runner import classifier_logits
        from medclip.adapt.store import describe_adapter, load_adapter

        opt = self.options
        if self.adapter_dir is None:
            raise ValueError("scoring saved adapters needs the checkpoint folder they were saved in")
        test = self.split(opt.split)
        out: dict[str, Any] = {"split": opt.split, "classifiers": {}}
        zs = self.zeroshot_classifier()
        for method in opt.adapters or []:
            clf, meta = load_adapter(self.adapter_dir, method)
            y = test.labels(clf.findings, opt.unmentioned_as_negative)
            logits = classifier_logits(clf, self, opt.split).numpy()
            zs_all = dict(zip(zs.findings, zs.logits(test.image_features).numpy().T, strict=True))
            per: dict[str, Any] = {}
            for j, cid in enumerate(clf.findings):
                known = ~np.isnan(y[:, j])
                boot = dict(groups=test.patients[known], n_boot=opt.n_boot, seed=opt.seed)
                per[cid] = {
                    "n": int(known.sum()),
                    "positives": int(y[known, j].sum()),
                    "auroc": M.bootstrap_ci(M.auroc, y[known, j], logits[known, j], **boot).to_dict(),
                    "zeroshot_auroc": (
                        M.bootstrap_ci(M.auroc, y[known, j], zs_all[cid][known], **boot).to_dict()
                        if cid in zs_all
                        else None
                    ),
                }
            out["classifiers"][method] = {
                "per_finding": per,
                "provenance": meta.get("provenance", {}),
                "features": meta["features"],
                "description": describe_adapter(meta),
            }
        return out

    def run_attributes(self) -> dict[str, Any]:
        """Categorical zero-shot (modality, plane, body region, subtype) on the manifest columns that have them."""
        from .attributes import evaluate_attributes

        test = self.split(self.options.split)
        return evaluate_attributes(
            self.model, test.frame, test.image_features, n_boot=self.options.n_boot, seed=self.options.seed
        )

    def run(self, tasks: Iterable[str]) -> dict[str, Any]:
        """Run the tasks in order; returns {task: result} plus model and data descriptions."""
        tasks = list(dict.fromkeys(tasks))
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {TASKS}")
        out: dict[str, Any] = {
            "model": describe_model(self.model),
            "manifest": self.manifest_path.name if self.manifest_path else None,
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self.options).items()},
            **self.identity(),
        }
        for task in tasks:
            log.info("task %s", task)
            out[task] = getattr(self, f"run_{task}")()
        if self.options.adapters:
            log.info("saved adapters %s", self.options.adapters)
            out["adapted"] = self.run_adapted()
        out["data"] = {
            name: {
                "images": len(s.frame),
                "patients": int(s.frame["patient_id"].nunique()),
                "studies": int(s.frame["study_id"].nunique()),
            }
            for name, s in self._splits.items()
        }
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            out["plots"] = list(self.plots)
            text = json.dumps(jsonable(out), indent=2, allow_nan=False) + "\n"
            # all or nothing: a full disk leaves the previous metrics.json (DiskFullError names the file)
            with atomic_write(self.output_dir / METRICS_FILE) as tmp:
                tmp.write_text(text, encoding="utf-8")
        return out


def evaluate(
    checkpoint: str | Path | EmbeddingModel,
    manifest: str | Path | pd.DataFrame,
    tasks: Sequence[str] = TASKS,
    output_dir: str | Path | None = None,
    save_to_checkpoint: bool = False,
    device: str = "cpu",
    **options: Any,
) -> dict[str, Any]:
    """Evaluate a checkpoint folder (medclip or open_clip, see :func:`load_model`) or a loaded model on a
    manifest. ``options`` are :class:`EvalOptions` fields. With ``save_to_checkpoint`` the chosen
    thresholds (``thresholds.json``) and the report drafter (``drafter/``) are written into the
    checkpoint folder for the demo."""
    opts = EvalOptions(**options)
    model = checkpoint if isinstance(checkpoint, nn.Module) else load_model(checkpoint, device=device)
    ckpt_dir = None
    if save_to_checkpoint:
        if isinstance(checkpoint, nn.Module) or not Path(str(checkpoint)).is_dir():
            raise ValueError("save_to_checkpoint needs a checkpoint folder")
        ckpt_dir = Path(str(checkpoint))
    evaluator = Evaluator(model, manifest, opts, output_dir=output_dir, checkpoint_dir=ckpt_dir)
    if opts.adapters and not isinstance(checkpoint, nn.Module):
        evaluator.adapter_dir = CheckpointDir.open(str(checkpoint))
    return evaluator.run(tasks)


# ---------------------------------------------------------------------- presentation
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, dict) and "value" in v:
        fields: list[Any] = [math.nan if v[k] is None else v[k] for k in ("value", "low", "high", "n", "n_groups")]
        return str(M.Estimate(*fields))
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _unscored(finding: str, entry: dict[str, Any]) -> str:
    """``"covid19_pneumonia (11 positives, 0 negatives)"`` / ``"infiltrate (no labelled images)"``."""
    n, pos = int(entry["n"]), int(entry["positives"])
    return f"{finding} (no labelled images)" if n == 0 else f"{finding} ({pos} positives, {n - pos} negatives)"


def format_results(results: dict[str, Any]) -> str:
    """Human-readable tables of :func:`evaluate`'s results."""
    parts = []
    if "zeroshot" in results:
        z = results["zeroshot"]
        rows = [
            [
                cid,
                e["n"],
                e["positives"],
                _fmt(e["auroc"]),
                _fmt(e["auprc"]),
                _fmt(e["f1"]),
                _fmt(e["accuracy"]),
                _fmt(e["threshold"], 2) + ("" if e.get("threshold_calibrated", True) else "*"),
                _fmt(e["ece"]),
                _fmt(e["auroc_multiclass_softmax"]),
                _fmt(z["prompt_sensitivity"]["spread"].get(cid)),
            ]
            for cid, e in z["per_finding"].items()
            if 0 < e["positives"] < e["n"]
        ]
        skipped = [_unscored(cid, e) for cid, e in z["per_finding"].items() if not 0 < e["positives"] < e["n"]]
        uncalibrated = [cid for cid, e in z["per_finding"].items() if not e.get("threshold_calibrated", True)]
        parts.append(
            f"Zero-shot diagnosis (split {z['split']}, prompts {z['style']}, thresholds: {z['threshold_source']}; "
            "95% CIs by patient bootstrap"
            + (
                f"; * not calibrated (0.5 fallback): {len(uncalibrated)} of {len(z['per_finding'])}"
                if uncalibrated
                else ""
            )
            + ")\n"
            + _table(
                [
                    "finding",
                    "n",
                    "pos",
                    "AUROC",
                    "AUPRC",
                    "F1",
                    "accuracy",
                    "thr",
                    "ECE",
                    "AUROC(multi)",
                    "prompt spread",
                ],
                rows,
            )
            + (
                f"\nnot evaluated (no AUROC without positives and negatives in split {z['split']!r}): "
                + "; ".join(skipped)
                if skipped
                else ""
            )
        )
        ps = z["prompt_sensitivity"]["mean_auroc"]
        parts.append(
            f"mean AUROC {_fmt(z['mean_auroc'])}; pooled ECE {_fmt(z['ece'])}; mean AUROC by prompt style: "
            + ", ".join(f"{s} {_fmt(v)}" for s, v in ps.items())
        )
        if z.get("operating_points"):
            parts.append(format_operating_points(z["operating_points"], z.get("thresholds_saved_to")))
    if "retrieval" in results:
        r = results["retrieval"]
        rows = [
            [
                d.replace("_", " "),
                _fmt(r[d]["R@1"]),
                _fmt(r[d]["R@5"]),
                _fmt(r[d]["R@10"]),
                _fmt(r[d]["median_rank"], 1),
                r[d]["n_queries"],
                r[d]["gallery_size"],
            ]
            for d in ("image_to_report", "report_to_image")
        ]
        parts.append(
            f"Retrieval (split {r['split']}, study level, {r['n_studies']} studies)\n"
            + _table(["direction", "R@1", "R@5", "R@10", "median rank", "queries", "gallery"], rows)
        )
    if "report" in results:
        d = results["report"]
        rows = [["retrieval draft", _fmt(d["macro_f1"]), _fmt(d["micro_f1"]), _fmt(d["bleu4"]), _fmt(d["rouge_l"])]]
        for key, label in (("nearest_report", "nearest report"), ("random_report", "random report")):
            s = d[key]
            rows.append([label, _fmt(s["macro_f1"]), _fmt(s["micro_f1"]), _fmt(s["bleu4"]), _fmt(s["rouge_l"])])
        parts.append(
            f"Report drafting ({d['n_reports']} reports, corpus {d['corpus_reports']} training reports)\n"
            + _table(["method", "macro F1", "micro F1", "BLEU-4", "ROUGE-L"], rows)
        )
    if "fewshot" in results:
        f = results["fewshot"]
        by_k = {int(k): v for k, v in f["shots"].items()}  # int keys in memory, str keys after JSON
        shots = sorted(by_k)
        methods = sorted({m for v in by_k.values() for m in v}, key=str)
        rows = [[m, *(_fmt(by_k[k][m]["mean"]) for k in shots)] for m in methods]
        if "zeroshot" in f:
            rows.append(["zeroshot", *([_fmt(f["zeroshot"]["mean"])] * len(shots))])
        feats = f.get("features") or {"kind": "embedding"}
        what = (
            f"the encoder's {feats.get('dim', '')}-d features before the projection"
            if feats["kind"] == "backbone"
            else "the model's normalised image embedding"
        ).replace(" -d", "")
        if feats.get("note"):
            what += f" ({feats['note']})"
        parts.append(
            f"Few-shot mean AUROC (mean of {f['trials']} draws of the shots; probes on {what})\n"
            + _table(["method", *(f"k={k}" for k in shots)], rows)
        )
    if "adapted" in results:
        a = results["adapted"]
        rows = []
        for method, c in a["classifiers"].items():
            for cid, r in c["per_finding"].items():
                rows.append([method, cid, str(r["n"]), _ci(r["auroc"]), _ci(r["zeroshot_auroc"])])
        parts.append(
            f"Saved few-shot classifiers on split {a['split']} (AUROC, 95% patient-bootstrap CI)\n"
            + _table(["classifier", "finding", "n", "AUROC", "zero-shot AUROC"], rows)
            + "".join(f"\n  {c['description']}" for c in a["classifiers"].values())
        )
    if "attributes" in results:
        from .attributes import format_attributes

        parts.append(format_attributes(results["attributes"]))
    return "\n\n".join(parts)


def _ci(estimate: Any) -> str:
    """``0.81 [0.61, 0.93]`` of a stored estimate dict, 2 decimals (``n/a`` when undefined)."""
    if not isinstance(estimate, dict) or estimate.get("value") is None:
        return "n/a"
    if estimate.get("low") is None or estimate.get("high") is None:
        return f"{estimate['value']:.2f}"
    return f"{estimate['value']:.2f} [{estimate['low']:.2f}, {estimate['high']:.2f}]"


def format_operating_points(operating_points: dict[str, Any], saved_to: str | None = None) -> str:
    """One short table: per finding the operating point chosen on validation (the probability at which it
    flags, validation sensitivity / specificity with 95% CIs) and whether it is calibrated and may raise
    the triage priority, with the reason."""
    rules = operating_points.get("rules") or {}
    rows = []
    for cid, point in operating_points["findings"].items():
        if point.get("method") == FALLBACK:
            cell = "-"
            status = f"not calibrated: {point.get('reason') or 'no reason recorded'}"
        else:
            cell = (
                f"p >= {point['threshold']:.2f}; sens {_ci(point.get('sensitivity'))}, "
                f"spec {_ci(point.get('specificity'))}"
            )
            if point.get("can_raise_priority"):
                status = f"may raise priority ({point.get('priority_reason', '')})"
            else:
                status = f"calibrated, cannot raise priority: {point.get('priority_reason', '')}"
        rows.append([cid, cell, status])
    n_ok = sum(1 for p in operating_points["findings"].values() if p.get("method") != FALLBACK)
    n_raise = sum(1 for p in operating_points["findings"].values() if p.get("can_raise_priority"))
    title = (
        f"Operating points (split {operating_points.get('split')!r}): {n_ok} of {len(rows)} calibrated "
        f"(>= {rules.get('min_positives')} positives, >= {rules.get('min_negatives')} negatives, flagging neither "
        f"~0% nor ~100%), {n_raise} may raise the triage priority (validation AUROC CI lower bound > "
        f"{rules.get('auroc_floor')})" + (f"; saved to {saved_to}" if saved_to else "")
    )
    return title + "\n" + _table(["finding", "operating point (validation)", "status"], rows)


def _nanmean(values: Iterable[float | None]) -> float:
    arr = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    return float(arr.mean()) if arr.size else math.nan


def _spread(values: Sequence[float]) -> float:
    arr = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    return float(arr.max() - arr.min()) if arr.size else math.nan


def jsonable(obj: Any, digits: int | None = None) -> Any:
    """For strict JSON: NaN/Inf -> None, numpy -> Python, tuples and sets -> lists, keys -> str; floats rounded to
    ``digits`` decimals when given (eval, adapt and the report write their results through it)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), digits)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        if math.isnan(value) or math.isinf(value):
            return None
        return value if digits is None else round(value, digits)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
