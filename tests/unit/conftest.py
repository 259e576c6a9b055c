import os

import pytest

# No model hub here: anything that tries to download must fail loudly instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def workdir(tmp_path, monkeypatch):
    """Every test writes data/ and reports/ into its own temporary workdir."""
    monkeypatch.setenv("TUNEBOOK_WORKDIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def checkout_workdir(monkeypatch):
    """The checkout as workdir, as for a user running from it: the example recipe's paths are relative to it.
    Only for read-only tests (validation and planning)."""
    from tunebook import paths

    monkeypatch.setenv("TUNEBOOK_WORKDIR", str(paths.project_root()))
    return paths.project_root()
