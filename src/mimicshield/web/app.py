"""The Gradio page of ``mimicshield serve``, and the server that shows it.

Only this module imports Gradio, and only ``mimicshield serve`` imports this module: the page is
built when the server starts, and the model is loaded when the first job needs it.

The page: drop images, choose a strength (the method and exact budget under "Advanced"),
Protect. Jobs wait in one queue per device (one at a time); progress shows the image and the
PGD step; Cancel stops at the next step. Afterwards: a before/after slider, the perturbation
amplified, a "what a mimic gets" preview (SDEdit of original and protected, same seed), and the
protected files and a zip with the run's JSON record to download.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from .. import METHODS, Budget, BudgetError, LatentDiffusion, ModelUnavailableError, RunOptions
from ..imagefiles import ImageFileError
from ..methods import TargetedMethod
from ..models import default_dtypes, load_model, model_notes, resolve_device
from ..runtime import MemoryPlanError, SpeedOptions
from . import views
from .jobs import (
    Cancellations,
    JobCancelled,
    JobFolders,
    JobOutcome,
    UploadError,
    UploadLimits,
    check_uploads,
    run_job,
)
from .presets import DEFAULT_PRESET, PRESETS

#: Every event that runs a network waits for this one slot: one job at a time per device.
DEVICE_QUEUE = "device"
#: Small images fill their frame, pixel for pixel: a perturbation is a pattern of single pixels.
CSS = ".pixels img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"
#: Gradio's copies of uploads and outputs older than this are removed while the server runs
#: (seconds); all of them go when it stops.
CACHE_AGE_S = 3600


@dataclass(frozen=True)
class ServeSettings:
    """What ``mimicshield serve`` was told.

    Attributes:
        model: hub id, local folder, single-file checkpoint, "mini" or "tiny" (any family).
        model_config: a single-file checkpoint's diffusers configuration (hub id or folder), or
            None for diffusers' reference one.
        device: auto, cpu, cuda, cuda:N or mps.
        dtype: networks' precision, or "auto" (as ``mimicshield protect``).
        limits: caps on one job's uploads.
        seed: seed of every protection run and of the mimicry preview.
    """

    model: str
    model_config: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    limits: UploadLimits = field(default_factory=UploadLimits)
    seed: int = 0


class LazyModel:
    """The model, loaded by the first job that needs it, then shared by every job."""

    def __init__(self, settings: ServeSettings) -> None:
        self._settings = settings
        self._model: LatentDiffusion | None = None
        self._lock = threading.Lock()
        self.dtypes: tuple[str, ...] = ()

    def get(self, progress: gr.Progress) -> LatentDiffusion:
        """The loaded model; the first call shows a loading message in the page while it loads.

        Raises:
            ModelUnavailableError: weights or device missing (the library's one sentence).
        """
        with self._lock:
            if self._model is None:
                progress(0, desc=f"Loading the model '{self._settings.model}' (first use only)…")
                device = resolve_device(self._settings.device)
                self.dtypes = default_dtypes(device, self._settings.dtype)
                self._model = load_model(
                    self._settings.model,
                    device=device,
                    dtype=self.dtypes[0],
                    config=self._settings.model_config,
                )
            return self._model


def build_app(settings: ServeSettings, folders: JobFolders) -> gr.Blocks:
    """The page, wired to a lazily loaded model; job files go into ``folders``."""
    model = LazyModel(settings)
    cancellations = Cancellations()

    with gr.Blocks(
        title="mimicshield — protect your images",
        analytics_enabled=False,
        delete_cache=(CACHE_AGE_S // 4, CACHE_AGE_S),
    ) as app:
        gr.Markdown(
            "# Protect your images against AI mimicry\n"
            "mimicshield adds a small, bounded change to your pictures so that diffusion models "
            "(Stable Diffusion and kin) fail to edit or imitate them. The change is measured in "
            "levels of the 8-bit image (0–255) and checked on every file you download."
        )
        jobs = gr.State({})  # {file name: {"original", "protected", "eps"}} of the latest job
        with gr.Row():
            with gr.Column(scale=2):
                uploads = gr.File(
                    label=f"Images to protect (drag and drop, up to {settings.limits.max_files} "
                    f"files of {settings.limits.max_file_mb:g} MB)",
                    file_count="multiple",
                    file_types=["image"],
                    elem_id="uploads",
                )
                preset = gr.Radio(
                    choices=[(PRESETS[name].label(name), name) for name in PRESETS],
                    value=DEFAULT_PRESET,
                    label="Strength",
                    elem_id="strength",
                )
                with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                    method = gr.Dropdown(
                        choices=[(_method_label(name), name) for name in METHODS],
                        value="sds-",
                        label="Method",
                        info="sds- is the paper's recommendation; the README compares them all",
                        elem_id="method",
                    )
                    eps = gr.Number(
                        value=PRESETS[DEFAULT_PRESET].eps_255,
                        minimum=0,
                        maximum=255,
                        label="Budget ε in levels of 0–255 (no pixel channel moves more)",
                        elem_id="eps",
                    )
                    steps = gr.Number(
                        value=PRESETS[DEFAULT_PRESET].steps,
                        minimum=0,
                        precision=0,
                        label="PGD steps (more: stronger, slower)",
                        elem_id="steps",
                    )
                    prompt = gr.Textbox(
                        value="a photo",
                        label="Prompt the model is conditioned on",
                        elem_id="prompt",
                    )
                    strength = gr.Slider(
                        0.05, 1.0, value=0.3, step=0.05, label="Mimicry preview: SDEdit strength"
                    )
                    inference_steps = gr.Number(
                        value=50, minimum=1, precision=0, label="Mimicry preview: denoising steps"
                    )
                with gr.Row():
                    protect = gr.Button("Protect", variant="primary", elem_id="protect")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
                status = gr.Markdown(
                    "Drop your images above, choose a strength and press Protect.",
                    elem_id="status",
                    label="Status",
                )
                downloads = gr.File(
                    label="Protected files and a zip with the run's record",
                    file_count="multiple",
                    interactive=False,
                    elem_id="downloads",
                )
            with gr.Column(scale=3):
                shown = gr.Dropdown(choices=[], label="Image to look at", elem_id="shown")
                pair = gr.ImageSlider(
                    label="Before / after: drag the slider",
                    format="png",  # lossless: the display must not add its own artefacts
                    interactive=False,
                    height=420,
                    elem_id="pair",
                )
                perturbation = gr.Image(
                    label="The change, amplified (gray: unchanged)",
                    format="png",
                    interactive=False,
                    height=300,
                    alt_text="The change made to the image, amplified so that it can be seen",
                    elem_id="perturbation",
                    elem_classes="pixels",
                )
                mimic = gr.Button("Show what a mimic gets", elem_id="mimic")
                with gr.Row():
                    mimic_original = gr.Image(
                        label="Mimicry of the original",
                        format="png",
                        interactive=False,
                        height=300,
                        alt_text="What SDEdit makes of the original image",
                        elem_id="mimic-original",
                        elem_classes="pixels",
                    )
                    mimic_protected = gr.Image(
                        label="Mimicry of the protected image",
                        format="png",
                        interactive=False,
                        height=300,
                        alt_text="What SDEdit makes of the protected image, with the same seed",
                        elem_id="mimic-protected",
                        elem_classes="pixels",
                    )

        def choose_preset(name: str) -> tuple[float, int]:
            return PRESETS[name].eps_255, PRESETS[name].steps

        def queue_job(request: gr.Request) -> str:
            cancellations.begin(request.session_hash)
            return "Waiting for the device…"

        def protect_uploads(
            files: list[str] | None,
            preset_name: str,
            method_name: str,
            eps_255: float,
            step_count: int,
            prompt_text: str,
            request: gr.Request,
            progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's injection idiom)
        ):
            session = request.session_hash
            flag = cancellations.claim(session)  # claimed first: every return must finish it
            nothing = (None, gr.update(choices=[], value=None), {}, None, None)
            try:
                paths = check_uploads(files, settings.limits)
                if eps_255 is None or step_count is None:  # a number field left empty
                    raise ValueError("Under Advanced, ε and the steps each need a number.")
                method_ = _method(
                    method_name,
                    Budget.from_255(eps_255, PRESETS[preset_name].step_size_255, int(step_count)),
                    prompt_text,
                )
                loaded = model.get(progress)
                method_.check_model(loaded)  # e.g. a protector trained for another model
            except (UploadError, BudgetError, ModelUnavailableError, ValueError) as error:
                cancellations.finish(session, flag)
                return (str(error), *nothing)
            folder = folders.start(session)
            progress.tqdm(None, desc="Images", total=len(paths), unit="images")
            try:
                outcome = run_job(
                    paths,
                    folder,
                    method_,
                    loaded,
                    _run_options(settings, model.dtypes, loaded),
                    cancelled=flag,
                    on_step=lambda step, total, value: progress(
                        (step, total), desc="PGD steps", unit="steps"
                    ),
                    on_file=lambda result: progress.update(1),
                )
            except JobCancelled:
                folders.release(session)
                return ("Cancelled. Nothing was kept.", *nothing)
            except MemoryPlanError as error:  # not even the smallest image fits the device
                folders.release(session)
                return (str(error), *nothing)
            finally:
                cancellations.finish(session, flag)
            state = {
                Path(result.output).name: {
                    "original": result.input,
                    "protected": result.output,
                    "eps": eps_255,
                }
                for result in outcome.protected
            }
            first = next(iter(state), None)
            return (
                _report(outcome, method_, model_notes(loaded)),
                [str(path) for path in outcome.downloads],
                gr.update(choices=list(state), value=first),
                state,
                *_view(first, state),
            )

        def cancel_job(request: gr.Request) -> str:
            cancellations.cancel(request.session_hash)
            return "Cancelling at the next step…"

        def preview_mimicry(
            name: str | None,
            state: dict,
            prompt_text: str,
            strength_value: float,
            steps_value: int,
            progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's injection idiom)
        ):
            if not name or name not in state:
                raise gr.Error("Protect an image first; the preview compares it with its original.")
            original, protected = views.load_pair(
                Path(state[name]["original"]), Path(state[name]["protected"])
            )
            progress(0, desc="SDEdit of the original and of the protected image…")
            return views.mimicry_pair(
                model.get(progress),
                original,
                protected,
                prompt=prompt_text,
                strength=strength_value,
                num_inference_steps=int(steps_value),
                seed=settings.seed,
            )

        def forget_session(request: gr.Request) -> None:
            folders.release(request.session_hash)
            cancellations.forget(request.session_hash)

        # .input, not .change: only the user's choice resets ε and steps, never a late page event.
        preset.input(choose_preset, preset, [eps, steps], queue=False)
        protect.click(queue_job, None, status, queue=False).then(
            protect_uploads,
            [uploads, preset, method, eps, steps, prompt],
            [status, downloads, shown, jobs, pair, perturbation],
            show_progress_on=downloads,  # one place for the bars, not over every output
            concurrency_id=DEVICE_QUEUE,
            concurrency_limit=1,
        )
        cancel.click(cancel_job, None, status, queue=False)
        shown.input(_view, [shown, jobs], [pair, perturbation])  # the user's choice only
        mimic.click(
            preview_mimicry,
            [shown, jobs, prompt, strength, inference_steps],
            [mimic_original, mimic_protected],
            concurrency_id=DEVICE_QUEUE,
            concurrency_limit=1,
        )
        app.unload(forget_session)
    return app


def serve(settings: ServeSettings, *, host: str, port: int, share: bool) -> None:
    """Build the page and serve it until interrupted (Ctrl-C or SIGTERM).

    Every file the server handles (Gradio's uploads and output copies, each job's folder) lives
    under one temporary folder that is removed when the server stops.
    """
    with tempfile.TemporaryDirectory(prefix="mimicshield-web-") as temporary:
        root = Path(temporary)
        (root / "jobs").mkdir()
        with _gradio_cache(root / "gradio"), _sigterm_interrupts():
            app = build_app(settings, JobFolders(root / "jobs"))
            app.queue(default_concurrency_limit=1)
            # Gradio's own banner would advise editing launch(); ours names the options.
            _, local_url, share_url = app.launch(
                server_name=host,
                server_port=port,
                share=share,
                max_file_size=settings.limits.max_file_bytes,
                allowed_paths=[str(root)],
                show_error=True,
                ssr_mode=False,
                css=CSS,
                quiet=True,
                prevent_thread_lock=True,
            )
            print(f"mimicshield: the page is at {local_url} (Ctrl-C stops it)", flush=True)
            if share_url:
                print(f"mimicshield: public link (--share): {share_url}", flush=True)
            print(f"mimicshield: files of this server: {root} (removed when it stops)", flush=True)
            try:
                app.block_thread()
            finally:
                app.close()


@contextlib.contextmanager
def _gradio_cache(folder: Path) -> Iterator[None]:
    """Point Gradio's file cache (uploads, outputs) at ``folder`` while the server runs.

    Gradio reads the location only from the environment, when the page is built and when the
    server starts; the previous value comes back afterwards.
    """
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so that a stopped server still removes its files."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _method(name: str, budget: Budget, prompt: str):
    """The configured method; targeted methods use the built-in pattern as their target."""
    settings: dict[str, object] = {"budget": budget, "prompt": prompt}
    if issubclass(METHODS[name], TargetedMethod):
        settings["target"] = "pattern"
    return METHODS[name](**settings)


def _method_label(name: str) -> str:
    """The method's name and the start of its module's docstring, up to the colon.

    Each method's module names the method before stating its rule, e.g. "sds- — SDS−, the
    recommended method".
    """
    summary = (inspect.getmodule(METHODS[name]).__doc__ or "").strip()
    return f"{name} — {summary.split(':')[0]}" if summary else name


def _run_options(settings: ServeSettings, dtypes: tuple[str, ...], model) -> RunOptions:
    """The command line's defaults for a run: its seed, precision choice and CPU layout."""
    return RunOptions(
        seed=settings.seed,
        dtypes=dtypes,
        speed=SpeedOptions(channels_last=model.device.type == "cpu"),
        record_extra={"front_end": "web"},
    )


def _view(name: str | None, state: dict) -> tuple:
    """(before/after pair, amplified perturbation) of one protected file, or nothing."""
    if not name or name not in state:
        return None, None
    entry = state[name]
    try:
        original, protected = views.load_pair(Path(entry["original"]), Path(entry["protected"]))
    except ImageFileError as error:  # the job's folder was cleaned up meanwhile
        raise gr.Error(str(error)) from None
    gain = views.amplification(entry["eps"])
    return (
        (views.to_display(original), views.to_display(protected)),
        gr.update(
            value=views.amplified(original, protected, entry["eps"]),
            label=f"The change, amplified ×{gain:.0f} (gray: unchanged)",
        ),
    )


def _report(outcome: JobOutcome, method, notes: list[str]) -> str:
    """The status text after a job: what was protected and how well, then what failed and why."""
    results = outcome.summary.results
    budget = method.budget
    lines = [
        f"**Protected {len(outcome.protected)} of {len(results)} images** with {method.name} "
        f"(ε {budget.eps * 255:g}/255, {budget.steps} steps) in {outcome.summary.seconds:.1f} s."
    ]
    lines += [
        f"- {Path(result.output).name}: changed by at most {result.linf_255:g}/255 on the saved "
        f"file; PSNR {_number(result.psnr_db, '.1f')} dB, SSIM {_number(result.ssim, '.4f')}"
        for result in outcome.protected
    ]
    if outcome.messages:
        lines += ["", "**Could not protect:**"] + [f"- {message}" for message in outcome.messages]
    lines += [f"\n*Note: {note}*" for note in notes]
    return "\n".join(lines)


def _number(value: float | None, spec: str) -> str:
    """``value`` formatted, or "–" where it is undefined (identical images, too small for SSIM)."""
    return "–" if value is None else format(value, spec)
