#!/usr/bin/env python
"""Upload a trained DeS4 model with its model card to the Hugging Face Hub (see `des4_hf.hub`).

    python scripts/push_to_hub.py --model out/best --repo-id <user>/des4-voc-aug --results eval.json \
        --example-image street.jpg [--private] [--revision BRANCH] [--commit-message MSG]
"""

from des4_hf.cli import push_to_hub_main as main

if __name__ == "__main__":
    raise SystemExit(main())
