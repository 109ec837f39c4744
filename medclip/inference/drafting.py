"""Retrieval-based report drafting (what the demo serves and ``medclip eval`` scores).

:class:`ReportDrafter` embeds a corpus of (training) reports and their sentences once. To draft a
report for an image it finds the ``k`` nearest reports, pools their sentences, scores each by
its own similarity to the image plus the weight of the neighbour reports that contain it
(a vote; sentences with a vote under ``min_vote`` are left out), drops near-duplicates within a section, and assembles the best findings and impression sentences.

The corpus policy is one function, :func:`drafting_corpus` (sections kept, sentences holding the
indexer's redaction marker dropped, one copy of each report): ``medclip eval`` builds the drafter
with it from the training split and saves it into the checkpoint folder (``drafter/``), and the
demo serves that same drafter. The scoring lives in :mod:`medclip.eval.drafting`.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medclip.data.reports import REDACTED, parse_sections, split_sentences

from .encoders import EmbeddingModel, embed_texts

DRAFTER_FORMAT = "medclip.ReportDrafter"
_META_FILE = "drafter.json"
_WEIGHTS_FILE = "drafter.safetensors"
_NORM = re.compile(r"[^a-z0-9]+")


@dataclass
class DraftedReport:
    """A drafted report: findings and impression text, and the corpus reports it was drawn from."""

    findings: str
    impression: str
    neighbours: list[int] = field(default_factory=list)  # indices into the drafter's corpus, nearest first

    @property
    def text(self) -> str:
        """Findings then impression, as one text (what the scoring compares)."""
        return " ".join(p for p in (self.findings, self.impression) if p)


def drafting_text(record: Mapping[str, object]) -> str:
    """A report (a manifest, cache or gallery row) as drafting material: ``"FINDINGS: ...\nIMPRESSION: ..."``,
    sentences with redactions dropped.

    A sentence holding the indexer's ``REDACTED`` marker is about a removed identifier (or lost a word
    to scrubbing) and never belongs in a drafted report. Without the indexer's sections, the sections
    of ``report_text`` are used (unsectioned text counts as findings).
    """

    def clean(text: object) -> str:
        return " ".join(s for s in split_sentences(str(text or "")) if REDACTED not in s)

    findings, impression = clean(record.get("report_findings")), clean(record.get("report_impression"))
    if not (findings or impression):
        sections = parse_sections(str(record.get("report_text") or ""))
        findings, impression = clean(sections.findings), clean(sections.impression)
    parts = ([f"FINDINGS: {findings}"] if findings else []) + ([f"IMPRESSION: {impression}"] if impression else [])
    return "\n".join(parts)


def drafting_corpus(records: Iterable[Mapping[str, object]]) -> list[str]:
    """The drafter's corpus: :func:`drafting_text` of each record, empty ones left out, each report once."""
    return list(dict.fromkeys(t for t in map(drafting_text, records) if t))


def _norm(sentence: str) -> str:
    return _NORM.sub(" ", sentence.lower()).strip()


def _report_sentences(text: str) -> list[tuple[str, str]]:
    """(section, sentence) pairs of a report: ``findings`` and ``impression`` (unsectioned text is findings)."""
    sections = parse_sections(text)
    out = [("findings", s) for s in split_sentences(sections.findings)]
    out += [("impression", s) for s in split_sentences(sections.impression)]
    return out


