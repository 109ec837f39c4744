"""Triage-demo latency on CPU: one prediction for a 2k x 2k radiograph, medclip vs a plain open_clip pipeline.

Input: a 2048 x 2048, 16-bit uncompressed DICOM radiograph made from the bundled sample CR image
(``medclip/sample``, upsampled from its native size; planted PHI is kept in the file to show the
demo path reads it safely). Both pipelines run in one process on the same file, interleaved,
warm-up calls not timed, median of ``--repeats``:

  medclip  ``read_upload`` (size/pixel limits, decode, de-identified header) -> ``model_view``
           (file window, letterbox to the model size) -> ``predict``: image embedding, 14 CheXpert
           findings at their operating points (prompt embeddings computed once at start), urgency,
           knowledge cards, 4 most similar gallery studies, drafted report.
  peer     the usual CLIP zero-shot demo: pydicom ``pixel_array`` -> min/max scale to 8 bit ->
           PIL -> open_clip's own preprocessing (resize 224 bicubic, centre crop, normalise) ->
           ``encode_image`` of ViT-B-16 (BiomedCLIP's architecture; random init, nothing downloaded)
           -> softmax against 28 precomputed prompt embeddings. No gallery, no drafting, no safety checks.

The medclip model is ``--checkpoint`` (default: the quick start's ``runs/quickstart/model`` if it
exists, else the untrained ``offline-default`` architecture: EfficientNet-Lite0 + MiniLM, which
has the same cost). Its gallery is built from the indexed bundled sample at start (timed apart).

    python benchmarks/demo_latency.py [--checkpoint DIR] [--repeats 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from medclip.sample import SAMPLE_EXPORT  # noqa: E402

SOURCE = SAMPLE_EXPORT / "study_0001" / "series_1" / "IM0001.dcm"
SIZE = 2048


def make_radiograph(path: Path) -> Path:
    """A 2048 x 2048 16-bit MONOCHROME2 DICOM from the sample image (explicit VR little endian)."""
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(SOURCE)
    pixels = ds.pixel_array.astype(np.float32)
    if pixels.ndim == 3:
        pixels = pixels.mean(axis=-1)
    big = np.asarray(Image.fromarray(pixels, mode="F").resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    big = np.clip((big - big.min()) / max(float(np.ptp(big)), 1.0) * 4095.0, 0, 4095).astype(np.uint16)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = SIZE, SIZE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for keyword in ("PlanarConfiguration", "LossyImageCompression", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = big.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def build_checkpoint(work: Path, checkpoint: Path | None) -> Path:
    """The model folder with a gallery built from the indexed bundled sample."""
    from medclip.data.indexer import index_export
    from medclip.demo import build_gallery
    from medclip.model import DualEncoder, create_model

    if checkpoint is None:
        quickstart = REPO / "runs" / "quickstart" / "model"
        if (quickstart / "model.safetensors").is_file():
            checkpoint = quickstart
    if checkpoint is None:
        torch.manual_seed(0)
        model = create_model("offline-default").eval()
        checkpoint = model.save_pretrained(work / "model")
        label = "offline-default (untrained; EfficientNet-Lite0 + MiniLM)"
    else:
        model = DualEncoder.from_pretrained(checkpoint).eval()
        label = str(checkpoint)
    export = SAMPLE_EXPORT
    index_export(export, work / "manifest.parquet", reports=export / "reports.csv", progress=False)
    build_gallery(model, work / "manifest.parquet", work / "gallery", split=None)
    print(f"model: {label}")
    return checkpoint


class OpenClipPeer:
    """pydicom -> 8-bit PIL -> open_clip preprocess -> ViT-B-16 encode -> zero-shot softmax."""

    def __init__(self, n_prompts: int = 28) -> None:
        import open_clip

        self.model, _, self.preprocess = open_clip.create_model_and_transforms("ViT-B-16", pretrained=None)
        self.model.eval()
        tokenizer = open_clip.get_tokenizer("ViT-B-16")
        with torch.inference_mode():
            text = self.model.encode_text(tokenizer([f"finding {i}" for i in range(n_prompts)]), normalize=True)
        self.text = text

    def __call__(self, path: Path) -> np.ndarray:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.astype(np.float32)
        pixels = (pixels - pixels.min()) / max(float(np.ptp(pixels)), 1.0) * 255.0
        image = Image.fromarray(pixels.astype(np.uint8)).convert("RGB")
        with torch.inference_mode():
            x = self.preprocess(image)[None]
            features = self.model.encode_image(x, normalize=True)
            return (100.0 * features @ self.text.T).softmax(dim=-1).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads for both pipelines (1: fair on a shared machine)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from medclip.demo import TriageEngine, read_upload

    with tempfile.TemporaryDirectory(prefix="medclip-demo-bench-") as tmp:
        work = Path(tmp)
        image_path = make_radiograph(work / "radiograph_2048.dcm")
        checkpoint = build_checkpoint(work, args.checkpoint)
        t0 = time.perf_counter()
        engine = TriageEngine.load(checkpoint, work / "gallery")
        startup = time.perf_counter() - t0
        peer = OpenClipPeer()

        stages: dict[str, list[float]] = {k: [] for k in ("read", "view", "encode", "classify", "similar", "draft")}
        totals: list[float] = []
        peer_totals: list[float] = []
        for i in range(args.repeats + 2):  # two warm-up rounds, not timed
            t0 = time.perf_counter()
            study = read_upload(image_path)
            t1 = time.perf_counter()
            view, result = engine.triage(study)
            t2 = time.perf_counter()
            peer(image_path)
            t3 = time.perf_counter()
            if i < 2:
                continue
            stages["read"].append(t1 - t0)
            for key, value in result.timings.items():
                stages[key].append(value)
            totals.append(t2 - t0)
            peer_totals.append(t3 - t2)

    ms = lambda xs: statistics.median(xs) * 1000.0  # noqa: E731
    print(
        f"\ninput: {SIZE} x {SIZE} 16-bit DICOM ({image_path.name}); CPU threads {args.threads}; "
        f"median of {args.repeats}; engine start-up (model, prompts, gallery, drafter) {startup:.1f} s once"
    )
    print(
        f"gallery: {len(engine.gallery)} studies; findings: {len(result.findings)}; "
        f"model input {view.shape[0]} x {view.shape[1]}\n"
    )
    print(f"{'stage':<34}{'medclip ms':>12}")
    for key, values in stages.items():
        print(f"{'  ' + key:<34}{ms(values):>12.1f}")
    print()
    print(f"{'pipeline':<34}{'ms / image':>12}{'ratio':>10}")
    print(f"{'medclip demo (read..draft)':<34}{ms(totals):>12.1f}{ms(totals) / ms(peer_totals):>10.2f}")
    print(f"{'open_clip ViT-B-16 zero-shot':<34}{ms(peer_totals):>12.1f}{1.0:>10.2f}")
    print("\nratio = time / peer time (below 1: medclip is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
