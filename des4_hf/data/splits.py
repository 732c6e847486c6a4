"""Labeled / unlabeled partitions: the standard lists and seeded random splits.

The standard lists are U2PL's, on which the paper's tables were measured (Apache-2.0, ``split_lists/README.md``);
they ship inside the package, so ``from_name`` works offline. A random split is drawn from the *sorted* ids, so
it does not depend on row order; ``save()`` writes it beside the run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import datasets
import numpy as np

from .datasets import DataError, get_dataset_metadata, read_id_list

#: ``name → folder`` inside ``split_lists/`` (the paper's column in the comment).
STANDARD_SPLITS: dict[str, str] = {
    **{f"voc-blended-{n}": f"pascal/{n}" for n in (662, 1323, 2646, 5291)},  # VOC Aug 1/16 .. 1/2
    **{f"voc-classic-{n}": f"pascal/{n}" for n in (92, 183, 366, 732, 1464)},  # VOC Train 1/16 .. 1.4k
    **{f"cityscapes-{n}": f"cityscapes/{n}" for n in (186, 372, 744, 1488)},  # 1/16 .. 1/2
}
_ALIASES = {**{f"voc-aug-{n}": f"voc-blended-{n}" for n in (662, 1323, 2646, 5291)},
            **{f"voc-train-{n}": f"voc-classic-{n}" for n in (92, 183, 366, 732, 1464)}}


def split_lists_root() -> Path:
    """Folder of the packaged split lists (``des4_hf/data/split_lists``)."""
    return Path(str(resources.files("des4_hf.data") / "split_lists"))


def list_standard_splits() -> list[str]:
    """Names accepted by :meth:`SemiSupervisedSplit.from_name`."""
    return sorted(STANDARD_SPLITS)


@dataclass(frozen=True)
class SemiSupervisedSplit:
    """Which ids of the training set are labeled and which are used without their labels."""

    labeled_ids: tuple[str, ...]
    unlabeled_ids: tuple[str, ...]
    name: str = "custom"

    def __post_init__(self) -> None:
        object.__setattr__(self, "labeled_ids", tuple(self.labeled_ids))
        object.__setattr__(self, "unlabeled_ids", tuple(self.unlabeled_ids))
        if not self.labeled_ids:
            raise DataError(f"split {self.name!r} has no labeled ids. Fix: check labeled.txt / labeled=.")
        overlap = set(self.labeled_ids) & set(self.unlabeled_ids)
        if overlap:
            raise DataError(f"split {self.name!r}: {len(overlap)} ids are both labeled and unlabeled "
                            f"(e.g. {sorted(overlap)[:3]}). Fix: remove them from unlabeled.txt.")

    @classmethod
    def from_name(cls, name: str) -> SemiSupervisedSplit:
        """A standard split by name (``voc-blended-1323``, ``voc-classic-92``, ``cityscapes-744``...)."""
        canonical = _ALIASES.get(name, name)
        if canonical not in STANDARD_SPLITS:
            raise DataError(f"unknown split name {name!r}. Allowed: {list_standard_splits()} "
                            "(or SemiSupervisedSplit.from_file / .random).")
        split = cls.from_file(split_lists_root() / STANDARD_SPLITS[canonical])
        return cls(split.labeled_ids, split.unlabeled_ids, canonical)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SemiSupervisedSplit:
        """Read ``labeled.txt`` / ``unlabeled.txt`` (missing: none) from a folder; a relative path that does not
        exist is looked up in the packaged lists (``"pascal/1323"`` or ``"splits/pascal/1323"``)."""
        folder = Path(path)
        if not folder.is_dir() and not folder.is_absolute():
            parts = folder.parts[1:] if folder.parts[:1] in (("splits",), ("split_lists",)) else folder.parts
            if parts and split_lists_root().joinpath(*parts).is_dir():
                folder = split_lists_root().joinpath(*parts)
        labeled, unlabeled, meta = folder / "labeled.txt", folder / "unlabeled.txt", folder / "split.json"
        if not labeled.is_file():
            raise DataError(f"{labeled} does not exist. Fix: pass a folder holding labeled.txt (and unlabeled.txt), "
                            f"or a standard name: {list_standard_splits()}.")
        name = json.loads(meta.read_text()).get("name", folder.name) if meta.is_file() else folder.name
        return cls(read_id_list(labeled), read_id_list(unlabeled) if unlabeled.is_file() else (), name)

    @classmethod
    def random(cls, dataset_or_ids: datasets.Dataset | datasets.DatasetDict | Sequence[str],
               labeled: float | int = 1 / 8, seed: int = 0, name: str | None = None) -> SemiSupervisedSplit:
        """Seeded random split of the sorted ids; ``labeled``: a fraction in (0, 1) (rounded, at least 1) or a count."""
        ids = sorted(_ids_of(dataset_or_ids))
        if not ids:
            raise DataError("cannot split an empty dataset. Fix: check the training split.")
        if len(set(ids)) != len(ids):
            raise DataError("ids are not unique; a split would be ambiguous. Fix: give every row a unique id.")
        n = len(ids)
        if isinstance(labeled, float) and not labeled.is_integer():
            if not 0.0 < labeled < 1.0:
                raise DataError(f"labeled={labeled} must be a fraction in (0, 1) or a count in [1, {n}].")
            count = max(1, int(round(n * labeled)))
        else:
            count = int(labeled)
        if not 1 <= count <= n:
            raise DataError(f"labeled={labeled} asks for {count} labeled images out of {n}. Fix: use a count in "
                            f"[1, {n}] or a fraction.")
        order = np.random.default_rng(seed).permutation(n)
        return cls(tuple(ids[i] for i in sorted(order[:count])), tuple(ids[i] for i in sorted(order[count:])),
                   name or f"random-{count}-of-{n}-seed{seed}")

    @property
    def fingerprint(self) -> str:
        """Stable 16-hex hash of the two id sets (order-independent); used as a cache key."""
        h = hashlib.sha256()
        h.update("\n".join(sorted(self.labeled_ids)).encode())
        h.update(b"\0")
        h.update("\n".join(sorted(self.unlabeled_ids)).encode())
        return h.hexdigest()[:16]

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``labeled.txt``, ``unlabeled.txt`` and ``split.json`` (name, counts, fingerprint)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / "labeled.txt").write_text("\n".join(self.labeled_ids) + "\n")
        (out / "unlabeled.txt").write_text("\n".join(self.unlabeled_ids) + ("\n" if self.unlabeled_ids else ""))
        (out / "split.json").write_text(json.dumps({
            "name": self.name, "num_labeled": len(self.labeled_ids), "num_unlabeled": len(self.unlabeled_ids),
            "fingerprint": self.fingerprint}, indent=2) + "\n")
        return out

    def apply(self, dataset: datasets.Dataset | datasets.DatasetDict, unlabeled_includes_labeled: bool = False
              ) -> tuple[datasets.Dataset, datasets.Dataset]:
        """Rows selected by ``id``, in the lists' order: ``(labeled, unlabeled)`` (the latter without ``label``; with
        ``unlabeled_includes_labeled``, the labeled rows first); a ``DatasetDict`` is split on its ``"train"`` split."""
        if isinstance(dataset, datasets.DatasetDict):
            if "train" not in dataset:
                raise DataError(f"DatasetDict has no 'train' split (has {list(dataset)}). Fix: pass the split.")
            dataset = dataset["train"]
        if "id" not in dataset.column_names:
            raise DataError(f"split {self.name!r} selects rows by 'id', but the dataset has no id column (columns: "
                            f"{dataset.column_names}). Fix: load it with id_column=<column>, or use "
                            "SemiSupervisedSplit.random(dataset).")
        position = {id_: i for i, id_ in enumerate(dataset["id"])}
        missing = [i for i in (*self.labeled_ids, *self.unlabeled_ids) if i not in position]
        if missing:
            if get_dataset_metadata(dataset).get("ids_generated"):
                why = (" This dataset had no id column, so its ids were generated as '<split>-<row>' and cannot match "
                       "a list of image ids. Fix: load a copy with an id column (id_column=), or use "
                       "SemiSupervisedSplit.random(dataset).")
            elif self.name.startswith("voc-"):
                why = (" The VOC lists draw unlabeled ids from the 10,582 SBD-augmented set. Fix: load VOC with "
                       "SegmentationClassAug/ present (train_set='aug').")
            else:
                why = " Fix: use the split made for this dataset, or SemiSupervisedSplit.random(dataset)."
            raise DataError(f"split {self.name!r}: {len(missing)} of {len(self.labeled_ids) + len(self.unlabeled_ids)}"
                            f" ids are not in the dataset (e.g. {missing[:3]}).{why}")
        labeled = dataset.select([position[i] for i in self.labeled_ids])
        unlabeled_ids = (*self.labeled_ids, *self.unlabeled_ids) if unlabeled_includes_labeled else self.unlabeled_ids
        unlabeled = dataset.select([position[i] for i in unlabeled_ids])
        if "label" in unlabeled.column_names:
            unlabeled = unlabeled.remove_columns("label")
        return labeled, unlabeled

    def __repr__(self) -> str:
        return (f"SemiSupervisedSplit(name={self.name!r}, labeled={len(self.labeled_ids)}, "
                f"unlabeled={len(self.unlabeled_ids)}, fingerprint={self.fingerprint!r})")


def _ids_of(dataset_or_ids: datasets.Dataset | datasets.DatasetDict | Sequence[str]) -> list[str]:
    if isinstance(dataset_or_ids, datasets.DatasetDict):
        dataset_or_ids = dataset_or_ids["train"]
    if isinstance(dataset_or_ids, datasets.Dataset):
        if "id" not in dataset_or_ids.column_names:
            raise DataError("the dataset has no 'id' column. Fix: load it with load_segmentation_dataset (which "
                            "always adds one).")
        return list(dataset_or_ids["id"])
    return [str(i) for i in dataset_or_ids]
