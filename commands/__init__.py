"""``main.py`` subcommands. Each module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.

Modules import torch and the heavier engine parts inside ``run`` only: ``predict`` must work with
onnxruntime alone, and ``--help`` should be instant. A name with a hyphen lives in the module with an
underscore (``lr-find``: ``commands/lr_find.py``).
"""

NAMES = ("layers", "train", "lr-find", "evaluate", "explain", "export", "predict", "runs", "diff", "script")
