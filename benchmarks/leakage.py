"""Leakage audit benchmark: which near-duplicate detector catches copied images across splits, and what the
covid set holds.

1. **Method table.** Real chest X-rays (all covid-chestxray images and ``--kermany`` Kermany images from
   ``../shared/data``). ``--per-transform`` originals per transform get one planted copy each, written to files
   and read back through the kit's one path (``medclip.data.cache.preprocess_row``): resized 0.5x / 2x,
   re-encoded JPEG quality 30 / 50 / 70, cropped by 2 / 4 / 8 px, windowed differently (gamma 0.7, a 5-95
   percentile contrast stretch), and two combinations. Distractors are every other pair, in particular the
   different images of one patient (covid: follow-up films days apart; Kermany: several films per child).
   Detectors: imagehash pHash / dHash / wHash (64 bits, of the 128 px model view) at several Hamming
   thresholds, pHash + the 32 x 32 rank correlation, pHash + rank + the fine check (the aligned 64 x 64
   high-pass correlation of ``medclip.audit.leakage.fine_correlation``; threshold column: Hamming, rank gate or -,
   fine), and the cosine of the offline default model's image-encoder features (the backbone's pooled output, as
   ``benchmarks/quality.py``'s probes; 224 px) at several cosine thresholds. Recall of the planted
   pairs (per transform group) and false-positive pairs (same patient / other patient; the covid set holds
   real duplicates, so some "other patient" pairs are true copies: the covid audit below shows them).
2. **Scale.** The chunked Hamming search over 50,000 random hashes. **Bundled sample.** The default detector over
   all pairs of the bundled Kermany sample's 360 images (different children): pairs called near duplicates.
3. **Covid audit.** ``medclip recipe covid_chestxray`` (patient-level split 80/10/10, fixed salt), then
   ``medclip.audit.leakage.audit_leakage`` with its defaults: patients in several splits, near-duplicate images
   across splits (and within one split, as information), identical report texts. A contact sheet of the pairs
   found goes to ``benchmarks/out/leakage_covid_pairs.png``.

Usage: python benchmarks/leakage.py [--kermany 600] [--per-transform 20] [--no-embedding] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
SALT = "medclip-leakage-benchmark"
HASH_THRESHOLDS = (2, 4, 6, 8, 10, 12, 14)
COSINE_THRESHOLDS = (0.90, 0.95, 0.97, 0.98, 0.99)
TWO_STAGE_CORRELATIONS = (0.90, 0.92, 0.93, 0.94, 0.96)
FINE_CORRELATIONS = (0.60, 0.66, 0.70, 0.72, 0.75, 0.80, 0.85)


def shared_data() -> Path:
    root = Path(os.environ.get("MEDCLIP_SHARED") or REPO.parent / "shared") / "data"
    missing = [n for n in ("covid_cxr", "kermany_pneumonia") if not (root / n).is_dir()]
    if missing:
        sys.exit(f"{missing} not found under {root} (set MEDCLIP_SHARED to the folder holding data/)")
    return root


# ---------------------------------------------------------------------- planted copies
def _resize(f: float) -> Callable[[Image.Image], Image.Image]:
    return lambda im: im.resize((max(8, round(im.width * f)), max(8, round(im.height * f))), Image.Resampling.BICUBIC)


def _crop(px: int) -> Callable[[Image.Image], Image.Image]:
    return lambda im: im.crop((px, px // 2, im.width - px // 2, im.height - px))  # uneven: a shifted, cropped copy


def _gamma(g: float) -> Callable[[Image.Image], Image.Image]:
    def f(im: Image.Image) -> Image.Image:
        a = np.asarray(im, dtype=np.float32) / 255.0
        return Image.fromarray((np.clip(a**g, 0, 1) * 255 + 0.5).astype(np.uint8))

    return f


def _stretch(im: Image.Image) -> Image.Image:
    a = np.asarray(im, dtype=np.float32)
    lo, hi = np.percentile(a, [5, 95])
    return Image.fromarray((np.clip((a - lo) / max(hi - lo, 1.0), 0, 1) * 255 + 0.5).astype(np.uint8))


def _jpeg(q: int) -> Callable[[Image.Image], Image.Image]:
    def f(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=q)
        buf.seek(0)
        return Image.open(buf).copy()

    return f


def _chain(*fs: Callable[[Image.Image], Image.Image]) -> Callable[[Image.Image], Image.Image]:
    def f(im: Image.Image) -> Image.Image:
        for g in fs:
            im = g(im)
        return im

    return f


#: name -> (group, transform); every copy is saved as PNG (lossless) after its transform, JPEG ones re-encoded inside
TRANSFORMS: dict[str, tuple[str, Callable[[Image.Image], Image.Image]]] = {
    "resize 0.5x": ("resize", _resize(0.5)),
    "resize 2x": ("resize", _resize(2.0)),
    "jpeg q30": ("jpeg", _jpeg(30)),
    "jpeg q50": ("jpeg", _jpeg(50)),
    "jpeg q70": ("jpeg", _jpeg(70)),
    "crop 2px": ("crop", _crop(2)),
    "crop 4px": ("crop", _crop(4)),
    "crop 8px": ("crop", _crop(8)),
    "gamma 0.7": ("window", _gamma(0.7)),
    "stretch 5-95%": ("window", _stretch),
    "0.5x + jpeg q50": ("combo", _chain(_resize(0.5), _jpeg(50))),
    "crop 4px + gamma 1.4 + jpeg q70": ("combo", _chain(_crop(4), _gamma(1.4), _jpeg(70))),
}
GROUPS = ("resize", "jpeg", "crop", "window", "combo")


def build_pool(data: Path, workdir: Path, n_kermany: int, per_transform: int, seed: int = 0) -> pd.DataFrame:
    """Rows (uid, path, patient, dataset, original, transform): every covid image, ``n_kermany`` Kermany images, and
    one planted copy of each of ``per_transform * len(TRANSFORMS)`` originals (half covid, half Kermany)."""
    rng = np.random.default_rng(seed)
    covid = pd.read_csv(data / "covid_cxr" / "metadata.csv", dtype=str, keep_default_na=False)
    rows = [
        {"path": str(data / "covid_cxr" / r.folder / r.filename), "patient": f"covid-{r.patientid}", "dataset": "covid"}
        for r in covid.itertuples()
    ]
    kermany = pd.read_csv(data / "kermany_pneumonia" / "labels.csv", dtype=str, keep_default_na=False)
    pick = kermany.iloc[np.sort(rng.choice(len(kermany), size=min(n_kermany, len(kermany)), replace=False))]
    rows += [
        {"path": str(data / "kermany_pneumonia" / r.image), "patient": f"kermany-{r.patient_key}", "dataset": "kermany"}
        for r in pick.itertuples()
    ]
    pool = pd.DataFrame(rows)
    pool["original"] = -1
    pool["transform"] = ""
    n_copies = per_transform * len(TRANSFORMS)
    by_set = [np.flatnonzero(pool["dataset"].to_numpy() == d) for d in ("covid", "kermany")]
    chosen = np.concatenate([rng.choice(ix, size=n_copies // 2, replace=False) for ix in by_set])
    rng.shuffle(chosen)
    names = [name for name in TRANSFORMS for _ in range(per_transform)]
    copies = []
    (workdir / "copies").mkdir(parents=True, exist_ok=True)
    for k, (orig, name) in enumerate(zip(chosen.tolist(), names)):
        src = pool.iloc[orig]
        with Image.open(src["path"]) as im:
            img = TRANSFORMS[name][1](im.convert("L"))
        path = workdir / "copies" / f"copy{k:04d}.png"
        img.save(path)
        copies.append(
            {"path": str(path), "patient": f"copy-{k}", "dataset": src["dataset"], "original": orig, "transform": name}
        )
    pool = pd.concat([pool, pd.DataFrame(copies)], ignore_index=True)
    pool["image_id"] = [f"img{i:05d}" for i in range(len(pool))]
    pool["kind"] = "image"
    return pool


# ---------------------------------------------------------------------- detectors
def read_images(pool: pd.DataFrame, size: int) -> list[np.ndarray]:
    from medclip.audit.leakage import ManifestImages

    images = ManifestImages(pool, image_size=size, progress=False)
    out = [img for _, img in images]
    if images.unreadable:
        sys.exit(f"{images.unreadable} benchmark images unreadable")
    return out


def hash_distances(images: list[np.ndarray], method: str, max_t: int) -> dict[tuple[int, int], int]:
    from medclip.audit.leakage import hamming_pairs, image_hash

    codes = np.stack([image_hash(im, method) for im in images])
    ii, jj, dd = hamming_pairs(codes, max_t)
    return {(int(i), int(j)): int(d) for i, j, d in zip(ii, jj, dd)}


def embedding_similarities(images: list[np.ndarray], min_cos: float) -> dict[tuple[int, int], float]:
    import torch

    from medclip.model import create_model

    model = create_model("offline-default").eval()
    feats = []
    with torch.no_grad():
        for start in range(0, len(images), 32):
            batch = torch.from_numpy(np.stack(images[start : start + 32])).float().div(255.0)[:, None]
            feats.append(torch.nn.functional.normalize(model.visual.features(batch).float(), dim=-1))
    f = torch.cat(feats).numpy()
    sim = f @ f.T
    ii, jj = np.nonzero(np.triu(sim >= min_cos, k=1))
    return {(int(i), int(j)): float(sim[i, j]) for i, j in zip(ii, jj)}


def score(
    pool: pd.DataFrame, found: Mapping[tuple[int, int], float], keep: Callable[[float], bool]
) -> dict[str, float]:
    """Recall of the planted pairs (all, per transform group) and false-positive pairs by kind."""
    planted = {
        (min(int(o), c), max(int(o), c)): TRANSFORMS[t][0]
        for c, (o, t) in enumerate(zip(pool["original"], pool["transform"]))
        if o >= 0
    }
    hits = {p for p, v in found.items() if keep(v)}
    patient = pool["patient"].to_numpy()
    original = pool["original"].to_numpy()
    dataset = pool["dataset"].to_numpy()

    def owner(i: int) -> str:  # a copy belongs to its original's patient
        return patient[original[i]] if original[i] >= 0 else patient[i]

    out: dict[str, float] = {"recall": sum(p in hits for p in planted) / len(planted)}
    for g in GROUPS:
        group = [p for p, grp in planted.items() if grp == g]
        out[g] = sum(p in hits for p in group) / max(1, len(group))
    fp = [p for p in hits if p not in planted]
    out["fp_same"] = sum(owner(i) == owner(j) for i, j in fp)
    out["fp_covid"] = sum(owner(i) != owner(j) and dataset[i] == dataset[j] == "covid" for i, j in fp)
    out["fp_other"] = len(fp) - out["fp_same"] - out["fp_covid"]
    return out


def method_table(pool: pd.DataFrame, use_embedding: bool) -> str:
    from medclip.audit.leakage import (
        AUDIT_IMAGE_SIZE,
        fine_correlations,
        fine_view,
        image_signature,
        signature_correlation,
    )

    t0 = time.time()
    small = read_images(pool, AUDIT_IMAGE_SIZE)
    lines = [f"images read at {AUDIT_IMAGE_SIZE} px: {len(small)} in {time.time() - t0:.0f} s"]
    n_pairs = len(pool) * (len(pool) - 1) // 2
    header = f"{'detector':<24}{'threshold':>16}{'recall':>7}" + "".join(f"{g:>7}" for g in GROUPS)
    header += f"{'FP same pt':>11}{'FP covid*':>10}{'FP other':>9}{'other/1M':>9}{'s':>5}"
    rows = [header, "-" * len(header)]
    for method in ("phash", "dhash", "whash"):
        t0 = time.time()
        found = hash_distances(small, method, max(HASH_THRESHOLDS))
        took = time.time() - t0
        for t in HASH_THRESHOLDS:
            s = score(pool, found, lambda d, t=t: d <= t)  # type: ignore[misc]
            rows.append(_row(method, f"<= {t}", s, n_pairs, took))
        if method != "phash":
            continue
        t0 = time.time()
        sigs = np.stack([image_signature(im) for im in small])
        took_sig = time.time() - t0 + took
        for t in (10, 12):
            cand = [p for p, d in found.items() if d <= t]
            corr = (
                signature_correlation(sigs[[i for i, _ in cand]], sigs[[j for _, j in cand]]) if cand else np.zeros(0)
            )
            by_pair = dict(zip(cand, map(float, corr)))
            for c in TWO_STAGE_CORRELATIONS:
                s = score(pool, by_pair, lambda v, c=c: v >= c)  # type: ignore[misc]
                rows.append(_row("phash + rank corr", f"<= {t}, >= {c:.2f}", s, n_pairs, took_sig))
        # the fine check (aligned 64 x 64 high-pass correlation) on the pHash <= 10 candidates, with and without
        # the 32 x 32 rank gate
        t0 = time.time()
        views = np.stack([fine_view(im) for im in small])
        cand = [p for p, d in found.items() if d <= 10]
        corr10 = signature_correlation(sigs[[i for i, _ in cand]], sigs[[j for _, j in cand]]) if cand else np.zeros(0)
        fine10 = fine_correlations(views, np.array([i for i, _ in cand]), np.array([j for _, j in cand]))
        took_fine = time.time() - t0 + took_sig
        for gate in (None, 0.85, 0.90, 0.93):
            by_pair = {p: float(f) for p, c, f in zip(cand, corr10, fine10) if gate is None or c >= gate}
            for c in FINE_CORRELATIONS:
                s = score(pool, by_pair, lambda v, c=c: v >= c)  # type: ignore[misc]
                g = "-" if gate is None else f"{gate:.2f}"
                rows.append(_row("phash+rank+fine", f"10, {g}, {c:.2f}", s, n_pairs, took_fine))
    if use_embedding:
        t0 = time.time()
        big = read_images(pool, 224)
        found_e = embedding_similarities(big, min(COSINE_THRESHOLDS))
        took = time.time() - t0
        for c in COSINE_THRESHOLDS:
            s = score(pool, found_e, lambda v, c=c: v >= c)  # type: ignore[misc]
            rows.append(_row("encoder cosine (224 px)", f">= {c:.2f}", s, n_pairs, took))
    rows.append(
        "FP covid*: two covid images of different patient ids; the covid set holds real copies (see the audit below), "
        "so some are true. FP other: a pair with a Kermany image (other/1M: per million pairs compared)."
    )
    return "\n".join(lines + rows)


def _row(name: str, threshold: str, s: dict[str, float], n_pairs: int, took: float) -> str:
    return (
        f"{name:<24}{threshold:>16}{s['recall']:>7.3f}"
        + "".join(f"{s[g]:>7.2f}" for g in GROUPS)
        + f"{int(s['fp_same']):>11d}{int(s['fp_covid']):>10d}{int(s['fp_other']):>9d}"
        + f"{s['fp_other'] / n_pairs * 1e6:>9.1f}{took:>5.0f}"
    )


def scale_line(n: int = 50_000) -> str:
    from medclip.audit.leakage import DEFAULT_THRESHOLD, hamming_pairs

    rng = np.random.default_rng(0)
    codes = rng.integers(0, np.iinfo(np.int64).max, size=(n, 1), dtype=np.int64).astype(np.uint64)
    t0 = time.time()
    ii, _, _ = hamming_pairs(codes, DEFAULT_THRESHOLD)
    return f"scale: all pairs of {n:,} random 64-bit hashes (Hamming <= {DEFAULT_THRESHOLD}): {time.time() - t0:.1f} s, {len(ii)} pairs"


# ---------------------------------------------------------------------- the bundled sample
def sample_line(workdir: Path) -> str:
    """Near-duplicate pairs of different patients among the bundled Kermany sample's images (all different children,
    checked by eye): the default detector, and without its fine check (the previous default: rank corr >= 0.93)."""
    from medclip.audit.leakage import ManifestImages, near_duplicate_images
    from medclip.data.manifest import read_manifest
    from medclip.recipes.kermany_pneumonia import sample_kermany_manifest

    sample_kermany_manifest(workdir / "sample_kermany.parquet")
    df = read_manifest(workdir / "sample_kermany.parquet")
    images = list(ManifestImages(df, progress=False))
    ids = df["image_id"].astype(str).tolist()
    everyone_apart = {k: str(n) for n, k in enumerate(ids)}  # every image its own split: all pairs compared
    patients = dict(zip(ids, df["patient_id"].astype(str)))
    t0 = time.time()
    new = near_duplicate_images(images, everyone_apart, patients=patients)
    took = time.time() - t0
    old = near_duplicate_images(
        images, everyone_apart, patients=patients, min_correlation=0.93, min_fine_correlation=None
    )
    n_new = sum(p.same_patient is False for p in new.cross_split)
    n_old = sum(p.same_patient is False for p in old.cross_split)
    fine = [p.fine_correlation for p in new.cross_split]
    return (
        f"bundled Kermany sample ({len(images)} images, all pairs): pairs of different patients called near duplicates: "
        f"{n_new} at the default ({took:.1f} s), {n_old} with the previous default (pHash <= 10, rank corr >= 0.93)"
        + (f"; fine correlations {fine}" if fine else "")
    )


# ---------------------------------------------------------------------- covid audit
def covid_audit(data: Path, workdir: Path) -> str:
    from medclip.audit.leakage import ManifestImages, audit_leakage
    from medclip.data.manifest import read_manifest

    manifest = workdir / "covid.parquet"
    cmd = [str(Path(sys.executable).with_name("medclip")), "recipe", "covid_chestxray", str(data / "covid_cxr")]
    cmd += ["-o", str(manifest), "--salt", SALT, "-q"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    df = read_manifest(manifest)
    images = ManifestImages(df, progress=False)
    t0 = time.time()
    audit = audit_leakage(df, images, top_k=12)
    took = time.time() - t0
    lines = [
        f"covid manifest: {len(df)} rows, {df['patient_id'].nunique()} patients, splits "
        + ", ".join(f"{k} {v}" for k, v in df["split"].value_counts().items())
        + f"; audit took {took:.0f} s",
        audit.summary(),
    ]
    im = audit.images
    assert im is not None
    meta = pd.read_csv(data / "covid_cxr" / "metadata.csv", dtype=str, keep_default_na=False)
    by_path = {str((data / "covid_cxr" / r.folder / r.filename).resolve()): r for r in meta.itertuples()}
    row_of = {str(r["image_id"]): by_path.get(str(Path(r["path"]).resolve())) for r in df.to_dict("records")}

    def describe(image_id: str) -> str:
        r = row_of.get(image_id)
        return "?" if r is None else f"patient {r.patientid:>4} day {r.offset or '?':>3} {r.filename[:38]}"

    for image_id in audit.repeated.image_ids:
        rows = df[df["image_id"].astype(str) == image_id]
        name = Path(str(rows["path"].iloc[0])).name
        public = meta[meta["filename"] == name]
        lines.append(
            f"  image id {image_id} in rows of splits {sorted(set(rows['split']))}: file {name}, listed in metadata.csv "
            f"under patients {sorted(set(public['patientid']))}"
        )
    if im.cross_split:
        lines.append("cross-split near-duplicate pairs (distance, splits, source rows of the public metadata):")
        for p in im.cross_split:
            lines.append(f"  d={p.distance:2d} {p.split_a}/{p.split_b}: {describe(p.a)}  <->  {describe(p.b)}")
    # within-split pairs between different patients: information (recomputed here to list them)
    from medclip.audit.leakage import candidate_pairs, fine_view, image_hash, image_signature

    cache = dict(ManifestImages(df, progress=False))
    ids = list(cache)
    codes = np.stack([image_hash(cache[k]) for k in ids])
    sigs = np.stack([image_signature(cache[k]) for k in ids])
    ii, jj, dd, _ = candidate_pairs(codes, sigs, views=np.stack([fine_view(cache[k]) for k in ids]))
    split = dict(zip(df["image_id"].astype(str), df["split"]))
    patient = dict(zip(df["image_id"].astype(str), df["patient_id"]))
    within = [
        (int(d), ids[i], ids[j])
        for i, j, d in zip(ii, jj, dd)
        if split[ids[i]] == split[ids[j]] and patient[ids[i]] != patient[ids[j]]
    ]
    if within:
        lines.append("within-split near-duplicate pairs of different patient ids (information):")
        for d, a, b in sorted(within)[:15]:
            lines.append(f"  d={d:2d} {split[a]}: {describe(a)}  <->  {describe(b)}")
    same_patient = sum(
        1 for i, j in zip(ii, jj) if split[ids[i]] == split[ids[j]] and patient[ids[i]] == patient[ids[j]]
    )
    lines.append(f"within-split near-duplicate pairs of one patient (follow-up films, repeats): {same_patient}")
    from medclip.audit.leakage import _row_report, normalise_report

    groups: dict[str, list[tuple[str, str]]] = {}
    for r in df.to_dict("records"):
        text = normalise_report(_row_report(r))
        if text:
            groups.setdefault(text, []).append((str(r["split"]), Path(str(r["path"])).name))
    for members in groups.values():
        if len({sp for sp, _ in members}) > 1:
            who = "; ".join(
                f"{sp}: {name} (metadata patients {sorted(set(meta[meta['filename'] == name]['patientid']))})"
                for sp, name in members
            )
            lines.append(f"  duplicated report text ({len(members)} rows): {who}")
    for e in audit.reports.examples:
        lines.append(f"  excerpt ({', '.join(e['splits'])}; {e['patients']} patients): {e['excerpt']}")
    sheet = [(p.split_a + "/" + p.split_b, p.distance, a, b) for p, a, b in im.thumbnails]
    sheet += [(split[a] + " (within)", d, cache[a], cache[b]) for d, a, b in sorted(within)[: max(0, 8 - len(sheet))]]
    if sheet:
        path = contact_sheet(sheet, OUT / "leakage_covid_pairs.png")
        lines.append(f"contact sheet: {path.relative_to(REPO)} ({len(sheet)} pairs)")
    return "\n".join(lines)


def contact_sheet(pairs: list[tuple[str, int, np.ndarray, np.ndarray]], path: Path, size: int = 96) -> Path:
    from PIL import ImageDraw

    pad, label = 4, 14
    sheet = Image.new("L", (len(pairs) * (2 * size + 3 * pad), size + label + 2 * pad), 255)
    draw = ImageDraw.Draw(sheet)
    for k, (text, d, a, b) in enumerate(pairs):
        x = k * (2 * size + 3 * pad) + pad
        for m, img in enumerate((a, b)):
            sheet.paste(Image.fromarray(np.asarray(img)).resize((size, size)), (x + m * (size + pad), pad + label))
        draw.text((x, pad), f"{text} d={d}", fill=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kermany", type=int, default=600, help="Kermany images in the pool (default 600)")
    ap.add_argument("--per-transform", type=int, default=20, help="planted copies per transform (default 20)")
    ap.add_argument("--no-embedding", action="store_true", help="skip the image-encoder cosine rows")
    ap.add_argument("--skip-table", action="store_true", help="only the scale line and the covid audit")
    ap.add_argument(
        "--workdir", type=Path, help="where the planted copies and the manifest go (default: a temp folder)"
    )
    args = ap.parse_args(argv)

    from medclip.logging_setup import setup_logging

    setup_logging(0)
    data = shared_data()
    load = os.getloadavg()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}; python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory(prefix="medclip-leakage-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        t_all = time.time()
        if not args.skip_table:
            pool = build_pool(data, workdir, args.kermany, args.per_transform)
            n_planted = int((pool["original"] >= 0).sum())
            print(
                f"\npool: {len(pool)} images ({(pool['dataset'] == 'covid').sum()} covid, {(pool['dataset'] == 'kermany').sum()} "
                f"Kermany, {n_planted} of them planted copies: {args.per_transform} per transform x {len(TRANSFORMS)})"
            )
            print(method_table(pool, not args.no_embedding))
        print("\n" + scale_line())
        print("\n" + sample_line(workdir))
        print("\n" + covid_audit(data, workdir))
        print(f"\ntotal {time.time() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
