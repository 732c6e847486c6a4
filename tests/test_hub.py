"""Hub distribution offline: a fake Hub server on 127.0.0.1, push → download → identical predictions.

The fake server implements the subset of the Hub HTTP API that ``create_repo``, ``create_branch``,
``upload_folder`` (preupload + NDJSON commit, regular files only: xet is switched off),
``snapshot_download`` /
``hf_hub_download`` and ``from_pretrained`` use. huggingface_hub reads HF_ENDPOINT at import time, so the
round trip runs in a subprocess pointed at the server (slow tier). Where the server is not the point, the push is
checked against a recording stand-in for ``HfApi`` (fast tier).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import secrets
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from des4_hf.hub_names import (
    DEFAULT_HUB_NAMESPACE,
    NAMESPACE_ENV,
    HubModelNotAvailableError,
    explain_hub_errors,
    resolve_pretrained_name,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "hf_fake" + secrets.token_hex(12)


def _git_blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class FakeHub:
    """In-memory repos: {repo_id: {"private": bool, "branches": {name: {"sha", "files": {path: bytes}}}}}."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def new_sha(self) -> str:
        return secrets.token_hex(20)

    def create_repo(self, repo_id: str, private: bool) -> bool:
        if repo_id in self.repos:
            return False
        files = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}
        self.repos[repo_id] = {
            "private": private,
            "branches": {"main": {"sha": self.new_sha(), "files": files}},
        }
        return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub
    base_url: str

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output quiet
        return

    # -- plumbing ------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False
    ) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str, head: bool = False) -> None:
        body = json.dumps({"error": code}).encode()
        self._send(status, body, {"Content-Type": "application/json", "X-Error-Code": code}, head=head)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {FAKE_TOKEN}"

    def _repo(self, repo_id: str) -> dict[str, Any] | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo["private"] and not self._authorized()):
            return None
        return repo

    def _record(self, body: bytes = b"") -> None:
        self.hub.log.append(
            {
                "method": self.command,
                "path": urlsplit(self.path).path,
                "authorized": self._authorized(),
                "body": body.decode("utf-8", "replace")[:2000],
            }
        )

    # -- verbs ---------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:  # noqa: N802
        self._record()
        with self.hub.lock:
            self._get(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._record()
        with self.hub.lock:
            self._get(head=False)

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        self._record(body)
        with self.hub.lock:
            self._post(body)

    def _get(self, head: bool) -> None:
        path = urlsplit(self.path).path
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if match:
            repo = self._repo(match[1])
            if repo is None:
                return self._error(404, "RepoNotFound", head)
            branch = repo["branches"].get(unquote(match[2] or "main"))
            if branch is None:
                return self._error(404, "RevisionNotFound", head)
            siblings = [{"rfilename": name} for name in sorted(branch["files"])]
            return self._json(
                200,
                {
                    "id": match[1],
                    "modelId": match[1],
                    "sha": branch["sha"],
                    "private": repo["private"],
                    "siblings": siblings,
                    "tags": [],
                    "downloads": 0,
                    "likes": 0,
                },
            )
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        if match:
            branch = self._revision_or_error(match[1], match[2], head)
            if branch is None:
                return None
            prefix = unquote(match[3] or "")
            entries = [
                {"type": "file", "path": name, "size": len(content), "oid": _git_blob_sha(content)}
                for name, content in sorted(branch["files"].items())
                if not prefix or name.startswith(prefix.rstrip("/") + "/")
            ]
            return self._json(200, entries)
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if match:
            branch = self._revision_or_error(match[1], match[2], head)
            if branch is None:
                return None
            content = branch["files"].get(unquote(match[3]))
            if content is None:
                return self._send(
                    404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": branch["sha"]}, head
                )
            headers = {
                "ETag": f'"{_git_blob_sha(content)}"',
                "X-Repo-Commit": branch["sha"],
                "Content-Type": "application/octet-stream",
            }
            return self._send(200, content, headers, head)
        return self._error(404, "EndpointNotFound", head)

    def _revision_or_error(self, repo_id: str, revision: str, head: bool) -> dict[str, Any] | None:
        """The branch (or commit) a URL names; None after answering 404 RepoNotFound / RevisionNotFound."""
        repo = self._repo(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", head)
            return None
        branch = self._branch_or_commit(repo, unquote(revision))
        if branch is None:
            self._error(404, "RevisionNotFound", head)
        return branch

    def _branch_or_commit(self, repo: dict[str, Any], revision: str) -> dict[str, Any] | None:
        if revision in repo["branches"]:
            return repo["branches"][revision]
        for branch in repo["branches"].values():
            if branch["sha"] == revision:
                return branch
        return None

    def _post(self, body: bytes) -> None:
        path = urlsplit(self.path).path
        if path == "/api/validate-yaml":
            return self._json(200, {"errors": [], "warnings": []})
        if not self._authorized():
            return self._send(
                401,
                b'{"error": "Invalid credentials in Authorization header"}',
                {"X-Error-Message": "Invalid credentials in Authorization header"},
            )
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            created = self.hub.create_repo(repo_id, private=payload.get("visibility") == "private")
            if not created:
                return self._json(
                    409, {"error": "You already created this model repo", "url": f"{self.base_url}/{repo_id}"}
                )
            return self._json(200, {"url": f"{self.base_url}/{repo_id}", "name": repo_id, "id": repo_id})
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(branch|preupload|commit)/(.+)", path)
        if not match:
            return self._error(404, "EndpointNotFound")
        repo = self._repo(match[1])
        if repo is None:
            return self._error(404, "RepoNotFound")
        action, revision = match[2], unquote(match[3])
        if action == "branch":
            if revision in repo["branches"]:
                return self._json(409, {"error": "Branch already exists"})
            start = repo["branches"]["main"]
            repo["branches"][revision] = {"sha": start["sha"], "files": dict(start["files"])}
            return self._json(200, {})
        branch = repo["branches"].get(revision)
        if branch is None:
            return self._error(404, "RevisionNotFound")
        if action == "preupload":
            files = json.loads(body)["files"]
            return self._json(
                200,
                {
                    "files": [
                        {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                        for item in files
                    ]
                },
            )
        # commit: NDJSON header + one line per operation
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        for item in lines:
            if item["key"] == "file":
                branch["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                branch["files"].pop(item["value"]["path"], None)
            elif item["key"] != "header":
                return self._json(400, {"error": f"fake hub does not support {item['key']}"})
        branch["sha"] = self.hub.new_sha()
        branch.setdefault("messages", []).append(header["summary"])
        return self._json(
            200,
            {
                "commitUrl": f"{self.base_url}/{match[1]}/commit/{branch['sha']}",
                "commitOid": branch["sha"],
                "pullRequestUrl": None,
            },
        )


@pytest.fixture
def fake_hub() -> Any:
    hub = FakeHub()
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub.url = handler.base_url  # type: ignore[attr-defined]
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()


ROUND_TRIP = r"""
import json, os, sys
import numpy as np
import torch
from PIL import Image

from des4_hf import Des4Config, Des4ForSemanticSegmentation, Des4ImageProcessor
from des4_hf_scripts.push_to_hub import main as push_main
from des4_hf.hub_names import HubModelNotAvailableError, explain_hub_errors, resolve_pretrained_name

work = sys.argv[1]
namespace = os.environ["DES4_HUB_NAMESPACE"]
torch.manual_seed(0)
config = Des4Config(
    backbone="test_resnet", num_labels=3, decoder_channels=16,
    id2label={0: "background", 1: "road", 2: "car"},
    training={"method": "des4", "split": "camvid/20", "recipe": "camvid_demo", "steps": 3},
)
model = Des4ForSemanticSegmentation(config).eval()
model.prototype_head.initialized.fill_(True)
model_dir = os.path.join(work, "model")
model.save_pretrained(model_dir)
Des4ImageProcessor().save_pretrained(model_dir)
rng = np.random.default_rng(0)
Image.fromarray((rng.random((45, 61, 3)) * 255).astype("uint8")).save(os.path.join(work, "example.png"))

repo_id = f"{namespace}/des4-voc-aug"
code = push_main([
    "--model", model_dir, "--repo-id", repo_id, "--results", os.path.join(work, "eval.json"),
    "--example-image", os.path.join(work, "example.png"), "--private", "--revision", "v1-test",
    "--commit-message", "round trip test upload",
])
assert code == 0, code
# --private on an existing public repo is refused, not silently uploaded in public
refused = push_main(["--model", model_dir, "--repo-id", f"{namespace}/already-public", "--private"])

pixel_values = torch.randn(2, 3, 37, 53)
with torch.no_grad():
    local = model(pixel_values=pixel_values).logits
# the short name, as the from_pretrained hook will do it
name = resolve_pretrained_name("des4-voc-aug")
assert name == repo_id, name
with explain_hub_errors(name, revision="v1-test"):
    downloaded = Des4ForSemanticSegmentation.from_pretrained(name, revision="v1-test").eval()
with torch.no_grad():
    remote = downloaded(pixel_values=pixel_values).logits
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
auto_model = AutoModelForSemanticSegmentation.from_pretrained(repo_id, revision="v1-test").eval()
processor = AutoImageProcessor.from_pretrained(repo_id, revision="v1-test")
image = Image.open(os.path.join(work, "example.png"))
with torch.no_grad():
    auto_logits = auto_model(**processor(image, return_tensors="pt")).logits
    local_image_logits = model(**Des4ImageProcessor()(image, return_tensors="pt")).logits

# the short name through the Auto classes and the pipeline too (they stopped at Des4ForSemanticSegmentation)
from transformers import pipeline
short_model = AutoModelForSemanticSegmentation.from_pretrained("des4-voc-aug", revision="v1-test").eval()
short_processor = AutoImageProcessor.from_pretrained("des4-voc-aug", revision="v1-test")
with torch.no_grad():
    short_logits = short_model(**short_processor(image, return_tensors="pt")).logits
short_labels = sorted(r["label"] for r in pipeline("image-segmentation", model="des4-voc-aug", revision="v1-test")(image))
expected_labels = sorted({0: "background", 1: "road", 2: "car"}[int(c)] for c in auto_logits[0].argmax(0).unique())

from huggingface_hub import snapshot_download
snapshot = snapshot_download(repo_id, revision="v1-test")
snapshot_files = sorted(
    os.path.relpath(os.path.join(root, f), snapshot).replace(os.sep, "/")
    for root, _, names in os.walk(snapshot) for f in names
)

# a short name that was never published: the clear error, no HTTP stack trace
not_found = None
try:
    name = resolve_pretrained_name("des4-cityscapes")
    with explain_hub_errors(name):
        Des4ForSemanticSegmentation.from_pretrained(name)
except HubModelNotAvailableError as error:
    not_found = str(error)

print("RESULT " + json.dumps({
    "same_logits": bool(torch.equal(local, remote)),
    "same_auto_logits": bool(torch.equal(auto_logits, local_image_logits)),
    "same_prototypes": bool(
        torch.equal(model.prototype_head.prototypes, downloaded.prototype_head.prototypes)
    ),
    "not_found": not_found,
    "short_name_auto": bool(torch.equal(short_logits, auto_logits)),
    "short_name_pipeline": short_labels == expected_labels,
    "snapshot_files": snapshot_files,
    "refused": refused,
}))
"""


def _eval_json(path: Path) -> dict[str, Any]:
    """An ``eval.json`` as the evaluation writes it: road IoU 737 / 1000, car absent (n/a); its dict."""
    import torch

    from des4_hf.evaluation import EvaluationResult

    confusion = torch.tensor([[100, 200, 0], [63, 737, 0], [0, 0, 0]])
    result = EvaluationResult.from_confusion(confusion, ["background", "road", "car"], num_images=7,
                                             settings={"dataset": "camvid", "split": "val", "protocol": "whole image"})
    path.write_text(json.dumps(result.to_dict(), allow_nan=False))
    return result.to_dict()


@pytest.mark.slow  # starts processes
def test_push_download_predict_round_trip(fake_hub: Any, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    results = _eval_json(tmp_path / "eval.json")
    namespace = "fake-org"
    env = {
        **os.environ,
        "HF_ENDPOINT": fake_hub.url,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_TOKEN": FAKE_TOKEN,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        NAMESPACE_ENV: namespace,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("HF_HUB_CACHE", None)
    fake_hub.create_repo(f"{namespace}/already-public", private=False)
    script = tmp_path / "round_trip.py"
    script.write_text(ROUND_TRIP)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert FAKE_TOKEN not in output, "the token was printed"
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["same_prototypes"] and result["same_logits"] and result["same_auto_logits"], result
    assert {"README.md", "images/per_class_iou.png", "model.safetensors"} <= set(result["snapshot_files"])
    assert (
        result["refused"] == 2
        and "messages" not in fake_hub.repos[f"{namespace}/already-public"]["branches"]["main"]
    )
    assert "already exists and is public" in done.stderr
    assert result["not_found"] and "fake-org/des4-cityscapes" in result["not_found"]
    assert result["short_name_auto"] and result["short_name_pipeline"], "short names in the Auto classes / pipeline"
    assert "accelerate launch scripts/train.py --config configs/cityscapes_744.yaml" in result["not_found"]

    repo_id = f"{namespace}/des4-voc-aug"
    repo = fake_hub.repos[repo_id]
    assert repo["private"] is True, "--private did not reach the server"
    assert set(repo["branches"]) == {"main", "v1-test"}, "--revision did not create the branch"
    branch = repo["branches"]["v1-test"]
    assert branch["messages"] == ["round trip test upload"]
    assert "README.md" not in repo["branches"]["main"]["files"], (
        "the upload went to main instead of the branch"
    )
    files = set(branch["files"])
    assert {
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "README.md",
        "eval_results.json",
        "images/example_prediction.png",
        "images/per_class_iou.png",
        "modeling_des4.py", "configuration_des4.py", "image_processing_des4.py",  # for trust_remote_code=True
    } <= files, files
    assert json.loads(branch["files"]["config.json"])["auto_map"]["AutoModelForSemanticSegmentation"] == \
        "modeling_des4.Des4ForSemanticSegmentation"
    assert branch["files"]["images/example_prediction.png"].startswith(b"\x89PNG")
    writes = [
        entry for entry in fake_hub.log if entry["method"] == "POST" and "validate-yaml" not in entry["path"]
    ]
    assert writes and all(entry["authorized"] for entry in writes)
    assert not any(FAKE_TOKEN in entry["body"] for entry in fake_hub.log)

    card = ModelCard(branch["files"]["README.md"].decode())
    model_index = card.data.to_dict()["model-index"]
    metrics = {m["type"]: m["value"] for m in model_index[0]["results"][0]["metrics"]}
    assert metrics["mean_iou"] == pytest.approx(round(100 * results["mean_iou"], 2))
    assert metrics["accuracy"] == pytest.approx(round(100 * results["pixel_accuracy"], 2))
    (result_entry,) = card.data.eval_results[:1]
    assert result_entry.dataset_type == "camvid" and result_entry.dataset_split == "val"
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    text = card.text
    assert "](images/example_prediction.png)" in text and "](images/per_class_iou.png)" in text
    assert "| road | 73.70 |" in text and "| car | n/a |" in text
    assert "paper's published numbers" in text and "81.02" in text
    assert "| method | des4 |" in text and "| split | camvid/20 |" in text
    assert "@inproceedings" in text and "Apache-2.0" in text
    assert f'AutoModelForSemanticSegmentation.from_pretrained("{repo_id}", trust_remote_code=True)' in text


# ---------------------------------------------------------------------------------------------------------
# short names
# ---------------------------------------------------------------------------------------------------------
def test_short_names_resolve_to_namespace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(NAMESPACE_ENV, raising=False)
    assert resolve_pretrained_name("des4-voc-aug") == f"{DEFAULT_HUB_NAMESPACE}/des4-voc-aug"
    assert resolve_pretrained_name("des4-voc") == f"{DEFAULT_HUB_NAMESPACE}/des4-voc"
    assert resolve_pretrained_name("des4-cityscapes") == f"{DEFAULT_HUB_NAMESPACE}/des4-cityscapes"
    monkeypatch.setenv(NAMESPACE_ENV, "my-lab")
    assert resolve_pretrained_name("des4-voc-aug") == "my-lab/des4-voc-aug"
    # full repo ids and local directories pass through unchanged
    assert resolve_pretrained_name("someone/des4-voc-aug") == "someone/des4-voc-aug"
    assert resolve_pretrained_name(str(tmp_path)) == str(tmp_path)
    assert resolve_pretrained_name(tmp_path) == str(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "des4-voc").mkdir()
    assert resolve_pretrained_name("des4-voc") == "des4-voc", "a local directory must win over a short name"
    monkeypatch.setenv(NAMESPACE_ENV, "bad namespace!")
    with pytest.raises(ValueError, match=NAMESPACE_ENV):
        resolve_pretrained_name("des4-voc-aug")


def test_offline_not_cached_short_name_gives_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants as hub_constants

    from des4_hf import Des4ForSemanticSegmentation

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # conftest sets HF_HUB_OFFLINE=1; make sure
    monkeypatch.delenv(NAMESPACE_ENV, raising=False)
    name = resolve_pretrained_name("des4-voc-aug")
    with pytest.raises(HubModelNotAvailableError) as caught, explain_hub_errors(name):
        Des4ForSemanticSegmentation.from_pretrained(name, cache_dir=str(tmp_path / "empty-cache"))
    message = str(caught.value)
    assert "des4-hf/des4-voc-aug" in message and "HF_HUB_OFFLINE" in message
    assert "hf download des4-hf/des4-voc-aug" in message
    assert "accelerate launch scripts/train.py --config configs/voc_blended_1323.yaml" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__, (
        "HTTP-layer traceback chained"
    )
    assert isinstance(caught.value, OSError) and caught.value.hub_error is not None


def test_explain_hub_errors_leaves_other_errors_alone() -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    with pytest.raises(ValueError, match="prototypes"), explain_hub_errors("des4-voc-aug"):
        raise ValueError("the checkpoint has no prototypes")
    with pytest.raises(LocalEntryNotFoundError), explain_hub_errors("someone/other-model"):
        raise LocalEntryNotFoundError("not cached")


# ---------------------------------------------------------------------------------------------------------
# evaluation JSON and card inputs
# ---------------------------------------------------------------------------------------------------------
def test_eval_json_written_by_evaluation_is_accepted_by_push(tmp_path: Path) -> None:
    import torch

    from des4_hf.evaluation import EvaluationResult
    from des4_hf.hub import load_eval_results

    confusion = torch.tensor([[8, 2, 0], [1, 4, 0], [0, 0, 0]])  # class "c" absent: IoU undefined
    result = EvaluationResult.from_confusion(confusion, ["a", "b", "c"], num_images=3,
                                             settings={"dataset": "camvid", "split": "val"})
    paths = result.write_report(tmp_path / "eval")  # what `scripts/evaluate.py --out` writes
    (record,) = load_eval_results(paths["json"])
    assert (record.settings["dataset"], record.settings["split"], record.num_images) == ("camvid", "val", 3)
    assert record.mean_iou == pytest.approx((8 / 11 + 4 / 7) / 2)
    assert record.per_class_iou[:2] == [pytest.approx(8 / 11), pytest.approx(4 / 7)]
    assert math.isnan(record.per_class_iou[2])
    assert paths["chart"].read_bytes().startswith(b"\x89PNG")


def test_eval_results_must_be_the_evaluations_own(tmp_path: Path) -> None:
    """push reads eval.json through EvaluationResult.load (scores recomputed from the confusion matrix); a
    hand-written or edited file, or one without its dataset and split, is refused with what to run instead."""
    from des4_hf.evaluation import EvaluationResult
    from des4_hf.hub import load_eval_results
    from des4_hf.publish import validate_repo_id

    good = _eval_json(tmp_path / "eval.json")
    (record,) = load_eval_results(tmp_path / "eval.json")
    assert record.per_class_iou[1] == pytest.approx(0.737) and record.settings["dataset"] == "camvid"
    hand_written = {key: good[key] for key in ("dataset", "split", "mean_iou", "per_class_iou", "num_images")}
    (tmp_path / "hand.json").write_text(json.dumps(hand_written))
    with pytest.raises(ValueError, match="hand.json is not an eval.json written by des4-hf.*scripts/evaluate.py"):
        load_eval_results(tmp_path / "hand.json")
    with pytest.raises(FileNotFoundError, match="evaluate"):
        load_eval_results(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not an eval.json"):
        load_eval_results(tmp_path / "bad.json")
    unnamed = EvaluationResult.load(tmp_path / "eval.json")
    unnamed.settings = {}
    with pytest.raises(ValueError, match="an EvaluationResult: the evaluation does not record its dataset and split"):
        load_eval_results(unnamed)
    with pytest.raises(ValueError, match="two evaluation records"):
        load_eval_results([tmp_path / "eval.json", tmp_path / "eval.json"])
    for bad in ("des4-voc-aug", "a/b/c", "user/na me", "-user/x", "user/x--y"):
        with pytest.raises(ValueError, match="repo id"):
            validate_repo_id(bad)
    assert validate_repo_id("my-user/des4-voc-aug") == "my-user/des4-voc-aug"


def test_push_validates_before_any_network_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from des4_hf_scripts.push_to_hub import main

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there; must not be reached
    assert main(["--model", str(tmp_path / "nope"), "--repo-id", "me/des4"]) == 2
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert main(["--model", str(tmp_path / "model"), "--repo-id", "me/des4"]) == 2
    assert main(["--model", str(tmp_path / "model"), "--repo-id", "not-a-repo-id"]) == 2


class _RecordingHfApi:
    """Stands in for ``huggingface_hub.HfApi`` where the server is not the point: records what push asks."""

    calls: list[tuple[str, dict[str, Any]]] = []
    existing_public: set[str] = set()

    def __init__(self, token: str | None = None) -> None:
        self.token = token

    def create_repo(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://hub.example/{repo_id}"

    def repo_info(self, repo_id: str) -> Any:
        return type("Info", (), {"private": repo_id not in self.existing_public})()

    def create_branch(self, repo_id: str, **kwargs: Any) -> None:
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs: Any) -> None:
        folder = Path(kwargs["folder_path"])  # a temporary folder: record its content now
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        self.calls.append(("upload_folder", {**kwargs, "files": files,
                                             "card": (folder / "README.md").read_text(encoding="utf-8")}))


def test_push_to_hub_creates_private_repo_branch_and_uploads_one_folder(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    import torch

    from des4_hf import Des4Config, Des4ForSemanticSegmentation, Des4ImageProcessor
    from des4_hf.publish import push_to_hub

    torch.manual_seed(0)
    model = Des4ForSemanticSegmentation(Des4Config(backbone="test_resnet", num_labels=3, decoder_channels=16,
                                                   id2label={0: "background", 1: "road", 2: "car"}))
    model.prototype_head.initialized.fill_(True)
    model.save_pretrained(tmp_path / "model")
    Des4ImageProcessor().save_pretrained(tmp_path / "model")
    results = _eval_json(tmp_path / "eval.json")
    monkeypatch.setattr(huggingface_hub, "HfApi", _RecordingHfApi)
    _RecordingHfApi.calls, _RecordingHfApi.existing_public = [], {"me/public"}

    url = push_to_hub(tmp_path / "model", "me/des4-camvid", results=[tmp_path / "eval.json"], private=True,
                      revision="v1", commit_message="first upload", token=FAKE_TOKEN)
    assert url == "https://hub.example/me/des4-camvid/tree/v1"
    (create, create_kwargs), (branch, branch_kwargs), (upload, upload_kwargs) = _RecordingHfApi.calls
    assert (create, create_kwargs["private"], create_kwargs["exist_ok"]) == ("create_repo", True, True)
    assert (branch, branch_kwargs["branch"]) == ("create_branch", "v1")
    assert (upload, upload_kwargs["revision"], upload_kwargs["commit_message"]) == ("upload_folder", "v1",
                                                                                    "first upload")
    assert {"README.md", "config.json", "preprocessor_config.json", "model.safetensors", "eval_results.json",
            "images/per_class_iou.png"} <= set(upload_kwargs["files"])
    assert f"| road | {100 * results['per_class_iou']['road']:.2f} |" in upload_kwargs["card"]

    _RecordingHfApi.calls = []
    with pytest.raises(ValueError, match="already exists and is public"):
        push_to_hub(tmp_path / "model", "me/public", private=True, token=FAKE_TOKEN)
    assert [name for name, _ in _RecordingHfApi.calls] == ["create_repo"], "nothing may be uploaded"


def _tiny_model_dir(path: Path) -> Path:
    import torch

    from des4_hf import Des4Config, Des4ForSemanticSegmentation, Des4ImageProcessor

    torch.manual_seed(0)
    model = Des4ForSemanticSegmentation(Des4Config(backbone="test_resnet", num_labels=3, decoder_channels=16))
    model.prototype_head.initialized.fill_(True)
    model.save_pretrained(path)
    Des4ImageProcessor().save_pretrained(path)
    return path


def test_dry_run_never_writes_into_a_folder_that_holds_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from des4_hf_scripts.push_to_hub import main

    model_dir = _tiny_model_dir(tmp_path / "model")
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("my project\n")
    assert main(["--model", str(model_dir), "--repo-id", "me/des4", "--dry-run", str(project)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in project.iterdir()] == ["README.md"] and (project / "README.md").read_text() == "my project\n"
    assert main(["--model", str(model_dir), "--repo-id", "me/des4", "--dry-run", str(tmp_path / "new")]) == 0
    assert (tmp_path / "new" / "modeling_des4.py").is_file()
    (tmp_path / "a-file").write_text("")  # a staging folder that cannot be made: a local error, not the Hub's
    assert main(["--model", str(model_dir), "--repo-id", "me/des4", "--dry-run", str(tmp_path / "a-file" / "x")]) == 2
    error = capsys.readouterr().err
    last = error.strip().splitlines()[-1]  # after the loading progress bars
    assert last.startswith("des4-push-to-hub: error:") and "Hub" not in last and "Traceback" not in error
    with pytest.raises(FileExistsError):  # --debug: the traceback instead of the line
        main(["--model", str(model_dir), "--repo-id", "me/des4", "--dry-run", str(project), "--debug"])


@pytest.mark.slow  # starts processes; HF_ENDPOINT is read when huggingface_hub is imported
def test_an_unreachable_or_silent_hub_gives_one_line_and_exit_1(tmp_path: Path) -> None:
    import socket
    import time

    model_dir = _tiny_model_dir(tmp_path / "model")
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    try:
        for port, budget in ((closed.getsockname()[1], 60), (silent.getsockname()[1], 60)):
            env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_OFFLINE": "0", "HF_TOKEN": FAKE_TOKEN}
            started = time.monotonic()
            done = subprocess.run([sys.executable, "-c", "import sys; from des4_hf_scripts.push_to_hub import main; "
                                   f"sys.exit(main(['--model', {str(model_dir)!r}, '--repo-id', 'me/des4', "
                                   "'--timeout', '2']))"], env=env, capture_output=True, text=True, timeout=budget)
            assert done.returncode == 1, done.stderr[-2000:]
            assert "could not be reached" in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
            assert FAKE_TOKEN not in done.stderr + done.stdout
            assert time.monotonic() - started < budget
    finally:
        silent.close()
        closed.close()


@pytest.mark.parametrize("auto_class", ["AutoConfig", "AutoModelForSemanticSegmentation", "AutoImageProcessor"])
def test_auto_classes_take_short_names_and_explain_an_unavailable_one(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path, auto_class: str) -> None:
    import huggingface_hub.constants as hub_constants
    import transformers

    import des4_hf  # noqa: F401  (teaches the Auto classes the short names)

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv(NAMESPACE_ENV, raising=False)
    with pytest.raises(HubModelNotAvailableError, match="'des4-cityscapes' = Hub repo 'des4-hf/des4-cityscapes'"):
        getattr(transformers, auto_class).from_pretrained("des4-cityscapes", cache_dir=str(tmp_path / "empty"))
    with pytest.raises(OSError) as other:  # any other name is transformers' business, untouched
        getattr(transformers, auto_class).from_pretrained(str(tmp_path / "nowhere"))
    assert not isinstance(other.value, HubModelNotAvailableError)
