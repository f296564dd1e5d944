"""``main.py`` subcommands. Each module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.

Modules import torch and the heavier engine parts inside ``run`` only: ``predict`` must work with
onnxruntime alone, and ``--help`` should be instant.
"""

NAMES = ("layers", "train", "evaluate", "explain", "export", "predict", "runs", "diff", "script")
