#!/usr/bin/env python
"""Upload a trained DeS4 model with its model card to the Hugging Face Hub, in one commit (``des4_hf.publish``).

    python scripts/push_to_hub.py --model out/best --repo-id <user>/des4-voc-aug --results eval.json \\
        --example-image street.jpg [--private] [--revision BRANCH] [--commit-message MSG] [--dry-run DIR]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from des4_hf.hub_names import is_network_error
from des4_hf.publish import push_to_hub, stage_model_repo, stage_space, validate_revision


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
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the Hub to connect and for each read or write (default 60)")
    parser.add_argument("--dry-run", default=None, metavar="DIR",
                        help="write the folder that would be uploaded (model files, README.md, images) to DIR and stop")
    parser.add_argument("--space", default=None, metavar="SPACE_ID",
                        help="also create or update this Gradio Space (<user>/<name>): the web demo serving --repo-id")
    parser.add_argument("--space-dir", default=None, metavar="DIR",
                        help="write the Space folder (app.py, requirements.txt, README.md) to DIR; with --dry-run "
                             "nothing is uploaded")
    parser.add_argument("--space-requirement", default=None, metavar="SPEC",
                        help="how the Space installs des4-hf (default: the Space carries a copy of des4_hf and lists its "
                             "requirements); "
                             "e.g. 'des4-hf[demo] @ git+https://github.com/<you>/des4-hf'")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``des4-push-to-hub``: upload a trained model with its model card."""
    args = push_to_hub_parser().parse_args(argv)
    try:
        if args.space_dir is not None and args.space is None:
            raise ValueError("--space-dir needs --space <user>/<name> (the Space the folder is for)")
        if args.space_dir is not None:  # written first: a bad folder is refused before anything is uploaded
            space = stage_space(args.space_dir, args.repo_id, args.space, args.space_requirement)
            print(f"staged the Space {args.space} in {space}")
        if args.dry_run is not None:
            validate_revision(args.revision)
            staged = stage_model_repo(args.model, args.dry_run, args.repo_id, args.results, args.example_image)
            names = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
            print(f"staged {names} in {staged}")
            return 0
        url = push_to_hub(args.model, args.repo_id, results=args.results, private=args.private, revision=args.revision,
                          commit_message=args.commit_message, example_image=args.example_image, timeout=args.timeout,
                          space=args.space, space_requirement=args.space_requirement)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        if args.debug:
            raise
        print(f"des4-push-to-hub: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # the texts of huggingface_hub's errors never hold the token
        from huggingface_hub import constants
        from huggingface_hub.errors import HfHubHTTPError

        if args.debug:
            raise
        if is_network_error(error):
            print(f"des4-push-to-hub: the Hub at {constants.ENDPOINT} could not be reached ({type(error).__name__}: "
                  f"{error}). Nothing was uploaded. Check the network or HF_ENDPOINT, or raise --timeout.",
                  file=sys.stderr)
        elif isinstance(error, HfHubHTTPError):  # the Hub answered with a refusal
            print(f"des4-push-to-hub: the Hub refused the upload: {error}", file=sys.stderr)
        elif isinstance(error, OSError):  # a local file: the model folder, the staging folder, an image
            print(f"des4-push-to-hub: error: {error}", file=sys.stderr)
            return 2
        else:
            raise
        return 1
    print(f"uploaded to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
