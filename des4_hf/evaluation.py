"""Evaluation on the papers' protocols (SPEC §5): one dataset-level confusion matrix, summed across processes.

VOC and CamVid val: whole image at original resolution; Cityscapes val: a 769 sliding window at stride 513, logits
averaged. Each process takes indices ``rank::world_size``, so every image counts once. ``evaluate_segmentation``
returns an :class:`EvaluationResult`, whose ``save`` writes ``eval.json`` (what the model card reads).
"""

from __future__ import annotations

import json
import logging
import math
import operator
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .inference import autocast, inference_probe_sample, is_channels_last, predict_logits, resolve_precision
from .metrics import ConfusionMatrix, check_label_range, scores_from_confusion
from .modeling_des4 import allow_uninitialized_prototypes
from .utils import atomic_write

logger = logging.getLogger(__name__)

#: Cityscapes sliding window (crop, stride): crop 769, stride ⅔ of the crop (SPEC §5).
CITYSCAPES_SLIDING_WINDOW = (769, 513)


def default_stride(crop_size: int) -> int:
    """⅔ of the crop, rounded (769 → 513): the overlap the Cityscapes protocol uses."""
    return max(1, round(crop_size * 2 / 3))


#: The sliding window (crop, stride) of each benchmark that evaluates with one, by dataset kind or Hub preset.
SLIDING_WINDOWS: dict[str, tuple[int, int]] = {"cityscapes": CITYSCAPES_SLIDING_WINDOW,
                                               "Chris1/cityscapes": CITYSCAPES_SLIDING_WINDOW,
                                               "cityscapes-hub": CITYSCAPES_SLIDING_WINDOW}


def protocol_window(kind: str) -> tuple[int, int] | None:
    """The sliding window of a dataset kind's protocol, or None for whole-image evaluation (VOC, CamVid, others)."""
    return SLIDING_WINDOWS.get(kind)


def _nan_to_none(values: Iterable[float]) -> list[float | None]:
    return [None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
            for value in values]


def _markdown_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else "-"
    return "-" if value is None else str(value).replace("|", "\\|")


