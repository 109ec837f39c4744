"""The triage engine behind the demo: everything loaded once, one call per image.

:class:`TriageEngine` holds the model, the zero-shot classifier (prompt embeddings computed once),
the evaluation's operating points, the knowledge-graph cards, the reference gallery and the
report drafter. :meth:`TriageEngine.model_view` turns an upload into exactly the array the model
sees (window/level, slice, letterbox resize); :meth:`TriageEngine.predict` returns ranked findings,
a triage priority, similar studies and a drafted report.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medclip.checkpoint import CheckpointDir
from medclip.inference.drafting import DraftedReport, ReportDrafter
from medclip.inference.encoders import EmbeddingModel, model_preprocess
from medclip.inference.thresholds import (
    DEFAULT_UNCERTAIN_MARGIN,
    OperatingPoint,
    load_operating_points,
    recalibrate_command,
)
from medclip.inference.zeroshot import DEFAULT_FINDINGS, ZeroShotClassifier
from medclip.io import MedicalImage
from medclip.io.windowing import WindowSpec
from medclip.knowledge import Graph
from medclip.model.dual_encoder import DualEncoder
from medclip.model.preprocess import PreprocessConfig, preprocess

from .gallery import GALLERY_INFO, Gallery, GalleryMatch
from .triage import ConceptCard, FindingResult, TriagePriority, concept_card, rank_findings, triage_priority
from .uploads import LoadedStudy

__all__ = ["TriageEngine", "TriageResult", "default_gallery_dir"]


def default_gallery_dir(checkpoint_dir: str | Path) -> Path:
    """The gallery folder that belongs to a checkpoint: ``<checkpoint>/gallery`` (:attr:`CheckpointDir.gallery`)."""
    return CheckpointDir(checkpoint_dir).gallery


@dataclass
class TriageResult:
    """One prediction: ranked findings, study priority, similar studies, drafted report, timings (s)."""

    findings: list[FindingResult]
    priority: TriagePriority
    similar: list[GalleryMatch]
    draft: DraftedReport | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def report_text(self) -> str:
        """The drafted report as the user copies it (empty without a gallery)."""
        if self.draft is None:
            return ""
        parts = []
        if self.draft.findings:
            parts.append(f"FINDINGS: {self.draft.findings}")
        if self.draft.impression:
            parts.append(f"IMPRESSION: {self.draft.impression}")
        return "\n\n".join(parts)


class TriageEngine:
    """Model + zero-shot classifier + operating points + knowledge cards + gallery + drafter."""

    def __init__(
        self,
        model: EmbeddingModel,
        *,
        findings: str | Iterable[str] | None = None,
        thresholds: Mapping[str, float | OperatingPoint] | None = None,
        uncertain_margin: float = DEFAULT_UNCERTAIN_MARGIN,
        gallery: Gallery | None = None,
        drafter: ReportDrafter | None = None,
        graph: Graph | None = None,
        checkpoint_dir: Path | None = None,
        gallery_note: str = "",
        k_similar: int = 4,
    ) -> None:
        #: a 3D checkpoint (CT/MR volume tower): it reads volumes (a DICOM series or a NIfTI upload)
        self.is_volume = bool(getattr(getattr(getattr(model, "config", None), "vision", None), "is_volume", False))
        self.model = model.eval()
        self.graph = graph or Graph.load()
        self.classifier = ZeroShotClassifier.from_model(
            self.model, DEFAULT_FINDINGS if findings is None else findings, graph=self.graph
        )
        self.thresholds = dict(thresholds or {})
        self.uncertain_margin = float(uncertain_margin)
        self.cards: dict[str, ConceptCard] = {
            cid: concept_card(self.graph, cid) for cid in self.classifier.findings if cid in self.graph
        }
        self.gallery = gallery
        self.drafter = drafter
        self.checkpoint_dir = checkpoint_dir
        self.gallery_note = gallery_note
        self.k_similar = k_similar
        #: what the model sees: the checkpoint's saved preprocessing (window, size, slice choice)
        self.preprocess: PreprocessConfig = model_preprocess(self.model)
        if self.is_volume and isinstance(self.model, DualEncoder) and self.model.config.preprocess is None:
            # no saved grid: the tower's input size (an int is a cube, as in the vision tower)
            size = self.model.config.vision.image_size
            self.preprocess = self.preprocess.with_(volume_shape=(size,) * 3 if isinstance(size, int) else tuple(size))
        self.image_size = self.preprocess.image_size
        #: a few-shot classifier of ``medclip adapt`` that scores the findings instead of zero-shot (None: zero-shot)
        self.adapter: Any = None
        self.adapter_description = ""

    @classmethod
    def load(
        cls,
        checkpoint_dir: str | Path,
        gallery_dir: str | Path | None = None,
        *,
        findings: str | Iterable[str] | None = None,
        adapter: str | None = None,
    ) -> TriageEngine:
        """Load a checkpoint folder, its thresholds, its report drafter and a gallery (default
        ``<checkpoint>/gallery``, optional).

        A missing default gallery only disables similar studies, a missing ``<checkpoint>/drafter``
        only the drafted report (the note says how to make each); a named gallery that cannot be
        used raises :class:`GalleryError`. The drafter is the one ``medclip eval --save-to-checkpoint``
        scored and saved. ``adapter`` names a few-shot classifier ``medclip adapt`` saved in the checkpoint
        (``adapters/<method>/``): it scores its findings instead of zero-shot, and the page names it with its
        provenance; thresholds.json was chosen on zero-shot scores, so no operating point applies to it
        (findings shown as not calibrated, none sets the priority).
        """
        checkpoint = CheckpointDir.open(checkpoint_dir)  # a folder or an hf-hub: id
        checkpoint_dir = checkpoint.path
        model = checkpoint.load_model()
        fingerprint = checkpoint.fingerprint()
        # operating points and drafter chosen for another model are refused (StaleFileError names the fix)
        points = load_operating_points(checkpoint_dir, model_fingerprint=fingerprint)
        gallery = drafter = None
        note = ""
        if checkpoint.drafter.is_dir():
            drafter = ReportDrafter.load(checkpoint.drafter, model_fingerprint=fingerprint)
        else:
            note = (note + " " if note else "") + (
                f"No report drafter in the checkpoint: the drafted report is off. `medclip eval --checkpoint "
                f"{checkpoint_dir} --manifest MANIFEST --task report --save-to-checkpoint` writes the one it scores."
            )
        directory = Path(gallery_dir) if gallery_dir is not None else checkpoint.gallery
        if gallery_dir is not None or (directory / GALLERY_INFO).is_file():
            gallery = Gallery.load(directory, model, checkpoint=checkpoint_dir)
        else:
            note = (note + " " if note else "") + (
                f"No reference gallery at {directory}: similar studies are off. Build one with "
                f"`medclip demo --checkpoint {checkpoint_dir} --build-gallery MANIFEST_OR_CACHE`."
            )
        adapted = adapter_meta = None
        if adapter is not None:
            from medclip.adapt.store import load_adapter

            adapted, adapter_meta = load_adapter(checkpoint, adapter)  # another model's: StaleFileError
            findings, points = adapted.findings, None
        engine = cls(
            model,
            findings=findings,
            thresholds=points.points if points else None,
            uncertain_margin=points.uncertain_margin if points else DEFAULT_UNCERTAIN_MARGIN,
            gallery=gallery,
            drafter=drafter,
            checkpoint_dir=checkpoint_dir,
            gallery_note=note,
        )
        shown = engine.classifier.findings
        if adapted is not None and adapter_meta is not None:
            from medclip.adapt.store import describe_adapter

            engine.adapter = adapted
            engine.adapter_description = describe_adapter(adapter_meta)
            calibration = (
                f"Findings scored by the few-shot classifier {engine.adapter_description}. The operating points in "
                "thresholds.json were chosen for zero-shot scores, so none applies: every finding is shown as not "
                "calibrated and none sets the triage priority."
            )
        elif points is None:
            calibration = (
                "No operating points (thresholds.json) in the checkpoint: every finding is shown as not "
                "calibrated (no call is made at a default 0.5) and none sets the triage priority. Choose them "
                "with "
                f"`{recalibrate_command(checkpoint_dir)}`."
            )
        else:
            missing = [cid for cid in shown if cid not in points.points or not points.points[cid].calibrated]
            cannot = [
                cid
                for cid in shown
                if cid in points.points and points.points[cid].calibrated and not points.points[cid].can_raise_priority
            ]
            rules = points.rules
            parts = []
            if missing:
                parts.append(
                    f"{len(missing)} of {len(shown)} findings are not calibrated (fewer than {rules.min_positives} "
                    f"positives or {rules.min_negatives} negatives in the validation split, a threshold that flags "
                    "almost no one or everyone, or not evaluated; the table gives each reason): they are shown as "
                    "such and never set the triage priority."
                )
            if cannot:
                parts.append(
                    f"{len(cannot)} calibrated finding(s) cannot set the priority either (validation AUROC CI lower "
                    f"bound not above {rules.auroc_floor:.2f})."
                )
            if points.version < 3:
                parts.append(
                    f"thresholds.json is version {points.version}: its points were judged by today's rules at load "
                    "and carry no validation sensitivity / specificity; recalibrate with "
                    f"`{recalibrate_command(checkpoint_dir, points.validation)}`."
                )
            calibration = " ".join(parts)
        engine.gallery_note = " ".join(part for part in (note, calibration) if part)
        return engine

    # ----------------------------------------------------------------- what the model sees
    def model_view(
        self, study: LoadedStudy | MedicalImage, window: WindowSpec = None, slice_index: int | None = None
    ) -> np.ndarray:
        """The uint8 (S, S) image the model sees (:func:`medclip.model.preprocess` with the checkpoint's
        preprocessing): one slice of a volume (default: the checkpoint's frame policy, the middle one),
        windowed (None: the window the model was trained with; ``"auto"``, a preset name or
        (center, width) to look through another; ignored for PNG/JPEG, which are display values
        already), letterboxed to the model's input size."""
        image = study.image if isinstance(study, LoadedStudy) else study
        if self.is_volume:  # a 3D model: the slice of the volume it sees (resampled to its grid)
            return self._volume_slice(self.model_volume(image, window), image, slice_index)
        return preprocess(image, self.preprocess, slice_index=slice_index, window=window)

    def model_volume(self, study: LoadedStudy | MedicalImage, window: WindowSpec = None) -> np.ndarray:
        """The float16 (D, H, W) volume in [0, 1] a 3D model sees: windowed (None: as trained) and resampled
        to the checkpoint's volume grid. A 2D upload is refused with what to upload instead."""
        from dataclasses import replace

        from medclip.io.windowing import window_image

        image = study.image if isinstance(study, LoadedStudy) else study
        if not image.is_volume:
            raise ValueError(
                "this checkpoint reads CT/MR volumes: upload a series (a zip of its DICOM files) or a "
                "NIfTI file, not a 2D image"
            )
        if image.metadata.get("window") is None:  # modality values (HU for CT): window as trained, or as asked
            meta = image.metadata
            file_window = None
            if meta.get("file_window_center") is not None and meta.get("file_window_width") is not None:
                file_window = (
                    meta["file_window_center"],
                    meta["file_window_width"],
                    meta.get("voi_lut_function") or "LINEAR",
                )
            array, used = window_image(
                image.array,
                self.preprocess.window_spec if window is None else window,
                file_window=file_window,
                monochrome1=meta.get("photometric") == "MONOCHROME1",
            )
            image = replace(image, array=array, metadata={**meta, **used})
        return preprocess(image, self.preprocess, kind="volume")

    @staticmethod
    def _volume_slice(volume: np.ndarray, image: MedicalImage, slice_index: int | None) -> np.ndarray:
        """uint8 slice of the model's volume; ``slice_index`` counts the upload's slices (mapped onto the grid)."""
        depth = volume.shape[0]
        if slice_index is None:
            index = depth // 2
        else:
            slices = int(image.array.shape[0])
            if not 0 <= int(slice_index) < slices:
                raise ValueError(f"slice {slice_index} out of range: the volume has {slices} slices")
            index = round(int(slice_index) * (depth - 1) / max(slices - 1, 1))
        return np.round(volume[index].astype(np.float32) * 255.0).astype(np.uint8)

    # ----------------------------------------------------------------- prediction
    def encode(self, pixels: np.ndarray) -> torch.Tensor:
        """Image embedding (1, E) of a uint8 (S, S) model view, or of a (D, H, W) volume in [0, 1] (3D models)."""
        if pixels.ndim == 3:
            x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
        else:
            x = torch.from_numpy(np.ascontiguousarray(pixels)).float().div_(255.0)[None, None]
        with torch.inference_mode():
            return self.model.encode_image(x, normalize=True).float()

    def _adapted_proba(self, pixels: np.ndarray) -> np.ndarray:
        """The few-shot classifier's probabilities (F,) for one model view (LoRA: its merged model's embedding)."""
        if pixels.ndim == 3:  # a volume in [0, 1]
            x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
        else:
            x = torch.from_numpy(np.ascontiguousarray(pixels)).float().div_(255.0)[None, None]
        model: Any = self.adapter.merged_model(self.model)
        with torch.inference_mode():
            backbone = model.visual.features(x).float()
            embedding = torch.nn.functional.normalize(model.visual.proj(backbone), dim=-1)
            return torch.sigmoid(self.adapter.logits(embedding, backbone)).double().numpy()[0]

    def predict(self, pixels: np.ndarray) -> TriageResult:
        """Findings, priority, similar studies and a drafted report for one model view (a volume for 3D models)."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        features = self.encode(pixels)
        t1 = time.perf_counter()
        probabilities = (
            self.classifier.predict_proba(features)[0] if self.adapter is None else self._adapted_proba(pixels)
        )
        findings = rank_findings(
            probabilities,
            self.classifier.findings,
            self.graph,
            self.thresholds,
            self.uncertain_margin,
            cards=self.cards,
        )
        priority = triage_priority(findings)
        t2 = time.perf_counter()
        similar = self.gallery.search(features, self.k_similar) if self.gallery is not None else []
        t3 = time.perf_counter()
        draft = self.drafter.draft(features) if self.drafter is not None else None
        t4 = time.perf_counter()
        timings.update(encode=t1 - t0, classify=t2 - t1, similar=t3 - t2, draft=t4 - t3)
        return TriageResult(findings=findings, priority=priority, similar=similar, draft=draft, timings=timings)

    def triage(
        self, study: LoadedStudy | MedicalImage, window: WindowSpec = None, slice_index: int | None = None
    ) -> tuple[np.ndarray, TriageResult]:
        """:meth:`model_view` then :meth:`predict`; returns the view and the result. A 3D model predicts on
        the whole volume (:meth:`model_volume`); the view is the chosen slice of it."""
        t0 = time.perf_counter()
        if self.is_volume:
            image = study.image if isinstance(study, LoadedStudy) else study
            volume = self.model_volume(image, window)
            pixels = self._volume_slice(volume, image, slice_index)
        else:
            pixels = volume = self.model_view(study, window, slice_index)
        t1 = time.perf_counter()
        result = self.predict(volume)
        result.timings = {"view": t1 - t0, **result.timings}
        return pixels, result
