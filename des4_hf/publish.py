"""Publishing a trained DeS4 model: the folder uploaded to a Hub model repo (weights, card, results, images), a
Gradio Space that serves it with the web demo, and the upload itself in one commit (``des4-push-to-hub``).

    from des4_hf.publish import push_to_hub
    push_to_hub("out/best", "my-user/des4-camvid", results="out/best/eval.json", example_image="street.jpg")

Everything is checked before the first network call (the model loads with its prototypes, each ``eval.json`` has the
model's classes, the repo id, the branch, a token); the token is never printed. The card is :mod:`des4_hf.hub`'s.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .hub import ResultsSource, check_results_match_labels, labels_of, load_eval_results, render_model_card
from .utils import atomic_path, atomic_write

MODEL_FILES = ("config.json", "preprocessor_config.json")
OVERLAY_NAME = "images/example_prediction.png"
RESULTS_NAME = "eval_results.json"


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


def _check_model_files(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} not found: pass the folder written by training "
                                "(e.g. out/best).")
    missing = [name for name in MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        hint = (" Save the image processor beside the model: Des4ImageProcessor(...).save_pretrained(model_dir)."
                if "preprocessor_config.json" in missing else " Save the model with model.save_pretrained(model_dir).")
        raise FileNotFoundError(f"{model_dir} lacks {missing}.{hint}")
    if not any(model_dir.glob("*.safetensors")):
        raise FileNotFoundError(f"{model_dir} holds no *.safetensors weights; re-save the model with "
                                "model.save_pretrained(model_dir) (safetensors is the default).")


def _new_or_empty_folder(folder: str | Path, what: str) -> Path:
    """``folder``, created if missing; a FileExistsError when it holds anything (it is never overwritten)."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{folder} is not an empty folder; {what} would overwrite what it holds. "
                              "Give a new or empty folder.")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def make_example_overlay(model: Any, processor: Any, image_path: str | Path, path: str | Path,
                         max_side: int = 512) -> Path:
    """Run ``model`` on one image (prediction's own path); save the input beside the prediction overlaid on it."""
    from PIL import Image

    from .image_io import read_image
    from .inference import overlay, segment_images

    image = read_image(Path(image_path)).convert("RGB")
    image.thumbnail((max_side, max_side), Image.BILINEAR)  # keeps the aspect ratio; never enlarges
    (label_map,) = segment_images(model.eval(), processor, [image], next(model.parameters()).device, None, False, None)
    canvas = Image.new("RGB", (image.width * 2, image.height))
    canvas.paste(image, (0, 0))
    canvas.paste(overlay(image, label_map, alpha=0.6), (image.width, 0))
    with atomic_path(path) as temporary:
        canvas.save(temporary, format="PNG")
    return Path(path)


def stage_model_repo(model_dir: str | Path, staging_dir: str | Path, repo_id: str,
                     results: ResultsSource | Sequence[ResultsSource] | None = None,
                     example_image: str | Path | None = None) -> Path:
    """Validate everything, then write the folder that is uploaded (model files, README.md, images, results); no
    network access, and nothing is written when an input is not usable."""
    from . import Des4ForSemanticSegmentation, Des4ImageProcessor
    from .evaluation import plot_per_class_iou

    model_dir = Path(model_dir)
    validate_repo_id(repo_id)
    _check_model_files(model_dir)
    model = Des4ForSemanticSegmentation.from_pretrained(str(model_dir))  # checks the prototypes are there
    processor = Des4ImageProcessor.from_pretrained(str(model_dir))
    labels = labels_of(model.config)
    records = load_eval_results(results)
    check_results_match_labels(records, labels, str(model_dir))
    if example_image is not None and not Path(example_image).is_file():
        raise FileNotFoundError(f"example image {example_image} not found.")
    given = [results] if isinstance(results, (str, Path)) else list(results or [])
    result_names = [Path(item).name for item in given if isinstance(item, (str, Path))]

    staging = _new_or_empty_folder(staging_dir, "the staged files")
    # Saved again rather than copied: the same tensors, plus the code and auto_map for trust_remote_code=True
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    charts = []
    for record in records:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{record.settings['dataset']}-{record.settings['split']}").strip("-")
        chart = f"images/per_class_iou_{slug.lower()}.png" if len(records) > 1 else "images/per_class_iou.png"
        plot_per_class_iou(record, staging / chart)
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


SPACE_APP = '''"""A DeS4 demo Space for {model_repo_id}: des4-hf's web demo (`des4-demo`), run on this Space's hardware.

Set the Space variable DES4_MODEL to serve another model folder or Hub id.
"""

import atexit
import os

from des4_hf.demo import build_demo, launch

MODEL = os.environ.get("DES4_MODEL", "{model_repo_id}")
# des4-demo's safe defaults: one model (no model box), uploads capped, only this page's uploads and examples read
demo = build_demo(MODEL, precision=os.environ.get("DES4_PRECISION", "auto"))
atexit.register(demo.des4_cleanup)

if __name__ == "__main__":
    launch(demo, server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
'''


