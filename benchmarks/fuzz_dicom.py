"""Mutation fuzz of the DICOM reader, and what GDCM isolation costs (issue 21).

fuzz  Seeded mutants of real DICOM files (pydicom's test files and pydicom-data; pylibjpeg-data and
      ``../shared/data`` when present): truncations, flipped header bytes, flipped pixel bytes,
      overwritten element length fields, duplicated chunks (1 to 3 of them per mutant). Each mutant
      goes through ``medclip.io.load_image``; it must load or raise ``ImageReadError``. The mutants
      run one after another in a child process, so a crash (an abort in a C/C++ decoder) or a hang
      is counted, not fatal: the child is restarted after the mutant that killed it. Printed per
      source: loaded / refused (of which: GDCM crashed in its worker, contained) / other exception /
      crashed / hung. Any "other exception", "crashed" or "hung" is a bug; the exit status says so.
      A last row mutates the JPEG Lossless files in issue 21's shape (a few header bytes and a few
      bytes of the JPEG stream's own headers: pylibjpeg refuses the stream, GDCM gets the file).
cost  The decoding paths on the scale benchmark's JPEG files (``benchmarks/scale.py``: 2500 x 2048
      JPEG Baseline radiographs), per file, median of the repeats: pydicom's GDCM plugin in process
      (what pydicom ran first before issue 21), pydicom's pylibjpeg plugin in process (what runs
      now), the same file through the GDCM worker (what a file only GDCM decodes now costs), and
      ``load_image`` end to end; plus the worker's start.

pylibjpeg-data is not on PyPI: point ``--pylibjpeg-data`` at a checkout of
github.com/pydicom/pylibjpeg-data (its ``ljdata/ds`` files are used); it is never downloaded here.

  python benchmarks/fuzz_dicom.py                       # 1,200 mutants + 300 targeted, then the cost table
  python benchmarks/fuzz_dicom.py --mutants 300 --no-cost
  python benchmarks/fuzz_dicom.py --pylibjpeg-data ~/src/pylibjpeg-data --keep crashes/
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MUTATIONS = ("truncate", "flip_header", "flip_pixels", "length_field", "duplicate_chunk")
#: Explicit-VR codes whose length field is 4 bytes after 2 reserved ones.
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
#: Per-mutant watchdog: longer than the GDCM worker's own timeout, so a slow GDCM decode is its refusal.
HANG_S = 180.0


# --------------------------------------------------------------------------- mutants


def _pixel_offset(data: bytes) -> int:
    """Where the (last) Pixel Data element starts; the end of the file when there is none."""
    i = data.rfind(b"\xe0\x7f\x10\x00")
    return i if i > 132 else len(data)


def length_fields(data: bytes) -> list[tuple[int, int]]:
    """``(offset, size)`` of the length fields of the top-level elements, walked from byte 132 (little endian)."""
    out: list[tuple[int, int]] = []
    i, n = 132, len(data)
    while i + 8 <= n:
        group = int.from_bytes(data[i : i + 2], "little")
        vr = data[i + 4 : i + 6]
        if vr.isalpha() and vr.isupper():  # explicit VR
            if vr in _LONG_VRS:
                off, size, header = i + 8, 4, 12
                if off + 4 > n:
                    break
            else:
                off, size, header = i + 6, 2, 8
        else:  # implicit VR
            off, size, header = i + 4, 4, 8
        length = int.from_bytes(data[off : off + size], "little")
        out.append((off, size))
        if length == 0xFFFFFFFF or group == 0x7FE0:  # undefined length (a sequence) or the pixel data: stop
            break
        i += header + length
    return out


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, list[str]]:
    """One mutant of a DICOM file: 1 to 3 of :data:`MUTATIONS` (mostly one), drawn from ``rng``; and their names.

    Truncations fall in the pixel data 3 times out of 4 (a file cut in its header is refused at once);
    pixel flips fall in the codec's headers (the first 256 bytes of the pixel data) half the time.
    """
    buf = bytearray(data)
    kinds: list[str] = []
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        kind = rng.choice(MUTATIONS)
        kinds.append(kind)
        if len(buf) <= 140:
            break
        pixels = _pixel_offset(bytes(buf))
        if kind == "truncate":
            low = pixels if pixels < len(buf) - 1 and rng.random() < 0.75 else 132
            del buf[rng.randrange(low, len(buf)) :]
        elif kind == "flip_header":
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(132, max(pixels, 133))] = rng.randrange(256)
        elif kind == "flip_pixels":  # half the time in the first 256 bytes: a codec's own headers (SOF, DHT, SIZ)
            if pixels + 16 < len(buf):
                end = min(len(buf), pixels + 256) if rng.random() < 0.5 else len(buf)
                for _ in range(rng.randint(1, 16)):
                    buf[rng.randrange(pixels + 12, end)] = rng.randrange(256)
        elif kind == "length_field":
            fields = length_fields(bytes(buf))
            if fields:
                off, size = rng.choice(fields)
                old = int.from_bytes(buf[off : off + size], "little")
                top = 2 ** (8 * size)
                new = rng.choice((0, top - 1, rng.randrange(top), old + 1, max(old - 1, 0), old * 2, old // 2))
                buf[off : off + size] = (new % top).to_bytes(size, "little")
        elif kind == "duplicate_chunk":
            start = rng.randrange(132, len(buf))
            chunk = bytes(buf[start : start + rng.randint(4, 256)])
            at = rng.randrange(132, len(buf))
            buf[at:at] = chunk
    return bytes(buf), kinds


def mutate_header_and_stream(data: bytes, rng: random.Random) -> tuple[bytes, list[str]]:
    """1-8 header bytes and 1-4 bytes of the first 200 of the (first) JPEG stream overwritten.

    The shape of the file in issue 21 (and of ``tests/test_io_gdcm_crash.py``): pylibjpeg refuses the
    stream, so the file goes to GDCM, whose reader then meets the damaged header.
    """
    pixels = _pixel_offset(data)
    soi = data.find(b"\xff\xd8", pixels)
    if pixels >= len(data) or soi < 0 or soi + 202 > len(data):
        return mutate(data, rng)
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        buf[rng.randrange(132, pixels)] = rng.randrange(256)
    for _ in range(rng.randint(1, 4)):
        buf[rng.randrange(soi + 2, soi + 200)] = rng.randrange(256)
    return bytes(buf), ["flip_header", "flip_stream_header"]


def mutant(files: Sequence[str], seed: int, k: int, mode: str = "mixed") -> tuple[str, bytes, list[str]]:
    """Mutant ``k`` of a run: its source file, its bytes and its mutations (deterministic in seed, k and mode).

    ``mode``: "mixed" (:func:`mutate`) or "header+stream" (:func:`mutate_header_and_stream`).
    """
    source = files[k % len(files)]
    rng = random.Random(seed * 1_000_003 + k)
    mutator = mutate_header_and_stream if mode == "header+stream" else mutate
    data, kinds = mutator(Path(source).read_bytes(), rng)
    return source, data, kinds


# --------------------------------------------------------------------------- the child that reads them


def _child(spec_path: str, start: int) -> None:
    """Read mutants ``start``.. of the run in ``spec_path``; one line per mutant on stdout."""
    import logging

    logging.disable(logging.CRITICAL)
    from medclip.io import ImageReadError, load_image

    try:
        from medclip.io.gdcm_worker import CRASH_REASON
    except ImportError:  # a medclip from before issue 21 (PYTHONPATH=<old checkout>): no worker
        CRASH_REASON = "the GDCM decoder crashed on this file"

    spec = json.loads(Path(spec_path).read_text())
    files, seed, count, mode = spec["files"], spec["seed"], spec["count"], spec.get("mode", "mixed")
    with tempfile.TemporaryDirectory(prefix="medclip-fuzz-") as tmp:
        target = Path(tmp) / "mutant.dcm"
        for k in range(start, count):
            _, data, _ = mutant(files, seed, k, mode)
            target.write_bytes(data)
            try:
                load_image(target)
                status = "loaded"
            except ImageReadError as exc:
                status = "gdcm_crash" if CRASH_REASON in exc.reason else "refused"
            except Exception as exc:  # noqa: BLE001 - the fuzz's finding: counted and named
                status = f"error:{type(exc).__name__}"
            print(f"{k}\t{status}", flush=True)


def run_mutants(
    files: Sequence[str | os.PathLike[str]],
    count: int,
    seed: int = 0,
    *,
    hang_s: float = HANG_S,
    keep: str | os.PathLike[str] | None = None,
    mode: str = "mixed",
) -> list[str]:
    """The outcome of each of ``count`` mutants of ``files``: loaded, refused, gdcm_crash (refused: GDCM crashed
    in its worker), error:<Type>, crashed:<exit status> or hung. A child process reads them; it is restarted after
    a crash or a hang. ``keep``: a folder where mutants that crashed, hung or raised another exception are saved.
    """
    files = [os.fspath(f) for f in files]
    outcomes: list[str | None] = [None] * count
    with tempfile.TemporaryDirectory(prefix="medclip-fuzz-spec-") as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"files": files, "seed": seed, "count": count, "mode": mode}))
        start = 0
        while start < count:
            path = [p for p in (os.environ.get("PYTHONPATH", ""), str(REPO)) if p]  # a PYTHONPATH given first
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--child", str(spec), str(start)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )
            assert proc.stdout is not None
            lines: queue.Queue[str | None] = queue.Queue()
            threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
            while True:
                try:
                    line = lines.get(timeout=hang_s)
                except queue.Empty:
                    proc.kill()
                    proc.wait()
                    outcomes[start] = "hung"
                    start += 1
                    break
                if line is None:  # the child ended: done, or it died on mutant `start`
                    status = proc.wait()
                    if start < count:
                        outcomes[start] = f"crashed:{status}"
                        start += 1
                    break
                k, status = line.rstrip("\n").split("\t")
                outcomes[int(k)] = status
                start = int(k) + 1
    done = [o or "crashed:?" for o in outcomes]
    if keep is not None:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for k, outcome in enumerate(done):
            if outcome.startswith(("crashed", "hung", "error")):
                source, data, kinds = mutant(files, seed, k, mode)
                name = f"seed{seed}-k{k}-{Path(source).stem}-{'+'.join(kinds)}.dcm"
                (Path(keep) / name).write_bytes(data)
    return done


def _pump(stream: Iterable[str], out: queue.Queue[str | None]) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


def summarise(outcomes: Sequence[str]) -> dict[str, int]:
    """Counts: loaded, refused (all ImageReadErrors, GDCM crashes included), gdcm_crash, error, crashed, hung."""
    counts = Counter(o.split(":")[0] for o in outcomes)
    return {
        "mutants": len(outcomes),
        "loaded": counts["loaded"],
        "refused": counts["refused"] + counts["gdcm_crash"],
        "gdcm_crash": counts["gdcm_crash"],
        "error": counts["error"],
        "crashed": counts["crashed"],
        "hung": counts["hung"],
    }


# --------------------------------------------------------------------------- sources


def pydicom_files() -> list[Path]:
    """pydicom's own test files and pydicom-data's (DICOM with pixel data only)."""
    import pydicom

    roots = [Path(pydicom.__file__).parent / "data" / "test_files"]
    try:
        import data_store  # pydicom-data

        roots.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return _with_pixels(p for root in roots for p in sorted(root.rglob("*.dcm")))


def pylibjpeg_files(root: Path | None) -> list[Path]:
    if root is None:
        return []
    base = root / "ljdata" / "ds" if (root / "ljdata" / "ds").is_dir() else root
    return _with_pixels(sorted(base.rglob("*.dcm")))


def shared_files(shared: Path) -> list[Path]:
    data = shared / "data"
    picked = sorted((data / "xray_samples").rglob("*.dcm")) + sorted((data / "dicom_series_nih").rglob("*"))[:40:4]
    return _with_pixels(p for p in picked if p.is_file())


def _syntax(path: str | os.PathLike[str]) -> str:
    import pydicom

    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    except Exception:  # noqa: BLE001 - no syntax to tell
        return ""


def _with_pixels(paths: Iterable[Path], max_bytes: int = 8 * 2**20) -> list[Path]:
    """Readable DICOM files that hold pixel data (under ``max_bytes``, to keep a run short)."""
    import warnings

    import pydicom

    warnings.simplefilter("ignore")  # the deliberately broken test files warn while their headers are read
    out = []
    for path in paths:
        try:
            if path.stat().st_size > max_bytes:
                continue
            ds = pydicom.dcmread(path, stop_before_pixels=False, defer_size=64)
            if "PixelData" in ds and "Rows" in ds:
                out.append(path)
        except Exception:  # noqa: BLE001 - not a usable seed file
            continue
    return out


# --------------------------------------------------------------------------- cost


def cost(n_files: int = 6, repeats: int = 3) -> list[tuple[str, float]]:
    """Per-file median ms of each decoding path on the scale benchmark's JPEG files."""
    import importlib.util

    import pydicom

    from medclip.io import gdcm_worker, load_image

    spec = importlib.util.spec_from_file_location("scale_benchmark", REPO / "benchmarks" / "scale.py")
    assert spec is not None and spec.loader is not None
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="medclip-fuzz-cost-") as tmp:
        jpeg = scale.write_export(Path(tmp), n_files, 0.0)["jpeg"]
        gdcm_worker.shutdown()
        t0 = time.perf_counter()
        gdcm_worker.worker_info()
        rows.append(("GDCM worker start (once per process)", (time.perf_counter() - t0) * 1000))

        def per_file(fn) -> float:
            fn(jpeg[0])  # warm-up, not timed
            times = []
            for _ in range(repeats):
                for path in jpeg:
                    t = time.perf_counter()
                    fn(path)
                    times.append(time.perf_counter() - t)
            return statistics.median(times) * 1000

        installed = gdcm_worker.gdcm_installed()
        if installed:  # before issue 21: pydicom tried its GDCM plugin first, in process
            gdcm_worker._restore_gdcm_plugin()
            rows.append(
                (
                    "old: decode, pydicom GDCM plugin in process",
                    per_file(lambda p: pydicom.pixels.pixel_array(pydicom.dcmread(p), decoding_plugin="gdcm")),
                )
            )
            gdcm_worker.keep_gdcm_out_of_process()
        rows.append(
            (
                "new: decode, pydicom pylibjpeg plugin in process",
                per_file(lambda p: pydicom.pixels.pixel_array(pydicom.dcmread(p), decoding_plugin="pylibjpeg")),
            )
        )
        if installed:
            rows.append(
                ("new: decode, GDCM in the worker process", per_file(lambda p: gdcm_worker.decode(p, None, False)))
            )
        rows.append(("new: load_image end to end (window=None)", per_file(lambda p: load_image(p, window=None))))
    return rows