def percent(value: float | None, digits: int = 2) -> str:
    """``0.5625`` → ``"56.25"``; ``"n/a"`` for an undefined (NaN or missing) score."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{100.0 * value:.{digits}f}"


@dataclass
class EvaluationResult:
    """Scores of one evaluation: fractions in [0, 1] (NaN: class absent from predictions and labels, left out of the
    mean). ``scripts/evaluate.py`` renders it as a table, Markdown and a chart, in percent."""

    confusion: Tensor
    class_names: list[str]
    per_class_iou: list[float]
    mean_iou: float
    pixel_accuracy: float
    num_images: int
    per_class_accuracy: list[float] = field(default_factory=list)
    mean_accuracy: float = float("nan")
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_confusion(cls, confusion: Tensor, class_names: Sequence[str], num_images: int,
                       settings: Mapping[str, Any] | None = None) -> EvaluationResult:
        confusion = confusion.detach().to("cpu", torch.int64)
        if len(class_names) != confusion.shape[0]:
            raise ValueError(f"{len(class_names)} class names for a {tuple(confusion.shape)} confusion matrix")
        scores = scores_from_confusion(confusion)
        return cls(confusion=confusion, class_names=list(class_names), per_class_iou=scores["per_class_iou"].tolist(),
                   mean_iou=scores["mean_iou"], pixel_accuracy=scores["pixel_accuracy"], num_images=int(num_images),
                   per_class_accuracy=scores["per_class_accuracy"].tolist(), mean_accuracy=scores["mean_accuracy"],
                   settings=dict(settings or {}))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; NaN becomes ``null``. ``dataset``/``split`` (from the settings) head it, so that
        ``des4-push-to-hub --results`` reads the file as it is."""
        return {**{key: self.settings[key] for key in ("dataset", "split") if key in self.settings},
                "mean_iou": _nan_to_none([self.mean_iou])[0],
                "pixel_accuracy": _nan_to_none([self.pixel_accuracy])[0],
                "mean_accuracy": _nan_to_none([self.mean_accuracy])[0], "num_images": self.num_images,
                "num_classes": self.num_classes, "class_names": list(self.class_names),
                "per_class_iou": dict(zip(self.class_names, _nan_to_none(self.per_class_iou))),
                "per_class_accuracy": dict(zip(self.class_names, _nan_to_none(self.per_class_accuracy))),
                "settings": self.settings, "confusion_matrix": self.confusion.tolist()}

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EvaluationResult:
        """Read an ``eval.json`` (or the folder holding it) as :meth:`save` wrote it; the scores are recomputed from
        its confusion matrix, so a hand-edited number cannot slip through."""
        path = Path(path)
        path = path / "eval.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"evaluation results {path} not found: run `scripts/evaluate.py ... --out DIR` "
                                    "first and pass DIR/eval.json.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls.from_confusion(torch.tensor(data["confusion_matrix"], dtype=torch.int64), data["class_names"],
                                      data["num_images"], data.get("settings"))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not an eval.json written by des4-hf's evaluation ({type(error).__name__}: "
                             f"{error}); re-run `scripts/evaluate.py ... --out DIR` instead of editing it.") from None

    def save(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write ``eval.json`` (:meth:`to_dict`, read back by :meth:`load`) into ``out_dir`` atomically; its path."""
        return atomic_write(Path(out_dir) / "eval.json", json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    def format_table(self) -> str:
        """Plain aligned table of the per-class IoU (%) for the terminal."""
        width = max([len(name) for name in self.class_names] + [len("pixel accuracy")])
        rule = "-" * (width + 9)
        rows = [*zip(self.class_names, self.per_class_iou), (rule, None),
                ("mean IoU", self.mean_iou), ("pixel accuracy", self.pixel_accuracy)]
        return "\n".join([f"{'class':<{width}}  IoU (%)", rule]
                         + [name if name == rule else f"{name:<{width}}  {percent(iou):>7}" for name, iou in rows]
                         + [f"({self.num_images} images, {self.num_classes} classes)"])

    def to_markdown(self) -> str:
        """``eval.md``: the mIoU, the evaluation settings and the per-class IoU / accuracy table, in percent."""
        settings = self.settings
        title = "Evaluation"
        if settings.get("dataset"):
            title += f": {settings['dataset']}" + (f" {settings['split']}" if settings.get("split") else "")
        lines = [f"# {title}", "", f"**mIoU {percent(self.mean_iou)} %** over {self.num_images} images "
                 f"(pixel accuracy {percent(self.pixel_accuracy)} %, mean class accuracy "
                 f"{percent(self.mean_accuracy)} %).", ""]
        if settings:
            lines += ["| setting | value |", "|---|---|"]
            lines += [f"| {key} | {_markdown_value(value)} |" for key, value in settings.items()]
            lines.append("")
        lines += ["| class | IoU (%) | accuracy (%) |", "|---|---:|---:|"]
        accuracies = self.per_class_accuracy or [float("nan")] * self.num_classes
        for name, iou, accuracy in zip(self.class_names, self.per_class_iou, accuracies):
            lines.append(f"| {name} | {percent(iou)} | {percent(accuracy)} |")
        lines.append(f"| **mean** | **{percent(self.mean_iou)}** | **{percent(self.mean_accuracy)}** |")
        lines += ["", "IoU is computed from one confusion matrix over all pixels of all images; n/a: class absent "
                  "from both predictions and labels (left out of the mean). Label 255 is ignored.", ""]
        return "\n".join(lines)

    def write_report(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """``eval.json`` (:meth:`save`), ``eval.md`` (:meth:`to_markdown`) and ``per_class_iou.png``
        (:func:`plot_per_class_iou`), each written atomically into ``out_dir``; their paths."""
        out = Path(out_dir)
        paths = {"json": self.save(out), "markdown": out / "eval.md", "chart": out / "per_class_iou.png"}
        atomic_write(paths["markdown"], self.to_markdown())
        plot_per_class_iou(self, paths["chart"])
        return paths


def check_model_classes(model: Any, num_classes: int, class_names: Sequence[str] | None = None) -> None:
    """Raise ``ValueError`` when a model's (or, before loading weights, a config's) ``num_labels`` differs from the
    dataset's."""
    config = getattr(model, "config", model)
    model_classes = getattr(config, "num_labels", None)
    if model_classes is None or int(model_classes) == int(num_classes):
        return
    id2label = getattr(config, "id2label", None) or {}
    model_names = [id2label.get(i, id2label.get(str(i), str(i))) for i in range(int(model_classes))]
    shown = list(class_names)[:8] if class_names is not None else []
    raise ValueError(f"the model predicts {model_classes} classes ({model_names[:8]}{'...' if model_classes > 8 else ''})"
                     f" but the dataset has {num_classes}{f' ({shown}...)' if shown else ''}. Evaluate the model on the "
                     "dataset it was trained for, or fine-tune/train one with num_labels equal to the dataset's classes.")