def space_requirements() -> list[str]:
    """A Space's requirements.txt when it carries des4_hf's code itself (des4-hf is not on PyPI): the package's own
    requirements and its ``demo`` extra, with the ranges setup.cfg gives them."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    try:
        declared = requires("des4-hf") or []
    except PackageNotFoundError:
        raise ValueError("des4-hf is not installed, so its requirements are unknown: pip install -e '.[demo]' in "
                         "the clone first") from None
    lines = []
    for text in declared:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": "demo"}):
            requirement.marker = None
            lines.append(str(requirement))
    return lines


PACKAGE_SUFFIXES = {".py", ".txt", ".md", ".j2"}  # what the wheel carries (setup.cfg's package data)


def _not_package_files(folder: str, names: list[str]) -> set[str]:
    """For copytree: leave out whatever the published package would not hold (caches, a developer's stray files)."""
    return {name for name in names if not (Path(folder, name).is_dir() and name != "__pycache__")
            and Path(name).suffix not in PACKAGE_SUFFIXES}


def stage_space(space_dir: str | Path, model_repo_id: str, space_id: str, requirement: str | None = None) -> Path:
    """Write the folder of a Gradio Space that serves ``model_repo_id`` with the web demo: ``app.py``, ``README.md``
    with the Space metadata (SDK, Gradio version, the model) and ``requirements.txt``. des4-hf is not on PyPI: by
    default the folder carries a copy of ``des4_hf`` and its requirements; ``requirement`` (one line, e.g. a git URL)
    installs des4-hf from elsewhere instead."""
    from importlib.metadata import PackageNotFoundError, version

    validate_repo_id(model_repo_id)
    validate_repo_id(space_id)
    try:
        gradio_version = version("gradio")
    except PackageNotFoundError:
        raise ValueError("a Space is staged for the Gradio version the demo was tested with here: install it first "
                         "(pip install 'des4-hf[demo]').") from None
    if requirement is not None and ("\n" in requirement or not requirement.strip()):
        raise ValueError(f"--space-requirement {requirement!r}: give one requirement line, e.g. "
                         "'des4-hf[demo] @ git+https://github.com/<you>/des4-hf'.")
    lines = [requirement.strip()] if requirement else space_requirements()
    space = _new_or_empty_folder(space_dir, "the Space files")
    if not requirement:  # the package's code travels with the Space, beside app.py (which imports it from there)
        shutil.copytree(Path(__file__).parent, space / "des4_hf", ignore=_not_package_files)
    title = space_id.split("/")[-1]
    readme = (f"---\ntitle: {title}\nsdk: gradio\nsdk_version: {gradio_version}\napp_file: app.py\n"
              f"pinned: false\nlicense: apache-2.0\nmodels:\n- {model_repo_id}\ntags:\n- des4\n"
              f"- semantic-segmentation\n---\n\n# {title}\n\nSegment your own photos with "
              f"[{model_repo_id}](https://huggingface.co/{model_repo_id}), a DeS4 semi-supervised semantic "
              "segmentation model (des4-hf). Upload or paste an image: the page shows the classes as a colour "
              "overlay, their share of the image, and the mask as a palette PNG (pixel value = class index).\n")
    atomic_write(space / "app.py", SPACE_APP.format(model_repo_id=model_repo_id))
    atomic_write(space / "requirements.txt", "\n".join(lines) + "\n")
    atomic_write(space / "README.md", readme)
    return space


def push_to_hub(model_dir: str | Path, repo_id: str, results: ResultsSource | Sequence[ResultsSource] | None = None,
                private: bool = False, revision: str | None = None, commit_message: str | None = None,
                token: str | None = None, example_image: str | Path | None = None, timeout: float = 60.0,
                space: str | None = None, space_requirement: str | None = None) -> str:
    """Upload a trained model, its card, results and images to ``repo_id`` in one commit; returns the repo URL.
    ``timeout``: seconds to connect and for each read or write (huggingface_hub waits forever by default).
    ``space``: also create or update that Gradio Space, serving the model with the web demo (:func:`stage_space`).

    Creates the repo (``private``: a new repo only; an existing public one is refused, not uploaded to) and the
    branch ``revision`` if needed. ``token`` defaults to ``HF_TOKEN`` or ``hf auth login``'s; it is never printed.
    """
    from huggingface_hub import HfApi

    from .hub_names import set_hub_timeout

    validate_repo_id(repo_id)
    revision = validate_revision(revision)
    _token_available(token)
    set_hub_timeout(timeout)  # the shared HTTP client of every huggingface_hub call
    with tempfile.TemporaryDirectory(prefix="des4-push-") as staging, \
            tempfile.TemporaryDirectory(prefix="des4-space-") as space_staging:
        stage_model_repo(model_dir, staging, repo_id, results=results, example_image=example_image)
        space_dir = stage_space(space_staging, repo_id, space, space_requirement) if space else None
        api = HfApi(token=token)
        repo_url = api.create_repo(repo_id, private=True if private else None, exist_ok=True)
        if private and api.repo_info(repo_id).private is False:
            raise ValueError(f"{repo_id} already exists and is public; --private only applies to a new repo. Make "
                             "it private in its settings on the Hub first, or drop --private. Nothing was uploaded.")
        if revision is not None and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=staging, revision=revision,
                          commit_message=commit_message or f"Upload DeS4 model ({Path(model_dir).name})")
        if space_dir is not None:
            api.create_repo(space, repo_type="space", space_sdk="gradio", private=True if private else None,
                            exist_ok=True)
            api.upload_folder(repo_id=space, repo_type="space", folder_path=space_dir,
                              commit_message=f"DeS4 demo for {repo_id}")
    url = str(repo_url).rstrip("/")
    return f"{url}/tree/{revision}" if revision else url