# --------------------------------------------------------------------------- main


def _load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=int, default=1200, help="mutants in all, shared out by source file count")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--pylibjpeg-data", type=Path, default=os.environ.get("PYLIBJPEG_DATA"))
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("MEDCLIP_SHARED", REPO.parent / "shared")))
    ap.add_argument(
        "--targeted",
        type=int,
        default=300,
        help="extra mutants of the JPEG Lossless files with header + JPEG-header flips (issue 21's shape); 0: none",
    )
    ap.add_argument("--keep", type=Path, help="save the mutants that crashed, hung or raised another exception here")
    ap.add_argument("--no-cost", action="store_true")
    ap.add_argument("--cost-files", type=int, default=6)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return 0

    sources = {
        "pydicom + pydicom-data": pydicom_files(),
        "pylibjpeg-data": pylibjpeg_files(args.pylibjpeg_data),
        "shared": shared_files(args.shared) if (args.shared / "data").is_dir() else [],
    }
    sources = {name: files for name, files in sources.items() if files}
    total_files = sum(len(f) for f in sources.values())
    lossless = [f for files in sources.values() for f in files if _syntax(f) == "1.2.840.10008.1.2.4.70"]
    print(f"{_cpu()}, {os.cpu_count()} cores, load average {_load_average()}")
    print(
        f"{'source':24} {'files':>5} {'mutants':>7} {'loaded':>7} {'refused':>7} {'(gdcm)':>7} {'error':>6} {'crashed':>7} {'hung':>5}"
    )
    bad = 0
    grand: Counter = Counter()
    t0 = time.perf_counter()
    runs = [
        (name, files, max(1, round(args.mutants * len(files) / total_files)), "mixed")
        for name, files in sources.items()
    ]
    if lossless and args.targeted:
        runs.append(("JPEG Lossless, hdr+stream", lossless, args.targeted, "header+stream"))
    for index, (name, files, count, mode) in enumerate(runs):
        outcomes = run_mutants(files, count, seed=args.seed + index, keep=args.keep, mode=mode)
        s = summarise(outcomes)
        grand.update(s)
        grand["files"] += len(files) if mode == "mixed" else 0  # the targeted row re-uses files
        bad += s["error"] + s["crashed"] + s["hung"]
        print(
            f"{name:24} {len(files):5d} {s['mutants']:7d} {s['loaded']:7d} {s['refused']:7d} {s['gdcm_crash']:7d} "
            f"{s['error']:6d} {s['crashed']:7d} {s['hung']:5d}"
        )
        errors = Counter(o for o in outcomes if not o.startswith(("loaded", "refused", "gdcm_crash")))
        for outcome, n in errors.most_common():
            print(f"    {outcome}: {n}")
    print(
        f"{'all':24} {grand['files']:5d} {grand['mutants']:7d} {grand['loaded']:7d} {grand['refused']:7d} "
        f"{grand['gdcm_crash']:7d} {grand['error']:6d} {grand['crashed']:7d} {grand['hung']:5d}"
    )
    print(
        f"fuzz took {time.perf_counter() - t0:.0f} s; (gdcm) = refused because GDCM crashed in its worker "
        f"(contained); load average {_load_average()}"
    )
    if not args.no_cost:
        print("\ndecoding cost on the scale benchmark's JPEG files (2500 x 2048 JPEG Baseline), per file, median:")
        for label, ms in cost(args.cost_files):
            print(f"  {label:52} {ms:8.1f} ms")
        print(f"load average {_load_average()}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
