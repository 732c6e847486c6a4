#!/usr/bin/env python
"""Upload a trained DeS4 model with its model card to the Hugging Face Hub (see `des4_hf.hub`).

    python scripts/push_to_hub.py --model out/best --repo-id <user>/des4-voc-aug --results eval.json \
        --example-image street.jpg [--private] [--revision BRANCH] [--commit-message MSG]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from des4_hf.hub import push_to_hub, stage_model_repo, validate_revision


def push_to_hub_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="des4-push-to-hub", description="Upload a trained DeS4 model with a model "
                                     "card (results, per-class IoU chart, example) to the Hub. The token comes from "
                                     "HF_TOKEN or `hf auth login`.")
    parser.add_argument("--model", required=True, help="model directory written by training (e.g. out/best)")
    parser.add_argument("--repo-id", required=True, help="<user-or-org>/<name>, e.g. my-user/des4-voc-aug")
    parser.add_argument("--results", action="append", default=None, metavar="EVAL_JSON",
                        help="evaluation JSON written by scripts/evaluate.py (repeat for several datasets/splits)")
    parser.add_argument("--example-image", default=None, help="an image to show the model's prediction on")
    parser.add_argument("--private", action="store_true", help="create the repo as private (ignored if it exists)")
    parser.add_argument("--revision", default=None, help="branch to upload to (created if missing; default main)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--dry-run", default=None, metavar="DIR",
                        help="write the folder that would be uploaded (model files, README.md, images) to DIR and stop")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``des4-push-to-hub``: upload a trained model with its model card."""
    args = push_to_hub_parser().parse_args(argv)
    try:
        if args.dry_run is not None:
            validate_revision(args.revision)
            staged = stage_model_repo(args.model, args.dry_run, args.repo_id, args.results, args.example_image)
            names = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
            print(f"staged {names} in {staged}")
            return 0
        url = push_to_hub(args.model, args.repo_id, results=args.results, private=args.private, revision=args.revision,
                          commit_message=args.commit_message, example_image=args.example_image)
    except (ValueError, FileNotFoundError) as error:
        print(f"des4-push-to-hub: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # huggingface_hub HTTP errors are OSErrors; their text never holds the token
        print(f"des4-push-to-hub: the Hub refused or could not be reached: {error}", file=sys.stderr)
        return 1
    print(f"uploaded to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
