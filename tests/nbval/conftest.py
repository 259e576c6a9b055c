"""nbval re-executes the reference notebooks in order (00 -> 03), each reading the previous one's
artifacts, so they share one scratch workdir. It is set here, at collection, before any kernel starts."""

import os
import tempfile

os.environ["TUNEBOOK_WORKDIR"] = tempfile.mkdtemp(prefix="tunebook-nbval-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
