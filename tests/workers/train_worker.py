"""Run a tiny training job and dump what each rank ends with (used by tests/test_trainer.py).

Launched under ``torchrun --nproc_per_node 2`` by the multi-process test: every rank writes its
prototypes, teacher weights and data shard to ``<output_dir>/rank<r>.safetensors`` / ``.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist
from des4_hf_scripts.train import parse_train_config as parse_config
from safetensors.torch import save_file

from des4_hf.training.trainer import Trainer


def main(argv: list[str]) -> None:
    config = parse_config(argv)
    trainer = Trainer(config)
    trainer.train()
    accelerator = trainer.accelerator
    model = accelerator.unwrap_model(trainer.model)
    rank = accelerator.process_index
    tensors = {f"teacher_encoder.{k}": v.detach().contiguous().clone() for k, v in model.teacher_encoder.state_dict().items()}
    tensors.update({f"teacher_decoder.{k}": v.detach().contiguous().clone() for k, v in model.teacher_decoder.state_dict().items()})
    tensors["prototypes"] = model.student.prototype_head.prototypes.detach().clone()
    tensors["initialized"] = model.student.prototype_head.initialized.detach().clone().to(dtype=tensors["prototypes"].dtype)
    out = Path(config.output_dir)
    save_file(tensors, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps({
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "labeled_shard": trainer.labeled_stream.epoch_indices(0),
        "unlabeled_shard": trainer.unlabeled_stream.epoch_indices(0) if trainer.unlabeled_stream else [],
    }))
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
