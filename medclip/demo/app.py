"""medclip triage demo page (Gradio layout and callbacks). Reading, predicting and rendering live in the
rest of ``medclip.demo``; this module is the page, part of the package (a wheel serves it without the repository).

    medclip demo                                    # the quick start's model, http://127.0.0.1:7860
    medclip demo --checkpoint DIR --port 8080 --auth user:pass
    python app.py --checkpoint DIR                  # the same (the repository's thin launcher)

Research use only, not for diagnosis. Uploads are read in a private temporary folder that is
removed after each upload and when the app stops; nothing is downloaded (offline).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path

from medclip.fsutil import process_temp_dir

# Before gradio is imported: every file Gradio receives or serves goes to a private folder we remove
# (this process's folder under medclip's temporary root: a start after a SIGKILL removes it).
_TEMP_ROOT = process_temp_dir("gradio")
os.environ["GRADIO_TEMP_DIR"] = str(_TEMP_ROOT)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
atexit.register(shutil.rmtree, _TEMP_ROOT, True)

import gradio as gr  # noqa: E402

from medclip.demo import LoadedStudy, TriageEngine, UploadError, UploadLimits, read_upload  # noqa: E402
from medclip.demo.render import (  # noqa: E402
    NOTICE,
    render_error,
    render_findings,
    render_header,
    render_priority,
    render_similar,
)
from medclip.demo.uploads import StudyStore, UploadRefs, UploadSizeLimit, bundled_examples  # noqa: E402
from medclip.io import WINDOW_PRESETS  # noqa: E402

AUTO_WINDOW = "as trained (the model's window)"  # the default: the checkpoint's saved preprocessing
FILE_WINDOW = "auto (from the file)"
CUSTOM_WINDOW = "custom (center / width)"
#: When a session's study was set aside to bound memory (many users since its upload).
SET_ASIDE = (
    "this study is no longer kept (the demo keeps at most {mib:.0f} MiB of decoded studies for all users "
    "together; the least recently used go first): upload it again"
)
WINDOW_CHOICES = [AUTO_WINDOW, FILE_WINDOW, *WINDOW_PRESETS, CUSTOM_WINDOW]


def _window_spec(choice: str, center: float | None, width: float | None):
    if choice in WINDOW_PRESETS:
        return choice
    if choice == CUSTOM_WINDOW:
        if center is None or width is None or width < 1:
            raise ValueError("custom window needs a center and a width of at least 1")
        return float(center), float(width)
    return "auto" if choice == FILE_WINDOW else None  # None: the window the model was trained with


def _remove_upload(path: str) -> None:
    """Remove Gradio's copy of an upload and its folder (only inside the private temporary folder)."""
    file = Path(path)
    try:
        if file.resolve().is_relative_to(_TEMP_ROOT.resolve()):
            file.unlink(missing_ok=True)
            shutil.rmtree(file.parent, ignore_errors=True) if file.parent != _TEMP_ROOT else None
    except OSError:
        pass


#: Uploads received and not yet read, per stored path (identical files sent at once share one path).
_UPLOADS = UploadRefs(remove=_remove_upload)


def _forget_upload(path: str | None) -> None:
    """Remove Gradio's copy of an upload (and its folder) once it is decoded, unless another user's upload
    of the same bytes (stored at the same path) is still to be read, or being received."""
    if path:
        _UPLOADS.release(path)


