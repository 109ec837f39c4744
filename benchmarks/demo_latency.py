"""Triage-demo latency on CPU: the demo under load, and one prediction vs a plain open_clip pipeline.

Default (issue 19.6, "the demo under load"): the real demo (``python app.py --checkpoint DIR``, the
quick start's model by default) is started in a subprocess on a free port, with its own TMPDIR;
N concurrent users (``--users 1,4,8,16``), each its own ``gradio_client.Client``, upload 2048 x 2048
16-bit MONOCHROME2 DICOMs (``--images`` different ones, made from the bundled sample radiographs,
upsampled) through the endpoint the page's upload box calls (``/load_upload``: read, limits,
model view, findings, priority, similar studies, drafted report, preview), ``--requests-per-user``
each. Per user count: client-side wall time per request (p50 / p95 / max), requests per second,
errors, the server's peak RSS (VmHWM, reset before each level through /proc/PID/clear_refs, and
sampled RSS of the server and its children); at the end, files the demo left in its temporary
folder. Target: p95 < 2 s with 8 users (PASS / FAIL). Exit 1 if any request failed.

    python benchmarks/demo_latency.py [--checkpoint DIR] [--users 1,4,8,16] [--requests-per-user 8]
    python benchmarks/demo_latency.py --quick          # smoke: users 1,2; 2 requests each
    python benchmarks/demo_latency.py --single         # one prediction, medclip vs open_clip (below)

``--single``: one prediction for a 2k x 2k radiograph, medclip vs a plain open_clip pipeline.


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

    python benchmarks/demo_latency.py --single [--checkpoint DIR] [--repeats 10] [--threads 1]
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


def make_radiograph(path: Path, source: Path = SOURCE) -> Path:
    """A 2048 x 2048 16-bit MONOCHROME2 DICOM from a sample image (explicit VR little endian)."""
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(source)
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


def run_single(args: argparse.Namespace) -> int:
    """``--single``: one prediction in process, medclip vs the open_clip peer."""
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


# --------------------------------------------------------------------------- the demo under load
TARGET_USERS = 8
TARGET_P95_S = 2.0


def sample_sources(n: int) -> list[Path]:
    """``n`` different single-image studies of the bundled export (each study's first image)."""
    studies = sorted(p for p in SAMPLE_EXPORT.iterdir() if p.is_dir())
    files = [sorted(s.rglob("*.dcm"))[0] for s in studies if any(s.rglob("*.dcm"))]
    step = max(len(files) // max(n, 1), 1)
    return files[::step][:n]


def load_checkpoint(work: Path, checkpoint: Path | None) -> tuple[Path, list[str]]:
    """The model folder the demo serves and the extra app.py arguments (a gallery built here when needed)."""
    if checkpoint is None:
        quickstart = REPO / "runs" / "quickstart" / "model"
        if (quickstart / "model.safetensors").is_file():
            print(f"model: {quickstart} (the quick start's, as `python app.py` serves it)")
            return quickstart, []
        return build_checkpoint(work, None), ["--gallery", str(work / "gallery")]
    print(f"model: {checkpoint}")
    return checkpoint, []


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DemoServer:
    """``python app.py --checkpoint DIR --port FREE`` in a subprocess with its own TMPDIR (stopped by SIGTERM)."""

    def __init__(self, work: Path, checkpoint: Path, extra: list[str], timeout_s: float = 300.0) -> None:
        import subprocess

        self.temp_root = work / "tmp"
        self.temp_root.mkdir(exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = work / "server.log"
        env = {
            **os.environ,
            "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TMPDIR": str(self.temp_root),
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("MEDCLIP_DEMO_AUTH", None)
        cmd = [sys.executable, str(REPO / "app.py"), "--checkpoint", str(checkpoint), "--port", str(self.port), *extra]
        t0 = time.perf_counter()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        while "Running on local URL" not in self.log.read_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the demo exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if time.perf_counter() - t0 > timeout_s:
                self.stop()
                raise RuntimeError(f"the demo did not start in {timeout_s:.0f} s:\n{self.log.read_text()}")
            time.sleep(0.2)
        self.startup_s = time.perf_counter() - t0

    def reset_peak(self) -> bool:
        """Reset the kernel's peak RSS of the server (VmHWM); False where /proc does not allow it."""
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def peak_rss(self) -> int:
        """VmHWM of the server process in bytes (0 where /proc is missing)."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def leftovers(self) -> list[Path]:
        """Files under the server's TMPDIR that hold an upload (DICOM bytes), while it runs."""
        return [p for p in self.temp_root.rglob("*") if p.is_file() and p.suffix == ".dcm"]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server and its children so far."""
        import psutil

        try:
            proc = psutil.Process(self.proc.pid)
            total = sum(proc.cpu_times()[:2])
            for child in proc.children(recursive=True):
                try:
                    total += sum(child.cpu_times()[:2])
                except psutil.Error:
                    pass
            return float(total)
        except psutil.Error:
            return float("nan")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except Exception:  # noqa: BLE001
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class RssSampler:
    """Largest RSS of the server and its children seen every ``interval`` seconds (psutil)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import threading

        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                total = self.process.memory_info().rss + sum(
                    c.memory_info().rss for c in self.process.children(recursive=True)
                )
                self.peak = max(self.peak, total)
            except Exception:  # noqa: BLE001 - a child that just exited
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def upload_answer_error(out: object) -> str | None:
    """The error a ``/load_upload`` answer shows (None: ranked findings were shown)."""
    page = " ".join(str(x) for x in out) if isinstance(out, (list, tuple)) else str(out)
    if "upload-error" in page:
        return page[page.index("upload-error") :][:200]
    if "ranked-findings" not in page:
        return "no ranked findings in the answer"
    return None


class HttpUser:
    """A light client of the same endpoint through Gradio's HTTP API (what a browser does: upload the file, queue
    the call, read the answer from its event stream), without gradio_client's own work per request. On this
    2-core box the load generator shares the CPU with the server; in use, users' browsers run elsewhere."""

    def __init__(self, url: str) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=120)

    def predict(self, path: Path) -> object:
        import json

        with open(path, "rb") as fh:
            up = self.http.post(f"{self.url}/gradio_api/upload", files={"files": (path.name, fh, "application/dicom")})
        up.raise_for_status()
        server_path = up.json()[0]
        payload = {"data": [{"path": server_path, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}]}
        call = self.http.post(f"{self.url}/gradio_api/call/load_upload", json=payload)
        call.raise_for_status()
        event_id = call.json()["event_id"]
        event = None
        with self.http.stream("GET", f"{self.url}/gradio_api/call/load_upload/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    data = line.split(":", 1)[1].strip()
                    if event == "error":
                        raise RuntimeError(f"the demo answered with an error event: {data[:200]}")
                    return json.loads(data)
        raise RuntimeError("the event stream ended without an answer")

    def close(self) -> None:
        self.http.close()


def drive(
    url: str, images: list[Path], users: int, per_user: int, client_kind: str = "gradio_client"
) -> tuple[list[float], list[str], float]:
    """``users`` clients upload ``per_user`` images each, at once; (latencies s, errors, wall s)."""
    import threading

    from gradio_client import Client, handle_file

    clients: list = (
        [HttpUser(url) for _ in range(users)]
        if client_kind == "http"
        else [Client(url, verbose=False, download_files=False) for _ in range(users)]
    )
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(users + 1)

    def user(k: int) -> None:
        start.wait()
        for r in range(per_user):
            image = images[(k + r) % len(images)]
            t0 = time.perf_counter()
            try:
                out = client_predict(clients[k], handle_file(str(image)))
                error = upload_answer_error(out)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
            took = time.perf_counter() - t0
            with lock:
                latencies.append(took)
                if error:
                    errors.append(error)

    def client_predict(client, file):  # type: ignore[no-untyped-def]
        if isinstance(client, HttpUser):
            return client.predict(Path(file["path"]))
        return client.predict(file, api_name="/load_upload")

    threads = [threading.Thread(target=user, args=(k,)) for k in range(users)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for c in clients:
        try:
            c.close()
        except Exception:  # noqa: BLE001
            pass
    return latencies, errors, wall


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def cpu_model() -> str:
    import platform
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


def run_load(args: argparse.Namespace) -> int:
    """The demo under load: a real server, N concurrent gradio_client users uploading 2k x 2k DICOMs."""
    users_list = [1, 2] if args.quick else [int(u) for u in args.users.split(",") if u.strip()]
    per_user = 2 if args.quick else args.requests_per_user
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"CPU: {cpu_model()}; {os.cpu_count()} logical cores; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="medclip-demo-load-") as tmp:
        work = Path(tmp)
        (work / "images").mkdir()
        images = [
            make_radiograph(work / "images" / f"radiograph_{i}_2048.dcm", src)
            for i, src in enumerate(sample_sources(args.images))
        ]
        mib = sum(p.stat().st_size for p in images) / len(images) / 1024**2
        print(f"input: {len(images)} different {SIZE} x {SIZE} 16-bit MONOCHROME2 DICOMs, {mib:.1f} MiB each")
        print(
            f"clients: {args.client} ({'Gradio HTTP API with httpx' if args.client == 'http' else 'gradio_client.Client'})"
        )
        checkpoint, extra = load_checkpoint(work, args.checkpoint)
        server = DemoServer(work, checkpoint, extra)
        print(f"demo started in {server.startup_s:.1f} s on {server.url} (python app.py, pid {server.proc.pid})")
        rows = []
        all_errors: list[str] = []
        try:
            warm, errors, _ = drive(
                server.url, images, 1, 1, args.client
            )  # first request: lazy imports, allocator warm-up
            all_errors += errors
            print(f"warm-up request (not counted): {warm[0]:.2f} s")
            for users in users_list:
                reset = server.reset_peak()
                cpu0, own0 = server.cpu_seconds(), time.process_time()
                with RssSampler(server.proc.pid) as sampler:
                    latencies, errors, wall = drive(server.url, images, users, per_user, args.client)
                server_cpu, own_cpu = server.cpu_seconds() - cpu0, time.process_time() - own0
                all_errors += errors
                rows.append(
                    (
                        users,
                        len(latencies),
                        percentile(latencies, 50),
                        percentile(latencies, 95),
                        max(latencies) if latencies else float("nan"),
                        len(latencies) / wall if wall > 0 else float("nan"),
                        len(errors),
                        server.peak_rss() / 1024**2 if reset else float("nan"),
                        sampler.peak / 1024**2,
                        server_cpu / max(len(latencies), 1) * 1000,
                        own_cpu / max(len(latencies), 1) * 1000,
                    )
                )
                print(f"  {users} user(s): done, p95 {rows[-1][3]:.2f} s, {len(errors)} error(s)", flush=True)
            time.sleep(0.5)
            leftovers = server.leftovers()
        finally:
            code = server.stop()
        print()
        header = (
            f"{'users':>5}{'requests':>10}{'p50 s':>8}{'p95 s':>8}{'max s':>8}{'req/s':>8}{'errors':>8}"
            f"{'peak RSS MiB':>14}{'RSS+children MiB':>18}{'server CPU ms/req':>19}{'clients CPU ms/req':>20}"
        )
        print(header)
        print("-" * len(header))
        for u, n, p50, p95, mx, rps, ne, hwm, sampled, scpu, ccpu in rows:
            print(
                f"{u:>5}{n:>10}{p50:>8.2f}{p95:>8.2f}{mx:>8.2f}{rps:>8.2f}{ne:>8}{hwm:>14.0f}{sampled:>18.0f}"
                f"{scpu:>19.0f}{ccpu:>20.0f}"
            )
        print(
            "\nlatency: client-side wall time of one /load_upload call (upload + read + model view + prediction + "
            "answer); peak RSS: the server's VmHWM during that level (reset before it); CPU ms/req: CPU time (user + "
            "system) of the server process and children, and of this process's clients, per request"
        )
        print(f"upload files left in the demo's TMPDIR after the run: {len(leftovers)}; server exit code {code}")
        target = [r for r in rows if r[0] == TARGET_USERS]
        if target:
            p95 = target[0][3]
            verdict = "PASS" if p95 < TARGET_P95_S else "FAIL"
            print(
                f"target p95 < {TARGET_P95_S:.0f} s at {TARGET_USERS} users: p95 {p95:.2f} s, ratio {p95 / TARGET_P95_S:.2f}: {verdict}"
            )
        else:
            print(
                f"target p95 < {TARGET_P95_S:.0f} s at {TARGET_USERS} users: not measured (--users without {TARGET_USERS})"
            )
        if all_errors:
            print(f"\n{len(all_errors)} request(s) failed; first: {all_errors[0]}", file=sys.stderr)
            return 1
        if leftovers:
            print(f"\nuploads left on disk: {[p.name for p in leftovers]}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--users", default="1,4,8,16", help="concurrent users per level (comma-separated)")
    parser.add_argument("--requests-per-user", type=int, default=8)
    parser.add_argument("--images", type=int, default=4, help="different 2k x 2k DICOMs the users upload")
    parser.add_argument("--quick", action="store_true", help="smoke run: users 1,2; 2 requests each")
    parser.add_argument(
        "--client",
        choices=("gradio_client", "http"),
        default="gradio_client",
        help="the load generator: gradio_client.Client, or plain HTTP calls of Gradio's API (less client CPU on "
        "the same box)",
    )
    parser.add_argument("--single", action="store_true", help="one prediction in process, medclip vs open_clip")
    parser.add_argument("--repeats", type=int, default=10, help="--single: timed rounds")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="--single: torch CPU threads for both pipelines (1: fair on a shared machine)",
    )
    args = parser.parse_args(argv)
    return run_single(args) if args.single else run_load(args)


if __name__ == "__main__":
    sys.exit(main())
