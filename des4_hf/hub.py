"""The model card of a DeS4 model on the Hub, rendered from ``model_cards/des4.md.j2``.

Every number in it is read from ``eval.json`` files written by the evaluation (:meth:`EvaluationResult.load`
recomputes the scores from the confusion matrix, so an edited number cannot slip in), each naming its dataset and
split. Staging and uploading (``huggingface_hub.upload_folder``) are :mod:`des4_hf.publish`'s.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .evaluation import EvaluationResult, percent
from .hub_names import SHORT_NAMES, hub_namespace

TEMPLATE_NAME = "des4.md.j2"
_DATASET_NAMES = (("cityscapes", "Cityscapes"), ("camvid", "CamVid"), ("voc", "PASCAL VOC 2012"))

ResultsSource = str | Path | EvaluationResult


def _dataset_name(dataset: str) -> str:
    return next((pretty for key, pretty in _DATASET_NAMES if key in dataset.lower()), dataset)


def _protocol(settings: Mapping[str, Any]) -> str:
    """How the evaluation ran, from its recorded settings: whole image or sliding window, flip, scales."""
    scales = settings.get("scales") or [1.0]
    return ", ".join(filter(None, [str(settings.get("protocol") or "whole image"), "flip" if settings.get("flip") else "",
                                   "scales " + "/".join(map(str, scales)) if len(scales) > 1 else ""]))


def load_eval_results(results: ResultsSource | Sequence[ResultsSource] | None) -> list[EvaluationResult]:
    """``eval.json`` file(s) written by the evaluation (or their :class:`EvaluationResult`), each naming the
    dataset and split it was measured on, at most one per (dataset, split)."""
    single = results is None or isinstance(results, (str, Path, EvaluationResult))
    items = ([] if results is None else [results]) if single else list(results)  # type: ignore[list-item]
    parsed = [item if isinstance(item, EvaluationResult) else EvaluationResult.load(item) for item in items]
    keys = []
    for item, record in zip(items, parsed):
        if not all(isinstance(record.settings.get(key), str) and record.settings[key] for key in ("dataset", "split")):
            where = "an EvaluationResult" if isinstance(item, EvaluationResult) else str(item)
            raise ValueError(f"{where}: the evaluation does not record its dataset and split; evaluate with "
                             "`scripts/evaluate.py --dataset ... --split ...`, which does.")
        keys.append((record.settings["dataset"], record.settings["split"]))
    for key in keys:
        if keys.count(key) > 1:
            raise ValueError(f"two evaluation records for dataset {key[0]!r} split {key[1]!r}; keep one of them.")
    return parsed


def check_results_match_labels(results: Sequence[EvaluationResult], labels: Sequence[str], model_dir: str) -> None:
    allowed = set(labels) | {str(index) for index in range(len(labels))}
    for record in results:
        unknown = sorted(set(record.class_names) - allowed)
        if unknown:
            raise ValueError(f"the evaluation of {record.settings['dataset']} {record.settings['split']} names "
                             f"classes {unknown[:8]} that the model in {model_dir} does not have (its classes: "
                             f"{list(labels)[:8]}{' ...' if len(labels) > 8 else ''}). Is it another model's?")


def _label_of(name: str, labels: Sequence[str]) -> str:
    return labels[int(name)] if name.isdigit() and name not in labels and int(name) < len(labels) else name


def labels_of(config: Any) -> list[str]:
    return [str(config.id2label[index]) for index in range(config.num_labels)]


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list, tuple)):
        return "`" + json.dumps(value, sort_keys=True, default=str) + "`"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _card_data(repo_id: str, model_name: str, results: Sequence[EvaluationResult], license_id: str) -> Any:
    from huggingface_hub import EvalResult, ModelCardData

    metrics = (("mean_iou", "mIoU (%)", "mean_iou"), ("accuracy", "Pixel accuracy (%)", "pixel_accuracy"))
    eval_results = [
        EvalResult(metric_type=kind, metric_name=name, metric_value=round(100 * getattr(record, key), 2),
                   task_type="image-segmentation", task_name="Semantic Segmentation",
                   dataset_type=record.settings["dataset"], dataset_name=_dataset_name(record.settings["dataset"]),
                   dataset_split=record.settings["split"])
        for record in results for kind, name, key in metrics]
    datasets = sorted({record.settings["dataset"] for record in results if "/" in record.settings["dataset"]})
    return ModelCardData(
        license=license_id, library_name="transformers", pipeline_tag="image-segmentation", model_name=model_name,
        datasets=datasets or None,
        tags=["des4", "des4-hf", "semantic-segmentation", "semi-supervised", "image-segmentation", "timm"],
        eval_results=eval_results or None)


def render_model_card(model_dir: str | Path, results_json: ResultsSource | Sequence[ResultsSource] | None = None,
                      overlay_image: str | None = None, chart_image: str | Sequence[str] | None = None,
                      repo_id: str = "your-username/des4-model", *, model_name: str | None = None,
                      license_id: str = "apache-2.0", results_files: Sequence[str] = ()) -> str:
    """The Markdown model card (YAML front matter with ``model-index``) of the model in ``model_dir`` (its
    ``config.json``), for ``repo_id``: ``results_json`` (``eval.json`` paths or :class:`EvaluationResult`), paths relative
    to the card of the example ``overlay_image`` and the ``chart_image`` of each record; ``results_files`` are
    named in the card for provenance."""
    import jinja2
    from huggingface_hub import ModelCard

    from . import __version__
    from .configuration_des4 import Des4Config

    model_dir = Path(model_dir)
    config = Des4Config.from_pretrained(str(model_dir))
    if config.model_type != Des4Config.model_type:
        raise ValueError(f"{model_dir}/config.json is a {config.model_type!r} model, not a DeS4 model.")
    labels = labels_of(config)
    results = load_eval_results(results_json)
    check_results_match_labels(results, labels, str(model_dir))
    charts = [chart_image] if isinstance(chart_image, str) else list(chart_image or [])
    if charts and len(charts) != len(results):
        raise ValueError(f"got {len(charts)} chart image(s) for {len(results)} evaluation record(s); give one per "
                         "record.")
    model_name = model_name or repo_id.split("/")[-1]
    namespace, _, name = repo_id.partition("/")
    short_name = name if name in SHORT_NAMES and namespace == hub_namespace() else None

    num_parameters = _count_parameters(model_dir)
    arch = {key: getattr(config, key) for key in ("backbone", "output_stride", "decoder_channels", "num_labels",
                                                  "mes_num_zones")}
    arch.update({key: f"{getattr(config, key):g}" for key in ("logit_scale", "prototype_momentum",
                                                              "encoder_momentum", "mes_alpha")})
    arch["aspp_rates"] = "/".join(str(rate) for rate in config.aspp_rates)
    arch["num_parameters"] = f"{num_parameters / 1e6:.1f} M" if num_parameters else "unknown"
    training = dict(getattr(config, "training", None) or {})
    first = ("method", "split", "recipe", "dataset", "steps", "epochs")
    training_rows = [(key, _format_value(training[key])) for key in first if key in training]
    training_rows += [(key, _format_value(value)) for key, value in sorted(training.items()) if key not in first]

    rendered_results = []
    for index, record in enumerate(results):
        per_class = {_label_of(name, labels): value for name, value in zip(record.class_names, record.per_class_iou)}
        dataset, split = record.settings["dataset"], record.settings["split"]
        rendered_results.append({
            "dataset": dataset, "dataset_name": _dataset_name(dataset), "split": split,
            "num_images": record.num_images, "miou_pct": percent(record.mean_iou),
            "pixel_accuracy_pct": percent(record.pixel_accuracy), "protocol": _protocol(record.settings),
            "per_class": [(label, percent(per_class[label])) for label in labels if label in per_class],
            "chart": charts[index] if charts else None})

    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                                     keep_trailing_newline=True)
    template = resources.files("des4_hf").joinpath("model_cards", TEMPLATE_NAME).read_text(encoding="utf-8")
    content = environment.from_string(template).render(
        card_data=_card_data(repo_id, model_name, results, license_id).to_yaml(), model_name=model_name,
        repo_id=repo_id, short_name=short_name, arch=arch, labels=labels, training_rows=training_rows,
        results=rendered_results, results_files=list(results_files), overlay_image=overlay_image,
        package_version=__version__)
    content = re.sub(r"\n{3,}", "\n\n", content).rstrip() + "\n"
    ModelCard(content)  # fails here, not on the Hub, if the front matter does not parse
    return content


def _count_parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            total += sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys()  # noqa: SIM118
                         if not key.endswith(("running_mean", "running_var", "num_batches_tracked", "initialized")))
    return total


@dataclass(frozen=True)
class ModelFacts:
    """What a user wants to know before trusting a model's predictions: its classes, what it was trained on, and
    the mIoU its card (or the evaluation saved beside it) reports."""

    classes: list[str]
    training: dict[str, Any]
    results: list[tuple[str, str, float]]  # (dataset, split, mIoU in percent)
    results_source: str | None  # "model card", "eval.json" or None


def _card_results(card_path: Path) -> list[tuple[str, str, float]]:
    from huggingface_hub import ModelCard

    data = ModelCard.load(card_path).data
    return [(str(item.dataset_name), str(item.dataset_split or ""), float(item.metric_value))
            for item in (getattr(data, "eval_results", None) or []) if item.metric_type == "mean_iou"]


def model_facts(config: Any, source: str | Path, *, timeout: float = 10.0) -> ModelFacts:
    """The facts of the model whose ``config`` was loaded from ``source`` (a folder or a Hub id): mIoU from the
    model card's ``model-index`` (``README.md``), else from the ``eval.json`` that training saves beside the model.
    A card that cannot be fetched (offline, ``timeout`` seconds) only leaves the results out."""
    import contextlib

    classes, training = labels_of(config), dict(getattr(config, "training", None) or {})
    folder = Path(source).expanduser()
    card: Path | None = folder / "README.md" if folder.is_dir() else None
    if card is None:
        from huggingface_hub import hf_hub_download

        with contextlib.suppress(Exception):  # no card, no network, offline mode: the results stay unknown
            card = Path(hf_hub_download(str(source), "README.md", etag_timeout=timeout))
    if card is not None and card.is_file():
        with contextlib.suppress(Exception):  # a card without (valid) front matter has no results to show
            results = _card_results(card)
            if results:
                return ModelFacts(classes, training, results, "model card")
    if folder.is_dir() and (folder / "eval.json").is_file():
        with contextlib.suppress(ValueError, OSError):
            record = EvaluationResult.load(folder)
            dataset = str(record.settings.get("dataset") or training.get("dataset") or "")
            split = str(record.settings.get("split") or "val")
            return ModelFacts(classes, training, [(_dataset_name(dataset), split, round(100 * record.mean_iou, 2))],
                              "eval.json")
    return ModelFacts(classes, training, [], None)
