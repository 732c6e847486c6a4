"""``des4-demo`` (scripts/web_demo.py, issue 18): the page's parts, its API, its Space folder, and a real browser.

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
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from des4_hf_scripts.predict import UsageError
from des4_hf_scripts.predict import main as predict_main
from des4_hf_scripts.push_to_hub import main as push_main
from des4_hf_scripts.push_to_hub import stage_space
from PIL import Image

from des4_hf import Des4Config, Des4ForSemanticSegmentation, Des4ImageProcessor
from des4_hf.evaluation import EvaluationResult
from des4_hf.hub import model_facts

gradio = pytest.importorskip("gradio", reason="the web demo needs the `demo` extra (pip install 'des4-hf[demo]')")
from des4_hf_scripts import web_demo  # noqa: E402  (needs gradio's presence checked first)

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120  # seconds for the app to import torch + gradio, load the model and answer


# -- the page's parts ----------------------------------------------------------------------------------------------
def test_the_legend_lists_present_classes_by_share_with_their_colours():
    label_map = np.array([[1, 1, 1, 1], [1, 1, 3, 3]], dtype=np.uint8)  # 6 road, 2 tree; sky and car absent
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[1], palette[3] = (10, 20, 30), (200, 100, 0)
    assert web_demo.class_shares(label_map, 4) == [(1, 0.75), (3, 0.25)]
    legend = web_demo.legend_html(label_map, ["sky", "road", "car", "tree <b>"], palette)
    assert legend.index("road — 75.0 %") < legend.index("tree &lt;b&gt; — 25.0 %")  # names are escaped
    assert "rgb(10,20,30)" in legend and "rgb(200,100,0)" in legend and "sky" not in legend and "car" not in legend


def test_facts_come_from_the_card_else_from_the_saved_evaluation(model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["training"] = {"method": "des4", "dataset": "camvid", "split": "camvid_1_8", "steps": 1000}
    (folder / "config.json").write_text(json.dumps(config))
    loaded = lambda: web_demo.ModelStore(web_demo.torch.device("cpu"), "fp32").get(str(folder))  # noqa: E731

    facts = web_demo.facts_markdown(loaded())
    assert "sky, road, car, tree" in facts and "method des4 · dataset camvid · split camvid_1_8 · steps 1000" in facts
    assert "not reported" in facts

    confusion = web_demo.torch.tensor([[3, 1, 0, 0], [0, 4, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0]])  # IoU .75 .8 1 –
    EvaluationResult.from_confusion(confusion, ["sky", "road", "car", "tree"], 2,
                                    {"dataset": "camvid", "split": "val"}).save(folder)
    assert "**mIoU** (eval.json) CamVid val: **85.00 %**" in web_demo.facts_markdown(loaded())

    (folder / "README.md").write_text("---\nmodel-index:\n- name: m\n  results:\n  - task: {type: image-segmentation}\n"
                                      "    dataset: {name: CamVid, type: camvid, split: test}\n"
                                      "    metrics:\n    - {type: mean_iou, value: 51.17, name: mIoU}\n---\n# m\n")
    assert "**mIoU** (model card) CamVid test: **51.17 %**" in web_demo.facts_markdown(loaded())
    # a Hub id whose card cannot be fetched (offline here): the facts leave the results out, without an error
    hub_facts = model_facts(loaded().model.config, "someone/not-in-the-cache")
    assert hub_facts.results == [] and hub_facts.results_source is None and hub_facts.classes == ["sky", "road",
                                                                                                  "car", "tree"]


@pytest.mark.onednn_bf16
def test_the_page_runs_in_the_precision_chosen_as_des4_predict_chooses_it(model_dir, probing, camvid_image_paths):
    cpu = web_demo.torch.device("cpu")
    timed = probing({"fp32-nchw": 0.9, "fp32-channels_last": 0.9, "bf16-nchw": 0.2, "bf16-channels_last": 0.5})
    loaded = web_demo.ModelStore(cpu, "auto").get(str(model_dir))  # auto: timed on the loaded network, as predict
    assert len(timed) == 4 and loaded.choice.name == "bf16" and not loaded.choice.channels_last
    assert "Runs** on cpu, bf16" in web_demo.facts_markdown(loaded)
    bf16 = web_demo.segment_file(loaded, camvid_image_paths[0])  # autocast bf16 on the CPU
    fp32 = web_demo.segment_file(web_demo.ModelStore(cpu, "fp32").get(str(model_dir)), camvid_image_paths[0])
    assert bf16.label_map.shape == fp32.label_map.shape == (360, 480)
    assert (bf16.label_map == fp32.label_map).mean() > 0.9  # the same network, rounded differently


def test_a_model_without_trained_prototypes_is_refused_in_one_line(tmp_path, capsys):
    fresh = tmp_path / "fresh"
    config = Des4Config(backbone="test_resnet", id2label={0: "a", 1: "b"}, decoder_channels=16, low_level_channels=8)
    Des4ForSemanticSegmentation(config).save_pretrained(fresh)  # prototypes never set from data
    Des4ImageProcessor().save_pretrained(fresh)
    with pytest.raises(UsageError, match="prototype"):
        web_demo.build_demo(str(fresh), precision="fp32")
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
    space = stage_space(tmp_path / "space", "me/des4-camvid", "me/des4-camvid-demo")
    assert sorted(path.name for path in space.iterdir()) == ["README.md", "app.py", "requirements.txt"]
    readme = (space / "README.md").read_text()
    front = readme.split("---")[1]
    assert "sdk: gradio" in front and f"sdk_version: {gradio.__version__}" in front and "app_file: app.py" in front
    assert "models:\n- me/des4-camvid" in front
    assert '"me/des4-camvid"' in (space / "app.py").read_text()
    requirement = (space / "requirements.txt").read_text().strip()
    assert requirement.startswith("des4-hf[demo]==")
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
def app_url(served_model, camvid_root, tmp_path_factory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("app") / "des4-demo.log"
    command = [sys.executable, "-m", "des4_hf_scripts.web_demo", "--model", served_model, "--device", "cpu",
               "--data-root", str(camvid_root)]
    env = _app_env()
    yield from _serve([*command, "--port", env["GRADIO_SERVER_PORT"]], env, log)


def _predict_mask(model: str, image: Path, out: Path) -> np.ndarray:
    assert predict_main(["--model", model, str(image), "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    return np.asarray(Image.open(out / f"{image.stem}.png"))


@pytest.mark.slow
def test_the_api_returns_des4_predicts_mask(app_url, served_model, camvid_image_paths, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    image = camvid_image_paths[0]
    overlay_path, legend, mask_path, info = client.predict(handle_file(str(image)), 0.5, served_model,
                                                           api_name="/segment")
    expected = _predict_mask(served_model, image, tmp_path / "preds")
    mask = Image.open(mask_path)
    assert mask.mode == "P" and np.array_equal(np.asarray(mask), expected)
    assert Image.open(overlay_path).size == Image.open(image).size
    classes = Des4ForSemanticSegmentation.config_class.from_pretrained(served_model).id2label
    assert [item.split('data-class="')[1].split('"')[0] for item in legend.split("<li")[1:]] == \
        [classes[index] for index, _ in web_demo.class_shares(expected, len(classes))]
    assert "whole image" in info and " ms " in info
    with pytest.raises(Exception, match="is not an image that can be read"):
        client.predict(handle_file(__file__), 0.5, served_model, api_name="/segment")
    fresh = tmp_path / "fresh"  # a model whose prototypes were never trained: refused with the reason, in the page
    Des4ForSemanticSegmentation(Des4Config(backbone="test_resnet", id2label={0: "a", 1: "b"}, decoder_channels=16,
                                           low_level_channels=8)).save_pretrained(fresh)
    with pytest.raises(Exception, match="prototype"):
        client.predict(str(fresh), api_name="/load_model")
    names = [classes[index] for index in range(len(classes))]
    assert f"{len(names)} classes: {', '.join(names)}" in client.predict(served_model, api_name="/load_model")


@pytest.mark.slow
def test_a_large_image_goes_through_the_sliding_window(app_url, served_model, camvid_image_paths, tmp_path):
    from gradio_client import Client, handle_file

    large = tmp_path / "large.png"
    Image.open(camvid_image_paths[1]).resize((1440, 1080), Image.BILINEAR).save(large)
    overlay_path, _, mask_path, info = Client(app_url, verbose=False).predict(
        handle_file(str(large)), 0.5, served_model, api_name="/segment")
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
    assert legend == [classes[index] for index, _ in web_demo.class_shares(expected, len(classes))]
    shots = Path(os.environ.get("DES4_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(shots / "web_demo.png"))

    # a file that is not an image: the page says so in one line (no traceback)
    upload_and_segment(not_an_image)
    message = wait.until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('body *')].filter(element => !element.children.length"
        " && element.textContent.includes('is not an image that can be read')).map(e => e.textContent)[0];"))
    assert not_an_image.name in message and "Traceback" not in driver.page_source