class ReportDrafter:
    """Drafts reports from the nearest reports and sentences of a corpus (see the module docstring)."""

    def __init__(
        self,
        texts: list[str],
        report_embeddings: torch.Tensor,
        sentences: list[str],
        sections: list[str],
        sentence_reports: list[list[int]],
        sentence_embeddings: torch.Tensor,
        *,
        k: int = 5,
        max_findings: int = 4,
        max_impression: int = 2,
        duplicate_similarity: float = 0.95,
        min_vote: float = 0.1,
    ) -> None:
        if report_embeddings.shape[0] != len(texts) or sentence_embeddings.shape[0] != len(sentences):
            raise ValueError("embeddings and texts disagree in length")
        if not (len(sentences) == len(sections) == len(sentence_reports)):
            raise ValueError("sentences, sections and sentence_reports disagree in length")
        self.texts = texts
        self.report_embeddings = F.normalize(report_embeddings.float(), dim=-1)
        self.sentences = sentences
        self.sections = sections
        self.sentence_reports = sentence_reports
        self.sentence_embeddings = F.normalize(sentence_embeddings.float(), dim=-1)
        self.k, self.max_findings, self.max_impression = k, max_findings, max_impression
        self.duplicate_similarity = duplicate_similarity
        self.min_vote = min_vote
        self._report_sentences: list[list[int]] = [[] for _ in texts]
        for s, reports in enumerate(sentence_reports):
            for r in reports:
                self._report_sentences[r].append(s)

    @classmethod
    def build(cls, model: EmbeddingModel, texts: list[str], batch_size: int = 64, **options) -> ReportDrafter:
        """Embed a corpus of reports and their (de-duplicated) sentences with ``model``'s text tower."""
        texts = [t for t in (str(t).strip() for t in texts) if t]
        if not texts:
            raise ValueError("the drafting corpus has no non-empty report")
        index: dict[tuple[str, str], int] = {}
        sentences: list[str] = []
        sections: list[str] = []
        reports: list[list[int]] = []
        for r, text in enumerate(texts):
            for section, sentence in _report_sentences(text):
                key = (section, _norm(sentence))
                if not key[1]:
                    continue
                if key not in index:
                    index[key] = len(sentences)
                    sentences.append(sentence)
                    sections.append(section)
                    reports.append([])
                if not reports[index[key]] or reports[index[key]][-1] != r:
                    reports[index[key]].append(r)
        was_training = model.training
        model.eval()
        try:
            report_emb = embed_texts(model, texts, batch_size)
            sentence_emb = (
                embed_texts(model, sentences, batch_size) if sentences else torch.zeros(0, report_emb.shape[1])
            )
        finally:
            model.train(was_training)
        return cls(texts, report_emb, sentences, sections, reports, sentence_emb, **options)

    def __len__(self) -> int:
        return len(self.texts)

    def corpus_report(self, index: int) -> DraftedReport:
        """Corpus report ``index`` in the form of a draft (findings, impression), e.g. as a verbatim baseline."""
        sections = parse_sections(self.texts[index])
        return DraftedReport(sections.findings, sections.impression, [index])

    def draft(self, image_features: torch.Tensor | np.ndarray) -> DraftedReport:
        """Draft one report for an image embedding (E,) or (1, E)."""
        x = torch.as_tensor(image_features).float().cpu().reshape(-1)
        if x.numel() != self.report_embeddings.shape[1]:
            raise ValueError(f"image features must have {self.report_embeddings.shape[1]} values, got {x.numel()}")
        x = F.normalize(x, dim=0)
        report_sim = self.report_embeddings @ x
        k = min(self.k, len(self.texts))
        top_sim, top = report_sim.topk(k)
        weights = torch.softmax(top_sim * 20.0, dim=0)  # sharpen: near neighbours dominate the vote
        vote: dict[int, float] = {}
        for w, r in zip(weights.tolist(), top.tolist()):
            for s in self._report_sentences[r]:
                vote[s] = vote.get(s, 0.0) + w
        neighbours = top.tolist()
        # sentences only far neighbours carry (e.g. an effusion report behind a clearly normal one) stay out
        vote = {s: v for s, v in vote.items() if v >= self.min_vote}
        if not vote:
            return DraftedReport("", "", neighbours)
        cand = torch.tensor(sorted(vote))
        score = self.sentence_embeddings[cand] @ x + torch.tensor([vote[int(s)] for s in cand])
        chosen: dict[str, list[int]] = {"findings": [], "impression": []}
        limits = {"findings": self.max_findings, "impression": self.max_impression}
        for pos in score.argsort(descending=True).tolist():
            s = int(cand[pos])
            section = chosen[self.sections[s]]
            if len(section) >= limits[self.sections[s]]:
                continue
            # a near-duplicate of a sentence already in the same section adds nothing
            if (
                section
                and float((self.sentence_embeddings[section] @ self.sentence_embeddings[s]).max())
                >= self.duplicate_similarity
            ):
                continue
            section.append(s)
        return DraftedReport(
            " ".join(self.sentences[s] for s in chosen["findings"]),
            " ".join(self.sentences[s] for s in chosen["impression"]),
            neighbours,
        )

    def draft_many(self, image_features: torch.Tensor) -> list[DraftedReport]:
        """One draft per row of (N, E) image embeddings."""
        return [self.draft(row) for row in torch.as_tensor(image_features)]

    # ------------------------------------------------------------------ save / load
    def save(
        self, directory: str | Path, *, model_fingerprint: str | None = None, source: Mapping[str, object] | None = None
    ) -> Path:
        """Write ``drafter.safetensors`` (embeddings) and ``drafter.json`` (texts, options) to ``directory``.

        ``model_fingerprint``: the model whose text tower embedded the corpus (checked by :meth:`load`);
        ``source``: where the corpus came from (manifest, split), for the command that rebuilds it.
        """
        from safetensors.torch import save_file

        from medclip.fsutil import atomic_write

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_write(directory / _WEIGHTS_FILE) as tmp:
            save_file(
                {
                    "report_embeddings": self.report_embeddings.contiguous(),
                    "sentence_embeddings": self.sentence_embeddings.contiguous(),
                },
                str(tmp),
            )
        meta = {
            "format": DRAFTER_FORMAT,
            "texts": self.texts,
            "sentences": self.sentences,
            "sections": self.sections,
            "sentence_reports": self.sentence_reports,
            "options": {
                "k": self.k,
                "max_findings": self.max_findings,
                "max_impression": self.max_impression,
                "duplicate_similarity": self.duplicate_similarity,
                "min_vote": self.min_vote,
            },
            "model_fingerprint": model_fingerprint,
            "source": dict(source or {}),
        }
        with atomic_write(directory / _META_FILE) as tmp:  # written last: a folder with it is complete
            tmp.write_text(json.dumps(meta, ensure_ascii=False) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path, model_fingerprint: str | None = None) -> ReportDrafter:
        """Read a folder written by :meth:`save`. With ``model_fingerprint`` (the model it will serve), a
        drafter embedded by another model (or not tied to one) raises
        :class:`~medclip.checkpoint.StaleFileError` ending with the command that rebuilds it."""
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_path, weights_path = directory / _META_FILE, directory / _WEIGHTS_FILE
        for needed in (meta_path, weights_path):
            if not needed.is_file():
                raise FileNotFoundError(f"{directory}: not a report drafter folder ({needed.name} missing)")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{meta_path}: cannot read ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") != DRAFTER_FORMAT:
            raise ValueError(f"{meta_path}: not a report drafter file (format != {DRAFTER_FORMAT!r})")
        recorded = meta.get("model_fingerprint")
        if model_fingerprint is not None and recorded != model_fingerprint:
            from medclip.checkpoint import StaleFileError

            source: dict = meta["source"] if isinstance(meta.get("source"), dict) else {}
            what = (
                f"embedded by another model (fingerprint {recorded})"
                if recorded
                else "not tied to a model (older medclip)"
            )
            command = " ".join(shlex.quote(p) for p in ("medclip", "eval", "--checkpoint", str(directory.parent)))
            command += f" --manifest {shlex.quote(str(source['manifest'])) if source.get('manifest') else 'MANIFEST'}"
            if source.get("split") not in (None, "train"):
                command += f" --train-split {shlex.quote(str(source['split']))}"
            raise StaleFileError(
                f"{directory}: report drafter {what}, not by this checkpoint's model (fingerprint "
                f"{model_fingerprint}); rebuild it with: {command} --task report --save-to-checkpoint"
            )
        try:
            tensors = load_file(str(weights_path))
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"{weights_path}: cannot read embeddings ({exc})") from exc
        return cls(
            meta["texts"],
            tensors["report_embeddings"],
            meta["sentences"],
            meta["sections"],
            meta["sentence_reports"],
            tensors["sentence_embeddings"],
            **meta.get("options", {}),
        )


def drafted_to_dict(report: DraftedReport) -> dict:
    """A JSON-able dict of a draft."""
    return asdict(report)