def _enlarge(view, minimum: int = 320):
    """Blow a small model view up by pixel repetition, so the preview shows exactly the model's pixels."""
    factor = -(-minimum // max(view.shape))
    return view.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else view


def build_demo(engine: TriageEngine, limits: UploadLimits | None = None) -> gr.Blocks:
    """The triage page on a loaded engine (``limits``: the upload limits, default ``UploadLimits()``)."""
    limits = limits if limits is not None else UploadLimits()
    examples = bundled_examples()
    with gr.Blocks(
        title="medclip triage demo (research use only)", analytics_enabled=False, delete_cache=(300, 900)
    ) as demo:
        gr.HTML(
            f"<div id='research-notice' role='note' style='background:#fef3f2;border:2px solid #b42318;"
            f"padding:10px;font-weight:bold;color:#b42318'>&#9888; {NOTICE}</div>"
        )
        if engine.gallery_note:
            gr.Markdown(engine.gallery_note)
        # the session keeps a token; the decoded studies of all sessions sit in one store bounded by bytes
        studies = StudyStore(limits.max_kept_bytes)
        study_state = gr.State(None, time_to_live=1800, delete_callback=studies.discard)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(
                    label="Upload DICOM, zipped DICOM series, NIfTI, PNG or JPEG", type="filepath", elem_id="upload"
                )
                with gr.Row():
                    example = gr.Dropdown(
                        list(examples), label="or pick a bundled example", value=None, elem_id="example"
                    )
                with gr.Group(visible=False) as window_group:
                    window = gr.Dropdown(
                        WINDOW_CHOICES, value=AUTO_WINDOW, label="Window / level preset", elem_id="window"
                    )
                    with gr.Row():
                        center = gr.Number(label="center (Enter applies)", value=40.0)
                        width = gr.Number(label="width (Enter applies)", value=400.0)
                    slice_index = gr.Slider(0, 1, value=0, step=1, label="slice", visible=False, elem_id="slice")
                preview = gr.Image(
                    label="What the model sees",
                    type="numpy",
                    image_mode="L",
                    format="png",  # lossless, so the preview is the model's pixels (Gradio's webp was not; 3x slower)
                    interactive=False,
                    height=320,
                    elem_id="preview",
                )
                header = gr.HTML(elem_id="header-box")
            with gr.Column(scale=2):
                status = gr.HTML(elem_id="status")
                priority = gr.HTML(elem_id="priority-box")
                findings = gr.HTML(elem_id="findings-box")
                report = gr.Textbox(
                    label="Drafted report (edit, then copy)",
                    lines=6,
                    buttons=["copy"],
                    interactive=True,
                    elem_id="drafted-report",
                )
                similar = gr.HTML(elem_id="similar-box")

        outputs = [preview, status, priority, findings, report, similar]

        def predict(token: str | None, choice: str, c: float | None, w: float | None, s: float | None):
            study = studies.get(token)
            if study is None and token:
                return [None, render_error(SET_ASIDE.format(mib=studies.max_bytes / 1024**2)), "", "", "", ""]
            return show(study, choice, c, w, s)

        def show(study: LoadedStudy | None, choice: str, c: float | None, w: float | None, s: float | None):
            if study is None:
                return [None, "", "", "", "", ""]
            try:
                spec = _window_spec(choice, c, w)
                view, result = engine.triage(study, spec, int(s) if study.image.is_volume and s is not None else None)
            except (ValueError, MemoryError) as exc:
                return [None, render_error(f"{study.name}: {exc}"), "", "", "", ""]
            except Exception as exc:  # noqa: BLE001 - keep serving; the page says what failed
                print(f"prediction failed: {type(exc).__name__}", file=sys.stderr)
                return [None, render_error(f"{study.name}: prediction failed ({type(exc).__name__})"), "", "", "", ""]
            took = sum(result.timings.values())
            note = f"<span id='timing' style='font-size:0.85em'>{study.name}: prediction in {took * 1000:.0f} ms</span>"
            return [
                _enlarge(view),
                note,
                render_priority(result.priority),
                render_findings(result.findings),
                result.report_text,
                render_similar(result.similar, engine.gallery_note),
            ]

        def load(path: str | None, previous: str | None = None, name: str | None = None):
            studies.discard(previous)  # a new upload (or an error) replaces the session's study
            hidden = [gr.update(visible=False), gr.update(visible=False, maximum=1, value=0)]
            if not path:
                return [None, *hidden, "", None, "", "", "", "", ""]
            try:
                study = read_upload(path, limits=limits, name=name or Path(path).name)
            except UploadError as exc:
                return [None, *hidden, "", None, render_error(str(exc)), "", "", "", ""]
            except Exception as exc:  # noqa: BLE001 - an unforeseen reader failure must not take the page down
                # the message may hold the file name (possible PHI): log only where it failed
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                print(
                    f"upload failed: {type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}",
                    file=sys.stderr,
                )
                return [
                    None,
                    *hidden,
                    "",
                    None,
                    render_error(f"{name or Path(path).name}: could not be read ({type(exc).__name__})"),
                    "",
                    "",
                    "",
                    "",
                ]
            finally:
                if name is None:
                    _forget_upload(path)
            n = study.n_slices
            controls = [
                gr.update(visible=study.windowable),
                gr.update(visible=n > 1, maximum=max(n - 1, 1), value=n // 2),
            ]
            first = show(study, AUTO_WINDOW, None, None, n // 2)
            return [studies.put(study), *controls, render_header(study.header), *first]

        load_outputs = [study_state, window_group, slice_index, header, *outputs]
        upload.upload(
            lambda p, previous: [*load(p, previous), gr.update(value=AUTO_WINDOW)],
            inputs=[upload, study_state],
            outputs=[*load_outputs, window],
            api_name="load_upload",
        )

        def load_example(label: str | None, previous: str | None):
            loaded = load(str(examples[label]), previous, label) if label in examples else load(None, previous)
            return [*loaded, gr.update(value=AUTO_WINDOW)]

        example.input(
            load_example, inputs=[example, study_state], outputs=[*load_outputs, window], api_name="load_example"
        )
        controls = [study_state, window, center, width, slice_index]

        def choose_window(study: str | None, choice: str, c: float | None, w: float | None, s: float | None):
            if choice in WINDOW_PRESETS:  # show the preset's numbers so the user can start from them
                c, w = WINDOW_PRESETS[choice]
            return [*predict(study, choice, c, w, s), c, w]

        def custom_window(study: str | None, c: float | None, w: float | None, s: float | None):
            return [*predict(study, CUSTOM_WINDOW, c, w, s), gr.update(value=CUSTOM_WINDOW)]

        window.input(choose_window, inputs=controls, outputs=[*outputs, center, width], api_name="predict")
        for event in (center.submit, width.submit):
            event(
                custom_window,
                inputs=[study_state, center, width, slice_index],
                outputs=[*outputs, window],
                api_visibility="private",
            )
        slice_index.release(predict, inputs=controls, outputs=outputs, api_visibility="private")
    return demo


#: Room for the multipart form around one file: a request may exceed the upload limit by this much.
FORM_OVERHEAD_BYTES = 1024**2


def launch_page(
    demo, *, host: str, port: int, auth: tuple[str, str] | None, limits: UploadLimits, block: bool = True
) -> str:
    """Serve a built Gradio page on ``host:port`` and print its local URL; block until stopped unless ``block=False``.

    Uploads over ``limits.max_upload_bytes`` are refused with a 413 before their body is read
    (:class:`~medclip.demo.uploads.UploadSizeLimit` on the Content-Length; Gradio's ``max_file_size``
    while it streams); an upload cut short (the client went away) leaves no partial file in the
    private temporary folder (the same middleware). Gradio's start-up chatter is silenced: it
    suggests ``share`` (a public link), which a tool that handles patient images must never do.
    Returns the local URL.
    """
    from starlette.middleware import Middleware

    demo.launch(
        server_name=host,
        server_port=port or None,
        auth=auth,
        max_file_size=limits.max_upload_bytes,
        ssr_mode=False,
        share=False,
        inbrowser=False,
        footer_links=[],
        show_error=False,
        auth_message="medclip triage demo - research use only" if auth else None,
        quiet=True,
        prevent_thread_lock=True,
        app_kwargs={
            "middleware": [
                Middleware(
                    UploadSizeLimit,
                    max_bytes=limits.max_upload_bytes + FORM_OVERHEAD_BYTES,
                    upload_dir=_TEMP_ROOT,
                    refs=_UPLOADS,
                )
            ]
        },
    )
    url = str(demo.local_url)
    print(f"* Running on local URL:  {url}", flush=True)
    if block:
        demo.block_thread()
    return url


#: Events the page runs at once (Gradio's queue; the others wait their turn): bounds the decoded images
#: in memory and the CPU work in flight.
CONCURRENCY = 2
#: Events that may wait in the queue; one more is refused with Gradio's "queue is full" message.
MAX_QUEUE = 64


def threads_per_event(concurrency: int = CONCURRENCY) -> int:
    """torch CPU threads for one event: this process's cores shared by the events that run at once.

    Two events that each used every core would oversubscribe the CPU; on a 2-core machine a
    prediction took 10x longer with 2 threads each than with 1.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(concurrency, 1))


def start_page(
    engine: TriageEngine,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: tuple[str, str] | None = None,
    limits: UploadLimits | None = None,
) -> gr.Blocks:
    """Build the page, bound its queue and CPU threads, and serve it in the background; returns the page
    (``demo.local_url`` is its address, ``demo.close()`` stops it)."""
    import torch

    limits = limits if limits is not None else UploadLimits()
    torch.set_num_threads(threads_per_event())
    demo = build_demo(engine, limits)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=MAX_QUEUE)
    launch_page(demo, host=host, port=port, auth=auth, limits=limits, block=False)
    return demo


def serve(
    engine: TriageEngine,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: tuple[str, str] | None = None,
    limits: UploadLimits | None = None,
) -> int:
    """Build the page and serve it until interrupted."""
    # SIGTERM should clean up like Ctrl-C does (atexit removes the temporary folder).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("medclip triage demo: research use only, not for diagnosis; Ctrl-C to stop", flush=True)
    demo = start_page(engine, host=host, port=port, auth=auth, limits=limits)  # 413 before reading oversized uploads
    demo.block_thread()
    return 0


def main(argv: list[str] | None = None, prog: str = "app.py") -> int:
    """``python app.py [--checkpoint DIR] [--host ...] [--port ...] [--auth user:pass]``."""
    from medclip.demo.startup import build_demo_parser, run_demo
    from medclip.logging_setup import setup_logging, verbosity_of

    args = build_demo_parser(prog).parse_args(argv)
    setup_logging(verbosity_of(args))
    return run_demo(args, serve=serve)
