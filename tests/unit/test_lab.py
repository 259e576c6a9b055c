"""`make lab`: JupyterLab on the stage notebooks with the project's kernel, driven in headless chromium."""

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tunebook import paths, servers


@pytest.fixture
def lab(tmp_path):
    """`make lab` as the README runs it, told where to listen; its kernels write into a scratch workdir. Autosave is
    off, so the committed notebooks it opens stay without outputs."""
    settings = tmp_path / "settings" / "@jupyterlab" / "docmanager-extension"
    settings.mkdir(parents=True)
    (settings / "plugin.jupyterlab-settings").write_text('{"autosave": false}')
    port, token = servers.free_port(), secrets.token_hex(8)
    env = {**os.environ, "TUNEBOOK_WORKDIR": str(tmp_path)}
    log = (tmp_path / "lab.log").open("w")
    # -o install: the venv this test runs in is the installed one (`make test` installed it just before).
    command = [
        "make",
        "--no-print-directory",
        "-o",
        "install",
        "lab",
        f"VENV={sys.prefix}",
        f"LAB_ARGS=--no-browser --port={port} --IdentityProvider.token={token} --ServerApp.ip=127.0.0.1 "
        f"--LabApp.user_settings_dir={tmp_path / 'settings'} "
        f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
    ]
    process = subprocess.Popen(
        command, cwd=paths.project_root(), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if requests.get(f"{url}/api/status", params={"token": token}, timeout=2).ok:
                    break
            except requests.RequestException:  # not listening yet, or too busy starting to answer
                pass
            assert process.poll() is None, (tmp_path / "lab.log").read_text()
            time.sleep(0.25)
        else:
            pytest.fail("JupyterLab did not answer within a minute:\n" + (tmp_path / "lab.log").read_text())
        yield url, token
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # JupyterLab shuts its kernels down and stops
            for _ in range(80):  # until every process of the group (make, jupyter, kernels) is gone
                process.poll()  # make itself, reaped: a zombie would still count as one
                os.killpg(process.pid, 0)
                time.sleep(0.25)
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()


def test_make_lab_opens_the_notebooks_on_the_project_kernel(lab, chromium_page, tmp_path):
    url, token = lab
    specs = requests.get(f"{url}/api/kernelspecs", params={"token": token}, timeout=10).json()["kernelspecs"]
    # the kernel runs this very environment, where tunebook is installed
    assert Path(specs["tunebook"]["spec"]["argv"][0]).resolve() == Path(sys.executable).resolve()
    listing = requests.get(f"{url}/api/contents", params={"token": token}, timeout=10).json()["content"]
    assert {f"{name}.ipynb" for name in paths.NOTEBOOKS.values()} <= {item["name"] for item in listing}

    page = chromium_page
    page.goto(f"{url}/lab/tree/00_ingest.ipynb?reset&token={token}")  # no workspace but this notebook
    # the notebook opens on its own kernel, which starts and goes idle
    page.wait_for_selector(".jp-Toolbar-kernelName:has-text('Python (tunebook)')", state="attached", timeout=60_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
    # run the parameters cell, then ask the kernel where it would write: the workdir it was started with
    page.click(".jp-CodeCell .jp-InputArea-editor >> nth=0")
    page.keyboard.press("Shift+Enter")
    page.keyboard.press("Escape")
    page.keyboard.press("b")  # a new cell below
    page.keyboard.press("Enter")
    page.wait_for_selector(".jp-Cell.jp-mod-active .cm-editor.cm-focused", timeout=60_000)
    page.keyboard.type("from tunebook import paths; print(run_id, paths.workdir())")
    page.keyboard.press("Shift+Enter")
    output = page.wait_for_selector(".jp-OutputArea-output:has-text('demo')", timeout=60_000)
    assert output.inner_text().strip() == f"demo {tmp_path}"
    page.screenshot(path=tmp_path / "lab.png")
