"""``des4-demo`` (scripts/web_demo.py and des4_hf/demo.py, issues 18 and 34): the page's parts, its API, its Space folder, and a real browser.

The served tests start the app in a subprocess on 127.0.0.1 with a tiny random model (or the trained model named by
``DES4_DEMO_MODEL``), call it with ``gradio_client`` and drive it from headless Chromium (Debian's ``chromium`` and
``chromium-driver``, with selenium). ``DES4_SCREENSHOT_DIR=reports`` writes the browser test's screenshot there.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from des4_hf_scripts.predict import main as predict_main
from des4_hf_scripts.push_to_hub import main as push_main
from packaging.requirements import Requirement
from PIL import Image

import des4_hf
from des4_hf import Des4Config, Des4ForSemanticSegmentation, Des4ImageProcessor
from des4_hf.evaluation import EvaluationResult
from des4_hf.hub import model_facts
from des4_hf.publish import stage_space

gradio = pytest.importorskip("gradio", reason="the web demo needs the `demo` extra (pip install 'des4-hf[demo]')")
from des4_hf_scripts import web_demo  # noqa: E402  (needs gradio's presence checked first)

from des4_hf import demo  # noqa: E402
from des4_hf.loading import UsageError  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120  # seconds for the app to import torch + gradio, load the model and answer


# -- the page's parts ----------------------------------------------------------------------------------------------
def test_the_legend_lists_present_classes_by_share_with_their_colours():
    label_map = np.array([[1, 1, 1, 1], [1, 1, 3, 3]], dtype=np.uint8)  # 6 road, 2 tree; sky and car absent
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[1], palette[3] = (10, 20, 30), (200, 100, 0)
    assert demo.class_shares(label_map, 4) == [(1, 0.75), (3, 0.25)]
    legend = demo.legend_html(label_map, ["sky", "road", "car", "tree <b>"], palette)
    assert legend.index("road — 75.0 %") < legend.index("tree &lt;b&gt; — 25.0 %")  # names are escaped
    assert "rgb(10,20,30)" in legend and "rgb(200,100,0)" in legend and "sky" not in legend and "car" not in legend


def test_facts_come_from_the_card_else_from_the_saved_evaluation(model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["training"] = {"method": "des4", "dataset": "camvid", "split": "camvid_1_8", "steps": 1000}
    (folder / "config.json").write_text(json.dumps(config))
    loaded = lambda: demo.ModelStore(torch.device("cpu"), "fp32").get(str(folder))  # noqa: E731

    facts = demo.facts_markdown(loaded())
    assert "sky, road, car, tree" in facts and "method des4 · dataset camvid · split camvid_1_8 · steps 1000" in facts
    assert "not reported" in facts

    confusion = torch.tensor([[3, 1, 0, 0], [0, 4, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0]])  # IoU .75 .8 1 –
    EvaluationResult.from_confusion(confusion, ["sky", "road", "car", "tree"], 2,
                                    {"dataset": "camvid", "split": "val"}).save(folder)
    assert "**mIoU** (eval.json) CamVid val: **85.00 %**" in demo.facts_markdown(loaded())

    (folder / "README.md").write_text("---\nmodel-index:\n- name: m\n  results:\n  - task: {type: image-segmentation}\n"
                                      "    dataset: {name: CamVid, type: camvid, split: test}\n"
                                      "    metrics:\n    - {type: mean_iou, value: 51.17, name: mIoU}\n---\n# m\n")
    assert "**mIoU** (model card) CamVid test: **51.17 %**" in demo.facts_markdown(loaded())
    # a Hub id whose card cannot be fetched (offline here): the facts leave the results out, without an error
    hub_facts = model_facts(loaded().model.config, "someone/not-in-the-cache")
    assert hub_facts.results == [] and hub_facts.results_source is None and hub_facts.classes == ["sky", "road",
                                                                                                  "car", "tree"]


@pytest.mark.onednn_bf16
def test_the_page_runs_in_the_precision_chosen_as_des4_predict_chooses_it(model_dir, probing, camvid_image_paths):
    cpu = torch.device("cpu")
    timed = probing({"fp32-nchw": 0.9, "fp32-channels_last": 0.9, "bf16-nchw": 0.2, "bf16-channels_last": 0.5})
    loaded = demo.ModelStore(cpu, "auto").get(str(model_dir))  # auto: timed on the loaded network, as predict
    assert len(timed) == 4 and loaded.choice.name == "bf16" and not loaded.choice.channels_last
    assert "Runs** on cpu, bf16" in demo.facts_markdown(loaded)
    bf16 = demo.segment_file(loaded, camvid_image_paths[0])  # autocast bf16 on the CPU
    fp32 = demo.segment_file(demo.ModelStore(cpu, "fp32").get(str(model_dir)), camvid_image_paths[0])
    assert bf16.label_map.shape == fp32.label_map.shape == (360, 480)
    assert (bf16.label_map == fp32.label_map).mean() > 0.9  # the same network, rounded differently


def test_a_model_without_trained_prototypes_is_refused_in_one_line(tmp_path, capsys):
    fresh = tmp_path / "fresh"
    config = Des4Config(backbone="test_resnet", id2label={0: "a", 1: "b"}, decoder_channels=16, low_level_channels=8)
    Des4ForSemanticSegmentation(config).save_pretrained(fresh)  # prototypes never set from data
    Des4ImageProcessor().save_pretrained(fresh)
    with pytest.raises(UsageError, match="prototype"):
        demo.build_demo(str(fresh), precision="fp32")
    assert web_demo.main(["--model", str(fresh), "--precision", "fp32"]) == 2
    err = capsys.readouterr().err  # beside transformers' loading progress bars
    lines = [line for line in err.splitlines() if line.startswith("des4-demo: ")]
    assert len(lines) == 1 and "prototype" in lines[0] and "Traceback" not in err


def test_bad_arguments_are_one_line_and_exit_2(model_dir, tmp_path, capsys):
    assert web_demo.main(["--model", str(tmp_path / "missing/")]) == 2
    assert web_demo.main(["--model", str(model_dir), "--examples", str(tmp_path / "nope.jpg")]) == 2
    assert web_demo.main(["--model", str(model_dir), "--port", "70000"]) == 2
    assert web_demo.main(["--model", str(model_dir), "--device", "cpu", "--precision", "fp16"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("des4-demo: ")]
    assert len(lines) == 4 and "Traceback" not in err
    assert "no such directory" in lines[0] and "nope.jpg" in lines[1] and "--port" in lines[2] and "fp16" in lines[3]


def test_the_space_folder_points_at_the_model_repo(tmp_path, capsys, model_dir):
    stray = Path(des4_hf.__file__).parent / "data" / "stray-secret.env"  # a developer's file beside the code
    stray.write_text("HF_TOKEN=hf_not_for_the_space\n")
    try:
        space = stage_space(tmp_path / "space", "me/des4-camvid", "me/des4-camvid-demo")
    finally:
        stray.unlink()
    assert not list(space.rglob("stray-secret.env"))  # the Space carries the package's files only
    assert sorted(path.name for path in space.iterdir()) == ["README.md", "app.py", "des4_hf", "requirements.txt"]
    assert (space / "des4_hf" / "demo.py").is_file() and not list(space.rglob("__pycache__"))
    readme = (space / "README.md").read_text()
    front = readme.split("---")[1]
    assert "sdk: gradio" in front and f"sdk_version: {gradio.__version__}" in front and "app_file: app.py" in front
    assert "models:\n- me/des4-camvid" in front
    assert '"me/des4-camvid"' in (space / "app.py").read_text()
    # installable: every line names a distribution that pip installed here, at a version its range allows
    requirements = [Requirement(line) for line in (space / "requirements.txt").read_text().splitlines()]
    assert {"torch", "transformers", "gradio"} <= {r.name for r in requirements}
    for requirement in requirements:
        assert requirement.marker is None and requirement.specifier.contains(version(requirement.name)), requirement
    with pytest.raises(FileExistsError, match="not an empty folder"):  # never overwrites a folder's files
        stage_space(space, "me/des4-camvid", "me/des4-camvid-demo")
    # the command line: --space-dir with --dry-run writes both folders and uploads nothing
    code = push_main(["--model", str(model_dir), "--repo-id", "me/m", "--space", "me/m-demo", "--space-dir",
                      str(tmp_path / "s2"), "--dry-run", str(tmp_path / "m2"),
                      "--space-requirement", "des4-hf[demo] @ git+https://github.com/me/des4-hf"])
    assert code == 0 and (tmp_path / "s2" / "app.py").is_file() and (tmp_path / "m2" / "config.json").is_file()
    assert (tmp_path / "s2" / "requirements.txt").read_text() == "des4-hf[demo] @ git+https://github.com/me/des4-hf\n"
    assert push_main(["--model", str(model_dir), "--repo-id", "me/m", "--space-dir", str(tmp_path / "s3"),
                      "--dry-run", str(tmp_path / "m3")]) == 2
    assert "--space-dir needs --space" in capsys.readouterr().err


# -- served: the API, the Space's app.py, a real browser -------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(command: list[str], env: dict[str, str], log: Path) -> Iterator[str]:
    """Start ``command`` (which serves on env's GRADIO_SERVER_PORT), wait until it answers; its URL."""
    url = f"http://127.0.0.1:{env['GRADIO_SERVER_PORT']}/"
    with open(log, "w") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "gradio_api/info", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the app did not answer within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _app_env() -> dict[str, str]:
    return {**os.environ, "GRADIO_SERVER_PORT": str(_free_port()), "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}


@pytest.fixture(scope="module")
def served_model(model_dir) -> str:
    return os.environ.get("DES4_DEMO_MODEL") or str(model_dir)


@pytest.fixture(scope="module")
def examples_dir(camvid_image_paths, tmp_path_factory) -> Path:
    """An example image beside a private file (and a private photo) that the page must never serve or read."""
    folder = tmp_path_factory.mktemp("examples")
    shutil.copy(camvid_image_paths[2], folder / "example.jpg")
    (folder / "id_rsa").write_text("PRIVATE KEY\n")
    shutil.copy(camvid_image_paths[1], folder / "private.jpg")
    return folder


def _isolated_env(folder: Path) -> dict[str, str]:
    """The app's temporary files (Gradio's cache, the masks) in ``folder``, to check what it leaves behind."""
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    return {**_app_env(), "TMPDIR": str(folder / "tmp"), "GRADIO_TEMP_DIR": str(folder / "gradio")}


@pytest.fixture(scope="module")
def app_url(served_model, examples_dir, tmp_path_factory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("app")
    command = [sys.executable, "-m", "des4_hf_scripts.web_demo", "--model", served_model, "--device", "cpu",
               "--examples", str(examples_dir / "example.jpg")]
    env = _isolated_env(folder)
    yield from _serve([*command, "--port", env["GRADIO_SERVER_PORT"]], env, folder / "des4-demo.log")


def _predict_mask(model: str, image: Path, out: Path) -> np.ndarray:
    assert predict_main(["--model", model, str(image), "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    return np.asarray(Image.open(out / f"{image.stem}.png"))


@pytest.mark.slow
def test_the_api_returns_des4_predicts_mask(app_url, served_model, camvid_image_paths, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    image = camvid_image_paths[0]
    overlay_path, legend, mask_path, info = client.predict(handle_file(str(image)), 0.5, api_name="/segment")
    expected = _predict_mask(served_model, image, tmp_path / "preds")
    mask = Image.open(mask_path)
    assert mask.mode == "P" and np.array_equal(np.asarray(mask), expected)
    assert Image.open(overlay_path).size == Image.open(image).size
    classes = Des4ForSemanticSegmentation.config_class.from_pretrained(served_model).id2label
    assert [item.split('data-class="')[1].split('"')[0] for item in legend.split("<li")[1:]] == \
        [classes[index] for index, _ in demo.class_shares(expected, len(classes))]
    assert "whole image" in info and " ms " in info
    with pytest.raises(Exception, match="is not an image that can be read"):
        client.predict(handle_file(__file__), 0.5, api_name="/segment")


# -- a hostile page user (issue 34) ----------------------------------------------------------------------------------
def _raw_call(url: str, api: str, data: list[object]) -> tuple[str, str]:
    """Gradio's HTTP API without gradio_client (which would upload a local file it finds in ``data``, as a
    client on another machine could not): the final event's name and data."""
    request = urllib.request.Request(f"{url}gradio_api/call/{api}", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        event_id = json.loads(answer.read())["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/{api}/{event_id}", timeout=120) as answer:
        lines = answer.read().decode().splitlines()
    events = [line.split(": ", 1)[1] for line in lines if line.startswith("event: ")]
    payloads = [line.split(": ", 1)[1] if ": " in line else "" for line in lines if line.startswith("data:")]
    return events[-1], payloads[-1]


def _forged(path: Path | str) -> dict[str, object]:
    """A file record naming a server path the client never uploaded."""
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


@pytest.mark.slow
def test_the_page_reads_no_server_file_and_serves_no_folder(app_url, examples_dir, camvid_image_paths):
    from gradio_client import Client

    answers = set()
    for path in (examples_dir / "private.jpg", examples_dir / "example.jpg", examples_dir / "missing.jpg",
                 examples_dir, camvid_image_paths[0]):  # a file, the example's own path, nothing, a folder
        event, data = _raw_call(app_url, "segment", [_forged(path), 0.0])
        assert event == "error", (path, data)  # no overlay: the file's pixels never come back
        answers.add(data.replace(str(path), "<path>"))
    assert len(answers) == 1  # one message whatever the path: no hint of which paths exist
    # the same record for a file uploaded through the page's upload route is read
    boundary = "des4boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"photo.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + (examples_dir / "private.jpg").read_bytes() \
        + f"\r\n--{boundary}--\r\n".encode()
    upload = urllib.request.Request(f"{app_url}gradio_api/upload", data=body, method="POST",
                                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(upload, timeout=30) as answer:
        uploaded = json.loads(answer.read())[0]
    event, data = _raw_call(app_url, "segment", [_forged(uploaded), 0.0])  # a real upload works
    assert event == "complete"
    client = Client(app_url, verbose=False)
    for path in (examples_dir / "id_rsa", examples_dir / "private.jpg", examples_dir / "example.jpg", "/etc/passwd"):
        request = urllib.request.Request(f"{app_url}gradio_api/file={path}")
        with pytest.raises(urllib.error.HTTPError) as served:
            urllib.request.urlopen(request, timeout=10)
        assert served.value.code in (403, 404), path
    assert "load_model" not in json.dumps(client.view_api(return_format="dict", print_info=False))
    with pytest.raises(Exception):  # noqa: B017 - gradio_client's own error type for an unknown endpoint
        client.predict("someone/else", api_name="/load_model")


@pytest.mark.slow
def test_uploads_are_capped_in_bytes_and_the_examples_still_work(app_url, served_model, examples_dir):
    from gradio_client import Client

    big = b"\xff\xd8" + bytes(21 * 2**20)  # 21 MB: over the default 20
    boundary = "des4boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{app_url}gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413
    client = Client(app_url, verbose=False)  # an example, as the page sends it when clicked: Gradio's copy
    example = client.config["components"]
    cached = next(sample[0] for component in example if component.get("type") == "dataset"
                  for sample in component["props"]["samples"])
    _, _, mask_path, _ = client.predict(cached, 0.5, api_name="/segment")
    assert np.array_equal(np.asarray(Image.open(mask_path)),
                          _predict_mask(served_model, examples_dir / "example.jpg", examples_dir.parent / "ex-preds"))


def test_images_over_the_pixel_cap_are_refused_before_decoding(model_dir, tmp_path):
    photo = tmp_path / "wide.png"
    Image.new("RGB", (300, 200)).save(photo)
    loaded = demo.ModelStore(torch.device("cpu"), "fp32").get(str(model_dir))
    with pytest.raises(UsageError, match=r"wide.png is 300×200 = 0.06 megapixels; this page takes at most 0.05: downscale"):
        demo.segment_file(loaded, photo, max_pixels=50_000)
    assert demo.segment_file(loaded, photo, max_pixels=60_000).label_map.shape == (200, 300)


def test_the_ranking_tab_ranks_uploads_as_des4_suggest_does_and_refuses_bad_input_in_one_line(model_dir, tmp_path):
    from des4_hf.label_next import rank_images

    rng = np.random.default_rng(0)
    uploads = []
    for index in range(4):
        path = tmp_path / f"upload{index}" / "frame.png"  # Gradio keeps each upload in its own folder
        path.parent.mkdir()
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
        uploads.append((str(path), f"f{index}.png"))
    twin = tmp_path / "twin.png"
    shutil.copy(uploads[0][0], twin)
    uploads.append((str(twin), "f0-copy.png"))  # a near-duplicate video frame
    loaded = demo.ModelStore(torch.device("cpu"), "fp32").get(str(model_dir))
    table, tiles = demo.rank_uploads(loaded, uploads, 2)
    assert [row[0] for row in table] == [1, 2, 3, 4, 5] and sorted(row[1] for row in table) == sorted(
        name for _, name in uploads)
    scores = [row[2] for row in table]
    suggested = [row[1] for row in table if row[4] == "yes"]
    assert scores == sorted(scores, reverse=True) and len(suggested) == 2
    assert not {"f0.png", "f0-copy.png"} <= set(suggested)  # never both twins
    images = [Image.open(path) for path, _ in uploads]
    ranking = rank_images(loaded.model, loaded.processor, images, 2, torch.device("cpu"))  # des4-suggest's ranking
    assert [caption for _, caption in tiles] == [f"{rank}. {uploads[i][1]}" for rank, i in enumerate(ranking.picks, 1)]
    assert all(tile.width == 2 * 240 for tile, _ in tiles)  # each photo beside its uncertainty map
    (tmp_path / "notes.png").write_text("not an image")
    for bad, budget, message in (([], 2, "no images: upload the images to rank first"),
                                 (uploads * 11, 2, "55 images: this page ranks at most 50 at a time"),
                                 (uploads, 6, "a whole number from 1 to the 5 images"),
                                 (uploads, "2; rm -rf /", "a whole number from 1 to the 5 images"),
                                 (uploads, 1.5, "a whole number"),
                                 ([(str(tmp_path / "notes.png"), "notes.png")], 1, "notes.png is not an image")):
        with pytest.raises(UsageError, match=message):
            demo.rank_uploads(loaded, bad, budget)


def test_the_model_box_loads_hub_ids_or_folders_under_the_models_dir_only(tmp_path, monkeypatch):
    models = tmp_path / "models"
    (models / "camvid").mkdir(parents=True)
    (tmp_path / "secret-model").mkdir()
    (tmp_path / "me" / "local").mkdir(parents=True)  # a local folder shaped like a Hub id
    monkeypatch.chdir(tmp_path)
    assert demo.page_model_name("camvid", models) == str((models / "camvid").resolve())
    assert demo.page_model_name(" me/des4-camvid ", models) == "me/des4-camvid"
    refused = ["../secret-model", str(tmp_path / "secret-model"), "me/local", "/etc", "", "camvid/../..",
               "nope/../../x", "missing"]
    messages = set()
    for name in refused:
        with pytest.raises(UsageError) as error:
            demo.page_model_name(name, models)
        messages.add(str(error.value))
    assert messages == {"this page loads only a folder under the models folder or a Hub id"}
    with pytest.raises(UsageError, match="only a Hub id"):
        demo.page_model_name("camvid", None)  # no models folder: Hub ids only


@pytest.mark.slow
def test_with_model_choice_the_box_loads_models_of_the_models_dir(served_model, model_dir, tmp_path):
    from gradio_client import Client

    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(model_dir, models / "tiny")
    fresh = models / "fresh"  # a model whose prototypes were never trained: refused with the reason, in the page
    Des4ForSemanticSegmentation(Des4Config(backbone="test_resnet", id2label={0: "a", 1: "b"}, decoder_channels=16,
                                           low_level_channels=8)).save_pretrained(fresh)
    env = _isolated_env(tmp_path)
    command = [sys.executable, "-m", "des4_hf_scripts.web_demo", "--model", served_model, "--device", "cpu",
               "--model-choice", "--models-dir", str(models), "--port", env["GRADIO_SERVER_PORT"]]
    for url in _serve(command, env, tmp_path / "app.log"):
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match="prototype"):
            client.predict("fresh", api_name="/load_model")
        with pytest.raises(Exception, match="loads only a folder under the models folder or a Hub id"):
            client.predict(str(model_dir), api_name="/load_model")  # a real model, but outside the models folder
        assert "4 classes: sky, road, car, tree" in client.predict("tiny", api_name="/load_model")


@pytest.mark.slow
def test_the_page_has_a_private_upload_folder_and_removes_its_files_on_exit(served_model, camvid_image_paths,
                                                                            tmp_path):
    from gradio_client import Client, handle_file

    env = _isolated_env(tmp_path)
    del env["GRADIO_TEMP_DIR"]  # as a user runs it: des4-demo makes the page's own folder under TMPDIR
    command = [sys.executable, "-m", "des4_hf_scripts.web_demo", "--model", served_model, "--device", "cpu",
               "--port", env["GRADIO_SERVER_PORT"]]
    temporary = tmp_path / "tmp"
    for url in _serve(command, env, tmp_path / "app.log"):
        Client(url, verbose=False).predict(handle_file(str(camvid_image_paths[0])), 0.5, api_name="/segment")
        uploads = [p for p in temporary.rglob("*.jpg")]
        assert uploads and all(p.relative_to(temporary).parts[0].startswith("des4-demo-gradio-") for p in uploads)
    deadline = time.monotonic() + 20  # terminated (SIGTERM): the files go before the process ends
    while time.monotonic() < deadline and any(p.is_file() for p in temporary.rglob("*")):
        time.sleep(0.5)
    assert [p for p in temporary.rglob("*") if p.is_file()] == []


@pytest.mark.slow
def test_the_uncertainty_tab_shows_the_entropy_map_beside_the_segmentation(app_url, served_model, camvid_image_paths):
    """Issue 33: for an uploaded image, where the model is unsure (des4-suggest's score), beside its segmentation."""
    from gradio_client import Client, handle_file

    image = camvid_image_paths[0]
    overlay_path, map_path, info = Client(app_url, verbose=False).predict(handle_file(str(image)),
                                                                          api_name="/uncertainty")
    size = Image.open(image).size
    assert Image.open(overlay_path).size == size and Image.open(map_path).size == size
    mean = float(info.split("mean uncertainty ")[1].split(" %")[0])
    assert 0.0 <= mean <= 100.0
    loaded = demo.ModelStore(torch.device("cpu"), "fp32").get(served_model)
    segmentation, uncertainty, fraction = demo.uncertainty_of_file(loaded, image)
    assert uncertainty.size == size and abs(100 * fraction - mean) < 0.5  # the page's figure is the library's


@pytest.mark.slow
def test_the_ranking_endpoint_ranks_uploads_and_reads_no_server_file(app_url, examples_dir, camvid_image_paths):
    """Issue 33: a page user's uploads ranked as des4-suggest ranks them; a record naming a server file is refused."""
    from gradio_client import Client, handle_file

    table, gallery = Client(app_url, verbose=False).predict([handle_file(str(p)) for p in camvid_image_paths], 2,
                                                           api_name="/rank")
    rows = table["data"] if isinstance(table, dict) else table
    assert len(rows) == 3 and sum(row[4] == "yes" for row in rows) == 2 and len(gallery) == 2
    assert {row[1] for row in rows} == {p.name for p in camvid_image_paths}
    answers = set()
    for path in (examples_dir / "private.jpg", examples_dir / "missing.jpg"):  # a server file, nothing
        event, data = _raw_call(app_url, "rank", [[_forged(path)], 1])
        assert event == "error", (path, data)  # no ranking, no tile: the file's pixels never come back
        answers.add(data.replace(str(path), "<path>"))
    assert len(answers) == 1  # one message whatever the path: no hint of which paths exist


@pytest.mark.slow
def test_a_large_image_goes_through_the_sliding_window(app_url, served_model, camvid_image_paths, tmp_path):
    from gradio_client import Client, handle_file

    large = tmp_path / "large.png"
    Image.open(camvid_image_paths[1]).resize((1440, 1080), Image.BILINEAR).save(large)
    overlay_path, _, mask_path, info = Client(app_url, verbose=False).predict(
        handle_file(str(large)), 0.5, api_name="/segment")
    assert "sliding window 512/" in info and Image.open(overlay_path).size == (1440, 1080)
    predicted = tmp_path / "predict"
    assert predict_main(["--model", served_model, str(large), "--out", str(predicted), "--no-progress", "--device",
                         "cpu", "--sliding-window"]) == 0
    assert np.array_equal(np.asarray(Image.open(mask_path)), np.asarray(Image.open(predicted / "large.png")))


@pytest.mark.slow
def test_the_space_app_starts_against_a_local_model_folder(model_dir, camvid_image_paths, tmp_path):
    from gradio_client import Client, handle_file

    space = stage_space(tmp_path / "space", "me/des4-camvid", "me/des4-camvid-demo")
    env = {**_app_env(), "DES4_MODEL": str(model_dir), "GRADIO_SERVER_NAME": "127.0.0.1"}
    for url in _serve([sys.executable, str(space / "app.py")], env, tmp_path / "space.log"):
        _, _, mask_path, _ = Client(url, verbose=False).predict(
            handle_file(str(camvid_image_paths[0])), 0.5, api_name="/segment")
        expected = _predict_mask(str(model_dir), camvid_image_paths[0], tmp_path / "preds")
        assert np.array_equal(np.asarray(Image.open(mask_path)), expected)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("headless browser test: install Debian's chromium and chromium-driver (scripts/test.sh does)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300"):
        options.add_argument(argument)
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium never downloads a driver
    for attempt in range(3):  # a cold start reads ~300 MB of Chromium from disk: a slow disk can outlast one wait
        try:
            driver = webdriver.Chrome(service=Service(driver_path), options=options)
            break
        except WebDriverException:
            if attempt == 2:
                raise
    yield driver
    driver.quit()


def _ignore_stale(action):
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        return action()
    except StaleElementReferenceException:
        return None


@pytest.mark.slow
def test_in_a_browser_upload_segment_and_a_non_image(app_url, browser, served_model, camvid_image_paths,
                                                     not_an_image, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver, image = browser, camvid_image_paths[0]
    driver.get(app_url)
    wait = WebDriverWait(driver, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#des4-image input[type=file]"))
    assert "classes" in driver.find_element(By.ID, "des4-facts").text  # the model card's facts are shown

    shown = "return [...document.querySelectorAll('#des4-image img')].map(img => img.src);"

    def retrying(action):  # Gradio re-renders parts of the page: an element found may be replaced before use
        return wait.until(lambda d: _ignore_stale(action))

    def upload_and_segment(path: Path) -> None:
        before = driver.execute_script(shown)
        retrying(lambda: driver.find_element(By.CSS_SELECTOR, "#des4-image input[type=file]").send_keys(str(path))
                 or True)
        wait.until(lambda d: (lambda now: now and now != before)(d.execute_script(shown)))  # this file is uploaded
        retrying(lambda: driver.find_element(By.ID, "des4-segment").click() or True)

    upload_and_segment(image)
    size = wait.until(lambda d: d.execute_script(
        "const img = document.querySelector('#des4-overlay img');"
        "return img && img.complete && img.naturalWidth ? [img.naturalWidth, img.naturalHeight] : null;"))
    assert tuple(size) == Image.open(image).size
    legend = wait.until(lambda d: d.execute_script(  # in one script: the page may re-render between calls
        "return [...document.querySelectorAll('#des4-legend li')].map(item => item.dataset.class);"))
    expected = _predict_mask(served_model, image, tmp_path / "preds")
    classes = Des4ForSemanticSegmentation.config_class.from_pretrained(served_model).id2label
    assert legend == [classes[index] for index, _ in demo.class_shares(expected, len(classes))]
    shots = Path(os.environ.get("DES4_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(shots / "web_demo.png"))

    # a file that is not an image: the page says so in one line (no traceback)
    upload_and_segment(not_an_image)
    message = wait.until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('body *')].filter(element => !element.children.length"
        " && element.textContent.includes('is not an image that can be read')).map(e => e.textContent)[0];"))
    assert not_an_image.name in message and "Traceback" not in driver.page_source