def _warn_uninitialised_prototypes(model: nn.Module, class_names: Sequence[str]) -> None:
    initialized = getattr(getattr(model, "prototype_head", None), "initialized", None)
    if isinstance(initialized, Tensor) and initialized.numel() == len(class_names) and not bool(initialized.all()):
        missing = [name for name, done in zip(class_names, initialized.tolist()) if not done]
        logger.warning("the prototypes of %d classes were never updated from data (%s%s): this model is untrained "
                       "for them and will score near 0 IoU there.", len(missing), missing[:8],
                       "..." if len(missing) > 8 else "")


def _check_settings(num_classes: int, class_names: Sequence[str], sliding_window: Any, scales: Sequence[float],
                    batch_size: int) -> tuple[tuple[int, int] | None, tuple[float, ...]]:
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1")
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for num_classes={num_classes}")
    window = None
    if sliding_window is not None:
        crop, stride = (int(v) for v in sliding_window)
        if crop < 1 or not 1 <= stride <= crop:
            raise ValueError(f"sliding_window=(crop {crop}, stride {stride}): need crop >= 1 and 1 <= stride <= crop "
                             f"(the Cityscapes protocol is {CITYSCAPES_SLIDING_WINDOW}).")
        window = (crop, stride)
    scales = tuple(float(s) for s in scales)
    if not scales or any(not s > 0 for s in scales):
        raise ValueError(f"scales={scales}: give one or more positive scale factors, e.g. (0.75, 1.0, 1.25).")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    return window, scales


def _same_size_batches(items: Iterable[Mapping[str, Any]], batch_size: int) -> Iterator[list[Mapping[str, Any]]]:
    """Group consecutive items of equal image size into batches of at most ``batch_size``: never pad, so a
    prediction is exactly that of the image alone (VOC sizes differ; Cityscapes/CamVid sizes do not)."""
    pending: list[Mapping[str, Any]] = []
    for item in items:
        if pending and (len(pending) == batch_size or item["pixel_values"].shape != pending[0]["pixel_values"].shape):
            yield pending
            pending = []
        pending.append(item)
    if pending:
        yield pending


def _as_eval_dataset(dataset: Any, num_classes: int, image_mean: Sequence[float] | None,
                     image_std: Sequence[float] | None) -> Any:
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        raise TypeError(f"pass one split (e.g. ds['val']), not a DatasetDict with splits {list(dataset)}")
    if not isinstance(dataset, datasets.Dataset):
        return dataset
    from .data.torch_datasets import EvalDataset
    from .image_processing_des4 import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return EvalDataset(dataset, image_mean or IMAGENET_DEFAULT_MEAN, image_std or IMAGENET_DEFAULT_STD,
                       num_classes=num_classes)


