"""Which folders des4-train may continue or empty (issue 34, problem 4): only a run folder proved by its marker,
holding only what training writes; a refused claim or a run that never started leaves the folder as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from des4_hf.training.run_folder import (
    LOCK_NAME,
    MARKER,
    OutputDirError,
    claim_output_dir,
    read_marker,
    write_marker,
)

TINY = ["--backbone", "test_resnet", "--encoder-weights", "none", "--decoder-channels", "16", "--crop-size", "48",
        "--batch-size", "2", "--num-workers", "0", "--max-steps", "2", "--dataset", "camvid"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _train(folder: Path, *extra: str) -> int:
    from des4_hf_scripts.train import main

    return main([*TINY, "--data-root", str(folder.parent / "no-such-data"), "--output-dir", str(folder), *extra])


def test_a_refused_run_then_overwrite_leaves_the_users_file(tmp_path, capsys):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.txt").write_text("four years of work")
    before = _snapshot(thesis)
    assert _train(thesis) == 2  # refused: the folder holds files
    assert sorted(p.name for p in thesis.iterdir()) == ["thesis.txt"]  # no lock left behind to count as proof
    for _ in range(2):  # --overwrite twice in a row
        assert _train(thesis, "--overwrite") == 2
        assert _snapshot(thesis) == before
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("des4-train: ")]
    assert len(lines) == 3 and "already holds files (thesis.txt)" in lines[0]
    assert "no record of a des4-train run" in lines[1] and "nothing is changed" in lines[1]


def test_a_lock_or_a_train_config_alone_proves_nothing(tmp_path):
    for planted in (LOCK_NAME, "train_config.yaml"):
        folder = tmp_path / planted.strip(".")
        folder.mkdir()
        (folder / planted).write_text("")
        (folder / "thesis.txt").write_text("mine")
        with pytest.raises(OutputDirError, match="no record of a des4-train run"):
            claim_output_dir(folder, resuming=False, overwrite=True)
        assert (folder / "thesis.txt").read_text() == "mine"


def test_resume_into_a_folder_that_holds_no_run_changes_nothing(tmp_path):
    folder = tmp_path / "notes"
    (folder / "best").mkdir(parents=True)
    (folder / "log.jsonl").write_text('{"step": 1}\n')
    (folder / "best" / "notes.txt").write_text("mine")
    before = _snapshot(folder)
    assert _train(folder, "--resume", "latest") == 2
    assert _snapshot(folder) == before and not (folder / LOCK_NAME).exists()
    write_marker(folder)  # a run folder, but with a file training never writes
    (folder / "thesis.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=r"did not write \(thesis.txt\)"):
        claim_output_dir(folder, resuming=True, overwrite=False)


def test_overwrite_empties_a_proved_run_folder_and_keeps_no_stale_marker(tmp_path):
    folder = tmp_path / "run"
    (folder / "checkpoints" / "checkpoint_0").mkdir(parents=True)
    (folder / "log.jsonl").write_text("{}\n")
    run_id = write_marker(folder)
    assert read_marker(folder)["run_id"] == run_id and write_marker(folder) == run_id  # a resume keeps the id
    claim = claim_output_dir(folder, resuming=False, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]  # emptied, still locked by this claim
    with pytest.raises(OutputDirError, match="another training run is writing there"):
        claim_output_dir(folder, resuming=True, overwrite=False)
    claim.release()  # the new run never started (no marker): what the claim made goes too
    assert sorted(p.name for p in folder.iterdir()) == []


def test_a_forged_or_torn_marker_is_no_proof(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "log.jsonl").write_text("{}\n")
    for text in ("{", json.dumps({"tool": "other", "run_id": "x"}), json.dumps(["des4-train"])):
        (folder / MARKER).write_text(text)
        assert read_marker(folder) is None
        with pytest.raises(OutputDirError, match="no record of a des4-train run"):
            claim_output_dir(folder, resuming=False, overwrite=True)


def test_a_run_that_fails_before_it_starts_leaves_no_folder(tmp_path):
    folder = tmp_path / "new" / "run"
    assert _train(folder) == 2  # the data root does not exist
    assert not folder.exists()
