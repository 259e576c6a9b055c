"""Every command the README shows is exercised: by a test named here, or by a test in this file. A command added
to the README without saying where it is exercised fails the first test."""

import ast
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from tunebook import export, paths

ROOT = paths.project_root()
README = (ROOT / "README.md").read_text()
COMMAND_WORDS = (
    "make ",
    "tunebook ",
    "papermill ",
    "python ",
    "pip ",
    "source ",
    "chroma ",
    "ollama ",
    "vllm ",
    "accelerate ",
    "jupyter ",
    "rm ",
    "cd ",
)

# README command: where it is exercised ("FILE::TEST", a test in tests/unit; "here::TEST", this file).
EXERCISED = {
    "make demo": [
        "test_pipeline.py::test_run_completes_with_reports_and_manifest",
        "test_plan.py::test_demo_is_within_budget",
    ],
    "make test": ["here::test_ci_runs_make_test"],
    "make install": ["here::test_make_install_puts_torch_first_with_the_given_index"],
    'make install TORCH_SPEC=torch==2.13.0 TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu128"': [
        "here::test_make_install_puts_torch_first_with_the_given_index"
    ],
    "rm -r .cache/llama.cpp/wheels": ["here::test_llama_cpp_is_rebuilt_with_the_given_cmake_args"],
    "make lint": ["here::test_make_lint_format_golden_and_bench_run_what_the_readme_says"],
    "make format": ["here::test_make_lint_format_golden_and_bench_run_what_the_readme_says"],
    "make golden": ["here::test_make_lint_format_golden_and_bench_run_what_the_readme_says"],
    "make bench": ["here::test_make_lint_format_golden_and_bench_run_what_the_readme_says"],
    "make lab": ["test_lab.py::test_make_lab_opens_the_notebooks_on_the_project_kernel"],
    'make lab LAB_ARGS="--no-browser --port 8890"': [
        "test_lab.py::test_make_lab_opens_the_notebooks_on_the_project_kernel"
    ],
    "source .venv/bin/activate": ["here::test_the_activated_environment_has_the_cli"],
    "tunebook plan": ["test_plan.py::test_run_stops_at_the_budget_gate_without_confirm"],
    "tunebook plan params/demo.yaml": ["test_plan.py::test_demo_is_within_budget"],
    "tunebook plan params/examples/llama3-8b-qlora.yaml": ["test_plan.py::test_gpu_recipe_estimate_is_realistic"],
    "tunebook run": ["test_pipeline.py::test_run_completes_with_reports_and_manifest"],
    "tunebook run PARAMS": ["test_pipeline.py::test_run_completes_with_reports_and_manifest"],
    "tunebook run params/demo.yaml --set run.id=r8 --set sft.lora.r=8": [
        "test_secrets.py::test_a_canary_key_used_by_a_campaign_and_an_evaluation_is_written_nowhere",
        "test_pipeline.py::test_changed_param_reruns_that_stage_and_downstream_only",
    ],
    'tunebook run params/demo.yaml --set run.id=nomix --set "sft.mix=[]"': [
        "test_mix.py::test_the_demo_runs_without_the_mix_by_one_override"
    ],
    "tunebook sweep": ["test_sweep_runs.py::test_a_4_variant_grid_runs_ingest_and_generate_once"],
    "tunebook plan params/demo.yaml --grid sft.lora.r=8,16 --grid sft.trainer.learning_rate=1e-4,2e-4": [
        "test_sweep.py::test_the_plan_counts_shared_work_once_and_the_gate_applies_to_the_total"
    ],
    "tunebook sweep params/demo.yaml --grid sft.lora.r=8,16 --grid sft.trainer.learning_rate=1e-4,2e-4 --jobs 2": [
        "test_sweep_runs.py::test_a_4_variant_grid_runs_ingest_and_generate_once"
    ],
    "tunebook sweep params/demo.yaml --trials 8 --sampler optuna --metric sft.f1": [
        "test_sweep_runs.py::test_an_optuna_search_on_a_ray_cluster_asks_each_trial_as_a_worker_frees",
        "test_sweep.py::test_the_demo_params_declare_a_search",
    ],
    "tunebook sweep params/demo.yaml --grid sft.lora.r=8,16 --ray auto": [
        "test_sweep_runs.py::test_an_optuna_search_on_a_ray_cluster_asks_each_trial_as_a_worker_frees"
    ],
    "tunebook sweep params/demo.yaml --grid sft.lora.r=8,16 --resume": [
        "test_sweep_runs.py::test_a_failed_variant_is_recorded_at_its_stage_and_cell_and_resume_reruns_it_alone"
    ],
    "tunebook plan PARAMS --sweep": ["test_sweep.py::test_the_demo_params_declare_a_search"],
    "tunebook compare A B C ...": [
        "test_compare.py::test_compare_takes_n_runs_each_against_the_first_with_holm_corrected_p_values"
    ],
    "tunebook compare demo r8 r16": [
        "test_compare.py::test_compare_takes_n_runs_each_against_the_first_with_holm_corrected_p_values"
    ],
    "tunebook compare demo nomix": [
        "test_compare.py::test_compare_diffs_params_and_sets_the_runs_side_by_side_with_paired_cis"
    ],
    "tunebook run params/demo.yaml --from evaluate": [
        "test_pipeline.py::test_failure_names_stage_and_cell_then_from_resumes"
    ],
    "tunebook run PARAMS --from sft": [
        "test_pipeline.py::test_failure_names_stage_and_cell_then_from_resumes",
        "test_sft.py::test_training_killed_at_5_random_points_resumes_and_ends_where_an_uninterrupted_run_ends",
    ],
    "tunebook run PARAMS --from generate": [
        "test_campaign_server.py::test_killed_at_5_random_points_then_resumed_loses_nothing_and_sends_nothing_twice"
    ],
    "tunebook run params/demo.yaml --show-code": ["test_pipeline.py::test_show_code_keeps_inputs"],
    "tunebook runs": ["test_pipeline.py::test_runs_lists_the_run"],
    "tunebook compare demo r8": [
        "test_compare.py::test_compare_diffs_params_and_sets_the_runs_side_by_side_with_paired_cis"
    ],
    "papermill notebooks/03_evaluate.ipynb /tmp/eval.ipynb -p max_examples 20": [
        "test_pipeline.py::test_plain_papermill_runs_a_stage_notebook"
    ],
    "chroma run --path DIR": ["test_chroma_server.py::test_ingest_and_generate_stages_run_on_the_server"],
    "accelerate launch": ["test_sft.py::test_two_process_data_parallel_matches_one_process"],
    # DeepSpeed is installed by GPU users only; the configs it reads are checked by accelerate here.
    "pip install deepspeed": ["test_sft.py::test_the_shipped_accelerate_configs_are_valid"],
    # vLLM needs a GPU: RL's switch to it is a GRPOConfig field, checked against TRL's config here.
    "pip install vllm": ["test_rl.py::test_vllm_generation_is_a_trainer_switch"],
    # lm-eval's vLLM backend needs a GPU: the same task files run through its HF model class here.
    'pip install "lm-eval[vllm]"': [
        "test_general.py::test_lm_eval_runs_offline_on_the_shipped_task_for_base_and_adapter_and_equals_a_direct_call"
    ],
    # The serving commands are the ones the export prints; llama.cpp's server runs in tests, while vLLM and Ollama
    # cannot run on this machine (no GPU, no Go): the Modelfile they read is checked by rendering it.
    "cd data/runs/demo/export/gguf && ollama create tunebook-demo -f Modelfile && ollama run tunebook-demo": [
        "here::test_the_serving_commands_are_the_ones_the_export_prints",
        "test_gguf.py::test_the_modelfile_template_renders_the_chat_template_and_stops_at_the_end_of_turn",
    ],
    "vllm serve data/runs/demo/export/merged --served-model-name tunebook-demo --generation-config auto": [
        "here::test_the_serving_commands_are_the_ones_the_export_prints"
    ],
    "vllm serve BASE --enable-lora --lora-modules tunebook-demo=data/runs/demo/rl/adapter": [
        "here::test_the_serving_commands_are_the_ones_the_export_prints"
    ],
    (
        "python -m llama_cpp.server --model data/runs/demo/export/gguf/tunebook-demo-f16.gguf "
        "--model_alias tunebook-demo"
    ): [
        "here::test_the_serving_commands_are_the_ones_the_export_prints",
        "test_gguf.py::test_the_evaluate_module_runs_against_llama_cpp_serving_the_export",
    ],
}