@allow_uninitialized_prototypes()  # scored anyway: the classes without prototypes are named in a warning
def evaluate_segmentation(model: nn.Module, dataset: Any, *, num_classes: int, class_names: Sequence[str],
                          accelerator: Any = None, sliding_window: tuple[int, int] | None = None,
                          flip: bool = False, scales: Sequence[float] = (1.0,), precision: str = "auto",
                          channels_last: bool | None = None, batch_size: int = 1, ignore_index: int = 255,
                          progress: bool = True, num_workers: int = 0, image_mean: Sequence[float] | None = None,
                          image_std: Sequence[float] | None = None,
                          settings: Mapping[str, Any] | None = None) -> EvaluationResult:
    """mIoU of ``model`` on ``dataset`` from one confusion matrix over all pixels, summed over processes.

    ``dataset`` yields full-resolution ``{"pixel_values", "labels", "id"}`` (:class:`des4_hf.data.EvalDataset`) or is
    a ``datasets.Dataset`` (wrapped with ``image_mean``/``image_std``). ``sliding_window``: ``(crop, stride)`` or
    None; ``flip``/``scales``: logits averaged; ``batch_size`` groups consecutive equal-size images. With
    ``accelerator``, each process takes ``rank::world_size``; all return the same result. A class-count mismatch
    raises before inference, a label outside ``[0, num_classes)`` ∪ ``{ignore_index}`` ``LabelRangeError``."""
    window, scales = _check_settings(num_classes, class_names, sliding_window, scales, batch_size)
    if accelerator is not None and hasattr(accelerator, "unwrap_model"):
        model = accelerator.unwrap_model(model)
    check_model_classes(model, num_classes, class_names)
    rank, world_size, is_main = (accelerator.process_index, accelerator.num_processes,
                                 accelerator.is_main_process) if accelerator is not None else (0, 1, True)
    if is_main:
        _warn_uninitialised_prototypes(model, class_names)
    dataset = _as_eval_dataset(dataset, num_classes, image_mean, image_std)
    device = accelerator.device if accelerator is not None else next(model.parameters(), torch.empty(0)).device
    # auto: timed on this network (one process; several keep the default, so that every rank runs alike)
    probe = {"model": model, "sample": inference_probe_sample().to(device)} if world_size == 1 else {}
    choice = resolve_precision(precision, device, channels_last=channels_last, **probe)

    indices = list(range(rank, len(dataset), world_size))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=1, shuffle=False, num_workers=num_workers,
        collate_fn=operator.itemgetter(0), pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),  # never draw from the global RNG: evaluating mid-run must not
    )                                                # change the training that follows (its dropout masks)
    metric = ConfusionMatrix(num_classes, ignore_index, device=device)
    num_images = 0

    was_training = model.training
    was_channels_last = is_channels_last(model)
    model.to(device)
    if choice.channels_last and not was_channels_last:
        model.to(memory_format=torch.channels_last)
    model.eval()
    progress_bar = None
    if progress and is_main:
        from tqdm.auto import tqdm

        progress_bar = tqdm(total=len(dataset), desc="evaluating", unit="img", dynamic_ncols=True)
    try:
        with torch.inference_mode(), autocast(device, choice.autocast_dtype):
            for batch in _same_size_batches(loader, batch_size):
                ids = [str(item.get("id", f"#{i}")) for i, item in enumerate(batch)]
                labels = torch.stack([torch.as_tensor(item["labels"]) for item in batch]).to(device)
                for id_, label in zip(ids, labels):
                    check_label_range(label, num_classes, ignore_index, where=f"image {id_!r}")
                pixel_values = torch.stack([item["pixel_values"] for item in batch]).to(device, non_blocking=True)
                if choice.channels_last:
                    pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
                if pixel_values.shape[-2:] != labels.shape[-2:]:
                    raise ValueError(f"images {ids}: pixel_values {tuple(pixel_values.shape[-2:])} and labels "
                                     f"{tuple(labels.shape[-2:])} differ in size; evaluation compares at the "
                                     "labels' original resolution, so give full-resolution images.")
                logits = predict_logits(model, pixel_values, sliding_window=window, flip=flip, scales=scales)
                metric.update(logits.argmax(dim=1), labels, where=f"images {ids}")
                num_images += len(batch)
                if progress_bar is not None:
                    progress_bar.update(len(batch) * world_size)
    finally:
        if progress_bar is not None:
            progress_bar.close()
        if choice.channels_last and not was_channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)

    metric.reduce(accelerator)
    if accelerator is not None:
        num_images = int(accelerator.reduce(torch.tensor(num_images, device=device), "sum"))
    record = {"protocol": "sliding window" if window else "whole image",
              "sliding_window": list(window) if window else None, "flip": bool(flip), "scales": list(scales),
              "precision": choice.name, "ignore_index": ignore_index, "num_processes": world_size, **(settings or {})}
    return EvaluationResult.from_confusion(metric.matrix, class_names, num_images, record)


def plot_per_class_iou(result: EvaluationResult, path: str | Path | None = None) -> bytes:
    """Bar chart (PNG bytes; also written to ``path`` atomically) of the per-class IoU ("n/a": absent class), the
    mean dashed; on matplotlib's Agg canvas, so no display and no global backend change."""
    import io
    import math

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    title = "Per-class IoU"
    if result.settings.get("dataset"):
        title += f" — {result.settings['dataset']} {result.settings.get('split') or ''}".rstrip()
    absent = [math.isnan(value) for value in result.per_class_iou]
    values = [0.0 if gone else 100.0 * value for value, gone in zip(result.per_class_iou, absent)]
    count = result.num_classes
    figure = Figure(figsize=(max(6.0, 0.45 * count + 2.0), 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    bars = axes.bar(range(count), values, color=["#bbbbbb" if gone else "#3b75af" for gone in absent])
    for bar, value, gone in zip(bars, values, absent):
        axes.text(bar.get_x() + bar.get_width() / 2, value + 1.0, "n/a" if gone else f"{value:.1f}", ha="center",
                  va="bottom", fontsize=7)
    if not math.isnan(result.mean_iou):
        axes.axhline(100.0 * result.mean_iou, color="#d62728", linestyle="--", linewidth=1.2,
                     label=f"mIoU {100.0 * result.mean_iou:.2f} %")
        axes.legend(loc="upper right", fontsize=8)
    axes.set(xticks=range(count), ylim=(0, 105), ylabel="IoU (%)")
    axes.set_xticklabels(result.class_names, rotation=45 if count > 6 else 0, ha="right" if count > 6 else "center",
                         fontsize=8)
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    data = buffer.getvalue()
    if path is not None:
        atomic_write(path, data)
    return data
