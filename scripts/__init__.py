"""The command-line programs (argparse and orchestration around :mod:`des4_hf`).

Run them as files (``python scripts/train.py``, ``accelerate launch scripts/train.py``) or through the console
entry points (``des4-train``...), for which this folder is installed as the package ``des4_hf_scripts``.
"""
