"""The web page for a DeS4 model (``des4-demo`` and the Hub Space serve it): drop or paste a photo, see its classes.
Needs the ``demo`` extra (Gradio), imported when a page is built.

Gradio around des4-predict's and des4-suggest's own parts. The page shows the model card's facts (classes, training
data, mIoU); its tabs: a colour overlay (whole image, or the sliding window for large ones) with an opacity slider, a
legend of the classes present with their share, the mask as a palette PNG and the time (``/segment``); where the
model is unsure (``/uncertainty``); up to 50 uploads ranked as des4-suggest ranks a folder (``/rank``). Each tab is
an API endpoint (``gradio_client``). Errors (not an image, a model that cannot be loaded) are one line in the page.

Safe by default, for a page anyone may use: every endpoint reads only files in Gradio's upload folder (Gradio refuses
any other path a client names), and ``des4-demo`` gives each page a private upload folder (``GRADIO_TEMP_DIR``,
unless set), so that holds only this page's uploads, its copies of the examples and its results; no folder is served
(examples are copied into that cache, ``allowed_paths`` stays empty); uploads are capped in bytes and pixels; the
model box and its ``/load_model`` endpoint exist only with ``--model-choice``, and then load only Hub ids or folders
under ``--models-dir``; the page's temporary files are removed on exit.
"""

from __future__ import annotations

import contextlib
import html
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .evaluation import default_stride
from .hub import ModelFacts, model_facts
from .image_io import read_image
from .inference import (
    SLIDING_WINDOW_ABOVE,
    SLIDING_WINDOW_CROP,
    PrecisionChoice,
    autocast,
    color_palette,
    overlay,
    predict_logits,
    resolve_precision,
    segment_images,
)
from .label_next import rank_images, suggestion_tile
from .loading import (
    UsageError,
    display_rgb,
    label_map_to_image,
    load_model_and_processor,
    prepare_for_inference,
    uncertainty_image,
)
from .method.losses import entropy

logger = logging.getLogger("des4_hf.demo")

MAX_MODELS = 2  # models kept loaded at once (a page that switches between two models does not reload them)
NUM_EXAMPLES = 3
KEEP_FILES_S = 3600  # uploads, results and masks are deleted after an hour
MAX_UPLOAD_MB = 20  # an upload larger than this is refused by Gradio (HTTP 413)
MAX_PIXELS = 25_000_000  # an image of more pixels is refused before it is decoded (a 24 MP camera photo passes)
MAX_RANK_IMAGES = 50  # images one ranking request takes; each is ranked at most SLIDING_WINDOW_ABOVE px a side
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
UPLOAD_NOTICE = ("Your image is sent to this server, segmented, and kept with its results for at most an hour so "
                 "that this page can show them; nothing else is done with it.")


@dataclass
class LoadedModel:
    """A model ready to segment: weights, processor, the precision chosen for this CPU/GPU, and its facts."""

    name: str
    model: Any
    processor: Any
    choice: PrecisionChoice
    facts: ModelFacts
    palette: np.ndarray
    device: torch.device


class ModelStore:
    """Loads models by folder or Hub id on first use and keeps the last ``MAX_MODELS`` (one load at a time)."""

    def __init__(self, device: torch.device, precision: str = "auto", channels_last: bool | None = None) -> None:
        resolve_precision(precision, device, channels_last=channels_last)  # fp16 on a CPU fails here, at start
        self.device, self.precision, self.channels_last = device, precision, channels_last
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> LoadedModel:
        name = name.strip()
        if not name:
            raise UsageError("no model given: enter a model folder or a Hub id (e.g. my-user/des4-camvid)")
        with self._lock:
            if name not in self._models:
                self._models[name] = self._load(name)
                while len(self._models) > MAX_MODELS:
                    self._models.popitem(last=False)
            self._models.move_to_end(name)
            return self._models[name]

    def _load(self, name: str) -> LoadedModel:
        model, processor = load_model_and_processor(name, self.device)  # UsageError: one line, e.g. no prototypes
        if model.config.num_labels > 256:
            raise UsageError(f"--model {name}: {model.config.num_labels} classes; palette PNGs hold at most 256")
        model, choice = prepare_for_inference(model, self.precision, self.device, self.channels_last)
        facts = model_facts(model.config, name)
        logger.info("loaded %s on %s, precision %s%s", name, self.device, choice.name,
                    ", channels_last" if choice.channels_last else "")
        return LoadedModel(name, model, processor, choice, facts, color_palette(model.config.num_labels),
                           self.device)


