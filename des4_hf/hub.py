"""Publishing a DeS4 model on the Hub: model card, per-class IoU chart, example overlay, one-commit push.

Everything is validated before the first network call (the model loads with its prototypes, the evaluation JSON
has the model's classes, the repo id, a token); the token is never printed. The card is rendered from
``model_cards/des4.md.j2`` and every number in it is read from the evaluation JSON.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from .evaluation import EvaluationResult, _percent
from .hub_names import SHORT_NAMES, hub_namespace
from .utils import atomic_path, atomic_write

TEMPLATE_NAME = "des4.md.j2"
MODEL_FILES = ("config.json", "preprocessor_config.json")
OVERLAY_NAME = "images/example_prediction.png"
RESULTS_NAME = "eval_results.json"
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


def _check_results_match_labels(results: Sequence[EvaluationResult], labels: Sequence[str], model_dir: str) -> None:
    allowed = set(labels) | {str(index) for index in range(len(labels))}
    for record in results:
        unknown = sorted(set(record.class_names) - allowed)
        if unknown:
            raise ValueError(f"the evaluation of {record.settings['dataset']} {record.settings['split']} names "
                             f"classes {unknown[:8]} that the model in {model_dir} does not have (its classes: "
                             f"{list(labels)[:8]}{' ...' if len(labels) > 8 else ''}). Is it another model's?")


def _label_of(name: str, labels: Sequence[str]) -> str:
    return labels[int(name)] if name.isdigit() and name not in labels and int(name) < len(labels) else name


def _model_files(model_dir: Path) -> list[Path]:
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} not found: pass the folder written by training "
                                "(e.g. out/best).")
    missing = [name for name in MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        hint = (" Save the image processor beside the model: Des4ImageProcessor(...).save_pretrained(model_dir)."
                if "preprocessor_config.json" in missing else " Save the model with model.save_pretrained(model_dir).")
        raise FileNotFoundError(f"{model_dir} lacks {missing}.{hint}")
    weights = sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.safetensors.index.json"))
    if not weights:
        raise FileNotFoundError(f"{model_dir} holds no *.safetensors weights; re-save the model with "
                                "model.save_pretrained(model_dir) (safetensors is the default).")
    return [model_dir / name for name in MODEL_FILES] + weights


def _labels(config: Any) -> list[str]:
    return [str(config.id2label[index]) for index in range(config.num_labels)]


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list, tuple)):
        return "`" + json.dumps(value, sort_keys=True, default=str) + "`"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _template_text(template_path: str | Path | None) -> str:
    if template_path is not None:
        return Path(template_path).read_text(encoding="utf-8")
    return resources.files("des4_hf").joinpath("model_cards", TEMPLATE_NAME).read_text(encoding="utf-8")


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
        license=license_id, pipeline_tag="image-segmentation", model_name=model_name, datasets=datasets or None,
        tags=["des4", "des4-hf", "semantic-segmentation", "semi-supervised", "image-segmentation", "timm"],
        eval_results=eval_results or None)


def render_model_card(model_dir: str | Path, results_json: ResultsSource | Sequence[ResultsSource] | None = None,
                      overlay_image: str | None = None, chart_image: str | Sequence[str] | None = None,
                      repo_id: str = "your-username/des4-model", *, model_name: str | None = None,
                      license_id: str = "apache-2.0", template_path: str | Path | None = None,
                      results_files: Sequence[str] = ()) -> str:
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
    labels = _labels(config)
    results = load_eval_results(results_json)
    _check_results_match_labels(results, labels, str(model_dir))
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
            "num_images": record.num_images, "miou_pct": _percent(record.mean_iou),
            "pixel_accuracy_pct": _percent(record.pixel_accuracy), "protocol": _protocol(record.settings),
            "per_class": [(label, _percent(per_class[label])) for label in labels if label in per_class],
            "chart": charts[index] if charts else None})

    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                                     keep_trailing_newline=True)
    content = environment.from_string(_template_text(template_path)).render(
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


def make_example_overlay(model: Any, processor: Any, image_path: str | Path, path: str | Path,
                         max_side: int = 512) -> Path:
    """Run ``model`` on one image (prediction's own path); save the input beside the prediction overlaid on it."""
    from PIL import Image

    from .inference import overlay, read_image, segment_images

    image = read_image(Path(image_path)).convert("RGB")
    image.thumbnail((max_side, max_side), Image.BILINEAR)  # keeps the aspect ratio; never enlarges
    (label_map,) = segment_images(model.eval(), processor, [image], next(model.parameters()).device, None, False, None)
    canvas = Image.new("RGB", (image.width * 2, image.height))
    canvas.paste(image, (0, 0))
    canvas.paste(overlay(image, label_map, alpha=0.6), (image.width, 0))
    with atomic_path(path) as temporary:
        canvas.save(temporary, format="PNG")
    return Path(path)


def validate_repo_id(repo_id: str) -> str:
    """``namespace/name`` as huggingface_hub's own validator accepts it, or a ValueError saying what to pass."""
    from huggingface_hub.utils import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hub_validate_repo_id

    try:
        hub_validate_repo_id(repo_id)
        if repo_id.count("/") != 1:
            raise HFValidationError("a model repo on the Hub belongs to a user or an organisation")
    except HFValidationError as error:
        raise ValueError(f"repo id {repo_id!r} is not valid ({error}): use <user-or-org>/<name>, e.g. "
                         "my-user/des4-voc-aug.") from None
    return repo_id


def validate_revision(revision: str | None) -> str | None:
    """A branch name git accepts (checked before any upload), or a ValueError."""
    if revision is not None and (not revision or revision.startswith(("-", "/")) or ".." in revision
                                 or revision.endswith(("/", ".lock")) or any(c in revision for c in " ~^:?*[\\")):
        raise ValueError(f"revision {revision!r} is not a valid branch name: use e.g. 'main', 'v1' or 'voc-1323'.")
    return revision


def _token_available(token: str | None) -> None:
    from huggingface_hub import get_token

    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise ValueError("token must be a non-empty string; better, leave it out and use HF_TOKEN or `hf auth login`.")
    if token is None and get_token() is None:
        raise ValueError("no Hugging Face token found: log in once with `hf auth login` (or set the HF_TOKEN "
                         "environment variable to a token with write access) and run the push again.")


def stage_model_repo(model_dir: str | Path, staging_dir: str | Path, repo_id: str,
                     results: ResultsSource | Sequence[ResultsSource] | None = None,
                     example_image: str | Path | None = None) -> Path:
    """Validate everything, then write the folder that is uploaded (model files, README.md, images, results); no
    network access, and nothing is written when an input is not usable."""
    from .image_processing_des4 import Des4ImageProcessor
    from .modeling_des4 import Des4ForSemanticSegmentation

    model_dir = Path(model_dir)
    validate_repo_id(repo_id)
    files = _model_files(model_dir)
    model = Des4ForSemanticSegmentation.from_pretrained(str(model_dir))  # checks the prototypes are there
    processor = Des4ImageProcessor.from_pretrained(str(model_dir))
    labels = _labels(model.config)
    records = load_eval_results(results)
    _check_results_match_labels(records, labels, str(model_dir))
    if example_image is not None and not Path(example_image).is_file():
        raise FileNotFoundError(f"example image {example_image} not found.")
    given = [results] if isinstance(results, (str, Path)) else list(results or [])
    result_names = [Path(item).name for item in given if isinstance(item, (str, Path))]

    staging = Path(staging_dir)
    staging.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy2(path, staging / path.name)
    charts = []
    for record in records:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{record.settings['dataset']}-{record.settings['split']}").strip("-")
        chart = f"images/per_class_iou_{slug.lower()}.png" if len(records) > 1 else "images/per_class_iou.png"
        record.plot_per_class_iou(staging / chart)
        charts.append(chart)
    if records:
        atomic_write(staging / RESULTS_NAME, json.dumps([record.to_dict() for record in records], indent=2,
                                                        allow_nan=False, default=str) + "\n")
    overlay_name = None
    if example_image is not None:
        make_example_overlay(model, processor, example_image, staging / OVERLAY_NAME)
        overlay_name = OVERLAY_NAME
    atomic_write(staging / "README.md", render_model_card(staging, records, overlay_image=overlay_name,
                                                         chart_image=charts, repo_id=repo_id,
                                                         results_files=result_names))
    return staging


def push_to_hub(model_dir: str | Path, repo_id: str, results: ResultsSource | Sequence[ResultsSource] | None = None,
                private: bool = False, revision: str | None = None, commit_message: str | None = None,
                token: str | None = None, example_image: str | Path | None = None) -> str:
    """Upload a trained model, its card, results and images to ``repo_id`` in one commit; returns the repo URL.

    Creates the repo (``private``: a new repo only; an existing public one is refused, not uploaded to) and the
    branch ``revision`` if needed. ``token`` defaults to ``HF_TOKEN`` or ``hf auth login``'s; it is never printed.
    """
    from huggingface_hub import HfApi

    validate_repo_id(repo_id)
    revision = validate_revision(revision)
    _token_available(token)
    with tempfile.TemporaryDirectory(prefix="des4-push-") as staging:
        stage_model_repo(model_dir, staging, repo_id, results=results, example_image=example_image)
        api = HfApi(token=token)
        repo_url = api.create_repo(repo_id, private=True if private else None, exist_ok=True)
        if private and api.repo_info(repo_id).private is False:
            raise ValueError(f"{repo_id} already exists and is public; --private only applies to a new repo. Make "
                             "it private in its settings on the Hub first, or drop --private. Nothing was uploaded.")
        if revision is not None and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=staging, revision=revision,
                          commit_message=commit_message or f"Upload DeS4 model ({Path(model_dir).name})")
    url = str(repo_url).rstrip("/")
    return f"{url}/tree/{revision}" if revision else url
