"""nbval re-executes the reference notebooks in order (00 -> 06), each reading the previous one's
artifacts, so they share one scratch workdir. It is set here, at collection, before any kernel starts."""

import os
import tempfile

os.environ["TUNEBOOK_WORKDIR"] = tempfile.mkdtemp(prefix="tunebook-nbval-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_TINY_BUILT = []


def pytest_runtest_setup(item):
    """Before the first notebook after ingest, what `tunebook run` does there: build the run's tiny model from
    the chunks 00_ingest wrote and link it at data/runs/ci/tiny, the directory the references were given."""
    if _TINY_BUILT or item.path.name == "00_ingest.ipynb":
        return
    from tunebook import paths, tiny
    from tunebook.params import load_params

    tiny.resolve(load_params(paths.project_root() / "params" / "ci.yaml"), progress=False)
    _TINY_BUILT.append(True)