@dataclass
class Segmentation:
    """One image's prediction: the RGB image shown, its (H, W) class indices, and how it was made."""

    image: Image.Image
    label_map: np.ndarray
    seconds: float
    sliding_window: tuple[int, int] | None


def read_upload(path: str | os.PathLike[str], name: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An uploaded image read as des4-predict reads it; more than ``max_pixels`` is refused from the file's header,
    before it is decoded. ``name``: the file's name as the user knows it, for the message."""
    shown = name or Path(path).name
    try:
        with Image.open(path) as header:
            width, height = header.size
        if width * height > max_pixels:
            raise UsageError(f"{shown} is {width}×{height} = {width * height / 1e6:.3g} megapixels; this page takes "
                             f"at most {max_pixels / 1e6:.3g}: downscale it first (des4-predict --sliding-window "
                             "segments any size)")
        return read_image(Path(path))
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as error:
        raise UsageError(f"{shown} is not an image that can be read ({type(error).__name__}): "
                         "upload a JPEG, PNG, WebP, BMP or TIFF photo") from None


def uploaded_file(record: Any) -> tuple[str, str]:
    """(Gradio's copy of an upload, the file's name as the user knows it) from the page's record of it."""
    if not isinstance(record, dict) or not isinstance(record.get("path"), str) or not record["path"]:
        raise UsageError("no image: upload, paste or pick an example image first")
    return record["path"], record.get("orig_name") or Path(record["path"]).name


def _window(image: Image.Image, sliding_window_above: int) -> tuple[int, int] | None:
    return (SLIDING_WINDOW_CROP, default_stride(SLIDING_WINDOW_CROP)) if max(image.size) > sliding_window_above else None


def segment_file(loaded: LoadedModel, path: str | os.PathLike[str], sliding_window_above: int = SLIDING_WINDOW_ABOVE,
                 name: str | None = None, max_pixels: int = MAX_PIXELS) -> Segmentation:
    """Read ``path`` as des4-predict does and segment it with its code: the same mask as ``des4-predict``."""
    image = read_upload(path, name, max_pixels)
    window = _window(image, sliding_window_above)
    started = time.perf_counter()
    label_map = segment_images(loaded.model, loaded.processor, [image], loaded.device, loaded.choice.autocast_dtype,
                               loaded.choice.channels_last, window)[0]
    return Segmentation(display_rgb(image), label_map, time.perf_counter() - started, window)


@torch.no_grad()
def uncertainty_of_file(loaded: LoadedModel, path: str | os.PathLike[str], sliding_window_above: int =
                        SLIDING_WINDOW_ABOVE, name: str | None = None, max_pixels: int = MAX_PIXELS,
                        ) -> tuple[Image.Image, Image.Image, float]:
    """(the segmentation overlay, the pixel-entropy map beside it, the mean entropy in units of log C): where the
    model does not yet know, as des4-suggest scores it."""
    image = read_upload(path, name, max_pixels)
    pixel_values = loaded.processor(images=image, return_tensors="pt")["pixel_values"].to(loaded.device)
    if loaded.choice.channels_last:
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    with autocast(loaded.device, loaded.choice.autocast_dtype):
        logits = predict_logits(loaded.model, pixel_values, sliding_window=_window(image, sliding_window_above))
    probabilities = logits.float().softmax(1)
    pixel_entropy = entropy(probabilities)[0].cpu().numpy()
    label_map = probabilities.argmax(1)[0].cpu().numpy().astype(np.uint8)
    shown = display_rgb(image)
    classes = loaded.model.config.num_labels
    return (overlay(shown, label_map, alpha=0.5, palette=loaded.palette),
            uncertainty_image(pixel_entropy, classes).resize(shown.size),
            float(pixel_entropy.mean() / max(np.log(classes), 1e-6)))


def rank_uploads(loaded: LoadedModel, uploads: Sequence[tuple[str, str]], budget: Any, max_pixels: int = MAX_PIXELS,
                 ) -> tuple[list[list[Any]], list[tuple[Image.Image, str]]]:
    """des4-suggest's ranking of a page's uploads ((path, name) pairs): the table (rank, image, score, unsure
    classes, suggested) and each suggestion's tile beside its uncertainty map, with its caption."""
    if not uploads:
        raise UsageError("no images: upload the images to rank first")
    if len(uploads) > MAX_RANK_IMAGES:
        raise UsageError(f"{len(uploads)} images: this page ranks at most {MAX_RANK_IMAGES} at a time "
                         "(des4-suggest ranks a folder of any size)")
    if not isinstance(budget, (int, float)) or not 1 <= budget <= len(uploads) or budget != int(budget):
        raise UsageError(f"how many to suggest: {budget!r}, a whole number from 1 to the {len(uploads)} images")
    images = []
    for path, name in uploads:  # decoded one at a time, ranked at SLIDING_WINDOW_ABOVE px a side at most
        image = read_upload(path, name, max_pixels)
        image.thumbnail((SLIDING_WINDOW_ABOVE, SLIDING_WINDOW_ABOVE))
        images.append(image)
    model, processor, dtype = loaded.model, loaded.processor, loaded.choice.autocast_dtype
    ranking = rank_images(model, processor, images, int(budget), loaded.device, dtype)
    names = [name for _, name in uploads]
    table = [[rank, names[i], round(float(ranking.scores[i]), 4), ", ".join(ranking.unsure[i]),
              "yes" if i in ranking.picks else ""] for rank, i in enumerate(ranking.order, start=1)]
    tiles = [(suggestion_tile(model, processor, images[i], f"{rank}. {names[i]}", loaded.device, dtype),
              f"{rank}. {names[i]}") for rank, i in enumerate(ranking.picks, start=1)]
    return table, tiles


def class_shares(label_map: np.ndarray, num_classes: int) -> list[tuple[int, float]]:
    """(class index, share of the image's pixels) of the classes present, largest share first."""
    counts = np.bincount(label_map.reshape(-1).astype(np.int64), minlength=num_classes)
    present = np.flatnonzero(counts)
    return sorted(((int(index), counts[index] / label_map.size) for index in present), key=lambda item: -item[1])


def legend_html(label_map: np.ndarray, classes: Sequence[str], palette: np.ndarray) -> str:
    """A list of the classes present: colour swatch, name and share of the image."""
    rows = []
    for index, share in class_shares(label_map, len(classes)):
        red, green, blue = (int(value) for value in palette[index])
        rows.append(f'<li class="des4-legend-item" data-class="{html.escape(classes[index])}">'
                    f'<span style="display:inline-block;width:1em;height:1em;margin-right:.5em;vertical-align:middle;'
                    f'border:1px solid #0003;background:rgb({red},{green},{blue})"></span>'
                    f'{html.escape(classes[index])} — {100 * share:.1f} %</li>')
    return '<ul class="des4-legend" style="list-style:none;padding-left:0">' + "".join(rows) + "</ul>"


def facts_markdown(loaded: LoadedModel) -> str:
    """The model card's key facts: classes, training data, mIoU (with where each number comes from)."""
    facts, training = loaded.facts, loaded.facts.training
    lines = [f"**Model** `{loaded.name}` · {len(facts.classes)} classes: {', '.join(facts.classes)}"]
    trained = [f"{key} {training[key]}" for key in ("method", "dataset", "split", "steps", "step") if training.get(key)]
    lines.append("**Trained** " + (" · ".join(trained) if trained else "(not recorded in config.json)"))
    if facts.results:
        scores = "; ".join(f"{dataset} {split}: **{miou:.2f} %**" for dataset, split, miou in facts.results)
        lines.append(f"**mIoU** ({facts.results_source}) {scores}")
    else:
        lines.append("**mIoU** not reported (no model card results or eval.json beside the model)")
    lines.append(f"**Runs** on {loaded.device.type}, {loaded.choice.name}"
                 f"{', channels_last' if loaded.choice.channels_last else ''}")
    return "\n\n".join(lines)


def _remove_older_than(folder: Path, seconds: float) -> None:
    """Delete the request folders under ``folder`` last changed more than ``seconds`` ago."""
    cutoff = time.time() - seconds
    for child in folder.iterdir():
        with contextlib.suppress(OSError):
            if child.stat().st_mtime < cutoff:
                shutil.rmtree(child)


def example_images(data_root: str | os.PathLike[str] | None, count: int = NUM_EXAMPLES) -> list[str]:
    """The first ``count`` CamVid val frames under ``data_root`` (VOC layout), read in place; none without it."""
    if data_root is None:
        return []
    root = Path(data_root)
    ids_file = root / "ImageSets" / "Segmentation" / "val.txt"
    if not ids_file.is_file():
        return []
    ids = ids_file.read_text().split()[:count]
    return [str(path) for path in (root / "JPEGImages" / f"{i}.jpg" for i in ids) if path.is_file()]


def page_model_name(name: str, models_dir: str | os.PathLike[str] | None) -> str:
    """What a page user typed in the model box, allowed only as a folder under ``models_dir`` or a Hub id that is no
    local path; one message for every refusal, so the answer never tells which server paths exist."""
    name = name.strip()
    if models_dir is not None and name:
        root = Path(models_dir).resolve()
        folder = (root / name).resolve()
        if folder.is_relative_to(root) and folder != root and folder.is_dir():
            return str(folder)
    if HUB_ID.fullmatch(name) and ".." not in name and not Path(name).expanduser().exists():
        return name
    where = "a folder under the models folder or a Hub id" if models_dir is not None else "a Hub id (user/name)"
    raise UsageError(f"this page loads only {where}")


def build_demo(model: str, *, precision: str = "auto", device: str | torch.device | None = None,
               examples: Sequence[str] = (), allow_model_choice: bool = False,
               models_dir: str | os.PathLike[str] | None = None, sliding_window_above: int = SLIDING_WINDOW_ABOVE,
               max_pixels: int = MAX_PIXELS, max_upload_mb: float = MAX_UPLOAD_MB) -> Any:
    """The page (a ``gradio.Blocks``) for ``model`` (a folder or a Hub id), loaded now so that a bad model fails at
    start. ``allow_model_choice`` adds the model box and ``/load_model`` (Hub ids, or folders under ``models_dir``);
    off, the page serves ``model`` only. ``demo.des4_cleanup()`` removes the page's temporary files."""
    try:
        import gradio as gr
    except ImportError as error:
        raise UsageError("the web demo needs Gradio: pip install 'des4-hf[demo]'") from error

    store = ModelStore(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")), precision)
    first = store.get(model)
    mask_dir = Path(tempfile.mkdtemp(prefix="des4-demo-masks-"))  # Gradio copies each mask into its own cache

    def chosen(model_name: str | None) -> LoadedModel:
        return store.get(page_model_name(model_name or "", models_dir)) if allow_model_choice else first

    @contextlib.contextmanager
    def one_line() -> Iterator[None]:
        """Bad input, or a failed prediction (e.g. out of memory on a huge image), shown in the page as one line."""
        try:
            yield
        except UsageError as error:
            raise gr.Error(str(error), duration=None) from None
        except (RuntimeError, ValueError) as error:
            raise gr.Error(f"prediction failed ({type(error).__name__}: {error})", duration=None) from None

    def load(model_name: str) -> str:
        with one_line():
            return facts_markdown(chosen(model_name))

    def segment(image: dict[str, Any] | None, opacity: float, model_name: str | None = None) -> tuple[Any, ...]:
        # Gradio's own preprocessing is off for this event (it would fail on a non-image with a developer's
        # message). Its file gate still runs: a record whose path is not in its upload folder (this page's own
        # under des4-demo) is refused before this function, and the path here is Gradio's copy of the file.
        with one_line():
            image_path, name = uploaded_file(image)
            loaded = chosen(model_name)
            result = segment_file(loaded, image_path, sliding_window_above, name=name, max_pixels=max_pixels)
        request_dir = Path(tempfile.mkdtemp(dir=mask_dir))  # one folder per request: users' file names may clash
        mask_path = request_dir / f"{Path(name).stem}_mask.png"
        label_map_to_image(result.label_map, loaded.palette).save(mask_path, format="PNG")
        _remove_older_than(mask_dir, KEEP_FILES_S)
        height, width = result.label_map.shape
        how = (f"sliding window {result.sliding_window[0]}/{result.sliding_window[1]}" if result.sliding_window
               else "whole image")
        info = f"{width}×{height} px · {how} · {1e3 * result.seconds:.0f} ms on {loaded.device.type} " \
               f"({loaded.choice.name})"
        state = (result.image, result.label_map, loaded.palette)
        return (overlay(result.image, result.label_map, alpha=opacity, palette=loaded.palette),
                legend_html(result.label_map, loaded.facts.classes, loaded.palette), str(mask_path), info, state)

    def unsure(image: dict[str, Any] | None, model_name: str | None = None) -> tuple[Any, ...]:
        with one_line():
            path, name = uploaded_file(image)
            segmentation, uncertainty, mean = uncertainty_of_file(chosen(model_name), path, sliding_window_above,
                                                                  name, max_pixels)
        return segmentation, uncertainty, f"mean uncertainty {100 * mean:.1f} % of the most a pixel can have"

    def rank(files: list[dict[str, Any]] | None, budget: Any, model_name: str | None = None) -> tuple[Any, ...]:
        with one_line():  # the same file gate as segment's, for each record of the list
            return rank_uploads(chosen(model_name), [uploaded_file(item) for item in files or []], budget, max_pixels)

    def reblend(state: Any, opacity: float) -> Any:
        if state is None:
            return None
        shown, label_map, palette = state
        return overlay(shown, label_map, alpha=opacity, palette=palette)

    # delete_cache: Gradio's copies of uploads and results go after KEEP_FILES_S (a Space runs for weeks)
    with gr.Blocks(title="DeS4 semantic segmentation", delete_cache=(KEEP_FILES_S, KEEP_FILES_S)) as demo:
        gr.Markdown("# DeS4 semantic segmentation\nUpload or paste a photo, or click an example. "
                    f"Large images go through the sliding window.\n\n*{UPLOAD_NOTICE} Images up to "
                    f"{max_upload_mb:g} MB and {max_pixels / 1e6:g} megapixels.*", elem_id="des4-notice")
        model_box = None
        if allow_model_choice:  # absent otherwise: no box, no /load_model endpoint
            with gr.Row():
                model_box = gr.Textbox(model, label="Model (a Hub id" + (", or a folder of the models folder)"
                                                                          if models_dir else ")"),
                                       elem_id="des4-model", scale=4)
                load_button = gr.Button("Load model", elem_id="des4-load", scale=1)
        facts = gr.Markdown(facts_markdown(first), elem_id="des4-facts")
        with gr.Tab("Segment", elem_id="des4-tab-segment"):
            with gr.Row():
                with gr.Column():
                    image_input = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                           label="Image", elem_id="des4-image")
                    opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity", elem_id="des4-opacity")
                    button = gr.Button("Segment", variant="primary", elem_id="des4-segment")
                    if examples:
                        gr.Examples(list(examples), inputs=image_input, label="Examples")
                with gr.Column():
                    result = gr.Image(type="pil", label="Overlay", format="png", interactive=False, elem_id="des4-overlay")
                    info = gr.Markdown(label="Details", elem_id="des4-info")
                    legend = gr.HTML(label="Legend", elem_id="des4-legend")
                    mask = gr.File(label="Mask (palette PNG: pixel value = class index)", elem_id="des4-mask")
        with gr.Tab("Where the model is unsure", elem_id="des4-tab-uncertainty"):
            gr.Markdown("The pixel entropy of the model's prediction (Eq. 9): bright where it does not know, as "
                        "`des4-suggest` scores frames to label next.")
            with gr.Row():
                with gr.Column():
                    unsure_input = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                            label="Image", elem_id="des4-unsure-image")
                    unsure_button = gr.Button("Show uncertainty", variant="primary", elem_id="des4-unsure")
                with gr.Column():
                    unsure_overlay = gr.Image(type="pil", label="Segmentation", format="png", interactive=False,
                                              elem_id="des4-unsure-overlay")
                    unsure_map = gr.Image(type="pil", label="Uncertainty", format="png", interactive=False,
                                          elem_id="des4-unsure-map")
                    unsure_info = gr.Markdown(elem_id="des4-unsure-info")
        with gr.Tab("Which images to label next", elem_id="des4-tab-rank"):
            gr.Markdown(f"Up to {MAX_RANK_IMAGES} unlabeled images, ranked as `des4-suggest` ranks a folder: "
                        "uncertainty weighted toward the rare classes, the picks spread out so that near-duplicate "
                        f"frames are not all chosen. Images over {SLIDING_WINDOW_ABOVE} px a side are ranked at that "
                        "size.")
            with gr.Row():
                with gr.Column():
                    rank_files = gr.File(file_count="multiple", file_types=["image"], label="Images",
                                         elem_id="des4-rank-files")
                    rank_budget = gr.Slider(1, MAX_RANK_IMAGES, value=5, step=1, label="How many to suggest",
                                            elem_id="des4-rank-budget")
                    rank_button = gr.Button("Rank", variant="primary", elem_id="des4-rank")
                with gr.Column():
                    rank_gallery = gr.Gallery(label="Suggested, each beside where the model is unsure", columns=1,
                                              format="png", elem_id="des4-rank-gallery")
                    rank_table = gr.Dataframe(headers=["rank", "image", "score", "unsure about", "suggested"],
                                              label="Ranking", interactive=False, elem_id="des4-rank-table")
        state = gr.State()
        if model_box is not None:
            load_button.click(load, model_box, facts, api_name="load_model")
        button.click(segment, [image_input, opacity, *([model_box] if model_box is not None else [])],
                     [result, legend, mask, info, state], api_name="segment", preprocess=False)
        opacity.release(reblend, [state, opacity], result, api_name=False)
        unsure_button.click(unsure, [unsure_input, *([model_box] if model_box is not None else [])],
                            [unsure_overlay, unsure_map, unsure_info], api_name="uncertainty", preprocess=False)
        rank_button.click(rank, [rank_files, rank_budget, *([model_box] if model_box is not None else [])],
                          [rank_table, rank_gallery], api_name="rank", preprocess=False)

    def cleanup() -> None:
        """Remove this page's files: the mask folder and Gradio's copies of uploads, examples and results."""
        shutil.rmtree(mask_dir, ignore_errors=True)
        for files in [demo.upload_file_set, *demo.temp_file_sets]:
            for path in list(files):
                with contextlib.suppress(OSError):
                    os.remove(path)
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.dirname(path))  # Gradio's per-file hash folder, once empty

    demo.des4_cleanup = cleanup
    demo.des4_max_file_size = f"{max_upload_mb:g}mb"
    return demo


def launch(demo: Any, **options: Any) -> Any:
    """``demo.launch`` with this page's safe settings (the Space's app.py uses it too): the upload cap, no extra
    allowed paths, errors shown as one line."""
    return demo.launch(show_error=True, max_file_size=demo.des4_max_file_size, allowed_paths=[], **options)