def readme_commands() -> set[str]:
    """Lines of the bash blocks (comments dropped) and inline code spans that start with a command."""
    found = set()
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        found.update(re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines())
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    found.update(span for span in re.findall(r"`([^`\n]+)`", prose) if span.startswith(COMMAND_WORDS))
    return found - {""}


def test_every_readme_command_is_exercised():
    commands = readme_commands()
    assert commands - EXERCISED.keys() == set(), "README commands nobody exercises: say where in EXERCISED"
    assert EXERCISED.keys() - commands == set(), "EXERCISED names commands the README no longer shows"
    defined = {}
    for where in {where for places in EXERCISED.values() for where in places}:
        name, test = where.split("::")
        path = Path(__file__) if name == "here" else Path(__file__).with_name(name)
        if path not in defined:
            defined[path] = {
                node.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)
            }
        assert test in defined[path], f"{where} is not a test"


def make(*args: str) -> str:
    """What make would run (-n: print, run nothing; -B: as if nothing were built yet)."""
    done = subprocess.run(["make", "-n", "-B", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.replace("\\\n", " ")  # one line per command


def test_ci_runs_make_test():
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[-1] == "make test"


def test_make_install_puts_torch_first_with_the_given_index():
    index = "--index-url https://download.pytorch.org/whl/cu128"
    lines = make("install", "TORCH_SPEC=torch==2.13.0", f"TORCH_PIP_ARGS={index}").splitlines()
    torch = next(i for i, line in enumerate(lines) if f"install --quiet torch==2.13.0 {index}" in line)
    project = next(i for i, line in enumerate(lines) if "-e '.[dev,gguf]'" in line)
    assert torch < project  # torch first, so no dependency pulls another build of it


def test_llama_cpp_is_rebuilt_with_the_given_cmake_args():
    wheel = next(
        line for line in make("install", "LLAMA_CMAKE_ARGS=-DGGML_CUDA=on").splitlines() if "pip wheel" in line
    )
    assert 'CMAKE_ARGS="-DGGML_CUDA=on ' in wheel


def test_make_lint_format_golden_and_bench_run_what_the_readme_says():
    assert "ruff check ." in make("lint") and "ruff format --check ." in make("lint")
    assert "ruff check --fix ." in make("format") and "ruff format ." in make("format")
    golden = make("golden")
    assert "tunebook run params/ci.yaml --force" in golden and "tests/nbval/" in golden
    assert "benchmarks/bench_*.py" in make("bench")
    # each benchmark's latest summary is committed under reports/bench/
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        assert (ROOT / "reports" / "bench" / f"{script.stem.removeprefix('bench_')}.json").is_file(), script.name


def test_the_activated_environment_has_the_cli():
    activate = Path(sys.prefix) / "bin" / "activate"
    done = subprocess.run(["bash", "-c", f"source {activate} && tunebook --help"], capture_output=True, text=True)
    assert done.returncode == 0 and "compare" in done.stdout


def test_the_serving_commands_are_the_ones_the_export_prints():
    run = Path("data/runs/demo")
    gguf = run / "export" / "gguf"
    printed = export.serving_commands(
        run / "export" / "merged",
        SimpleNamespace(base_model="BASE", adapter_dir=run / "rl" / "adapter"),
        "tunebook-demo",
        {"f16": gguf / "tunebook-demo-f16.gguf"},
        gguf / "Modelfile",
    )
    shown = {command for command in readme_commands() if command.startswith(("cd ", "vllm ", "python -m llama_cpp"))}
    assert len(shown) == 4 and shown <= set(printed.values())
