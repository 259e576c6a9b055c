"""The `tunebook` command: a thin layer over params, plan, runner and reports."""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from tunebook import paths
from tunebook.params import ParamsError, load_params

EXIT_BAD_INPUT = 2
EXIT_OVER_BUDGET = 3


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Imported once the command line parses: `--help` and a typo answer at once, without loading torch.
    from tunebook import runner

    try:
        return args.command(args)
    except (ParamsError, runner.RunError) as err:
        print(f"tunebook: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT if isinstance(err, ParamsError) else 1
    except OSError as err:
        # A full disk or a missing permission is the machine's problem, not a bug: one line, no traceback.
        print(f"tunebook: {args.name} failed ({_os_error(err)})", file=sys.stderr)
        return 1


def _os_error(err: OSError) -> str:
    """`ENOSPC: No space left on device, /path/to/file`, or the message of an OSError raised without an errno."""
    if err.errno is None:
        return str(err)
    where = "".join(f", {name}" for name in (err.filename, err.filename2) if name is not None)
    return f"{errno.errorcode.get(err.errno, err.errno)}: {err.strerror}{where}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunebook", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND", dest="name")

    run = sub.add_parser("run", help="execute the stage notebooks of a params file")
    _params_args(run)
    run.add_argument("--force", action="store_true", help="re-run stages even if cached")
    run.add_argument("--confirm", action="store_true", help="run even if the plan exceeds run.budget")
    run.add_argument("--show-code", action="store_true", help="include code cells in the HTML reports")
    run.set_defaults(command=_run)

    dry = sub.add_parser("plan", help="validate, list stages and cache hits, estimate cost; runs nothing")
    _params_args(dry)
    _sweep_args(dry)
    dry.add_argument("--sweep", action="store_true", help="plan the sweep of the params' sweep: section")
    dry.set_defaults(command=_plan)

    sweep = sub.add_parser("sweep", help="run variants of a params file (a grid, or a search), locally or on Ray")
    _params_args(sweep)
    _sweep_args(sweep)
    sweep.add_argument("--jobs", type=int, default=1, metavar="N", help="variants at a time (default 1)")
    sweep.add_argument("--ray", metavar="ADDRESS", help="run the variants on a Ray cluster: auto, or host:port")
    sweep.add_argument("--resume", action="store_true", help="re-run only the variants that did not complete")
    sweep.add_argument("--confirm", action="store_true", help="run even if the total plan exceeds run.budget")
    sweep.add_argument("--show-code", action="store_true", help="include code cells in the HTML reports")
    sweep.set_defaults(command=_sweep)

    runs = sub.add_parser("runs", help="list runs with status, stage reached and headline metrics")
    runs.set_defaults(command=_runs)

    compare = sub.add_parser("compare", help="an HTML diff of runs: params, and metrics side by side with CIs")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="two or more runs; the first is the one compared with")
    compare.set_defaults(command=_compare)
    return parser


def _params_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("params", type=Path, help="a params YAML file, e.g. params/demo.yaml")
    parser.add_argument("--stages", help="comma-separated stages to run (default: all)")
    parser.add_argument("--from", dest="from_stage", metavar="STAGE", help="run from this stage onwards")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a param"
    )


def _sweep_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--grid", action="append", default=[], metavar="KEY.PATH=V1,V2", help="sweep a key over values (repeatable)"
    )
    parser.add_argument("--trials", type=int, metavar="N", help="draw N variants from sweep.search's ranges")
    parser.add_argument("--sampler", choices=["random", "optuna"], help="how trials are drawn (default random)")
    parser.add_argument("--metric", help="the target metric: SCORE of the final model, or SYSTEM.SCORE (default f1)")
    parser.add_argument("--id", dest="sweep_id", help="the sweep's id, which its variants' ids start with (run.id)")


def _selected(args: argparse.Namespace) -> list[str]:
    from tunebook import runner

    return runner.select_stages(args.stages.split(",") if args.stages else None, args.from_stage)


def _prepare_sweep(args: argparse.Namespace):
    from tunebook import sweep

    spec = sweep.load_sweep(
        args.params, args.overrides, _selected(args), args.grid, args.trials, args.sampler, args.metric, args.sweep_id
    )
    todo, record = sweep.to_run(spec, getattr(args, "resume", False))
    sweep_plan = sweep.plan_sweep(spec, todo)
    print(sweep_plan.format(spec, getattr(args, "jobs", 1)))
    return spec, todo, record, sweep_plan


def _prepare(args: argparse.Namespace):
    from tunebook import plan, runner, tiny

    params = load_params(args.params, args.overrides)
    selected = _selected(args)
    # The offline tiny model is built by the run, so it is planned from its params: its config and pre-training.
    estimate = plan.estimate(params, args.params, *tiny.plan_inputs(params))
    stages = runner.plan_stages(params, selected, getattr(args, "force", False))
    print(f"run {params.run.id} ({args.params}): {runner.describe(stages)}")
    print(plan.format_plan(estimate))
    return params, selected, estimate


def _plan(args: argparse.Namespace) -> int:
    if args.sweep or args.grid or args.trials:
        _prepare_sweep(args)
    else:
        _prepare(args)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from tunebook import sweep

    if args.jobs < 1:
        raise ParamsError(f"--jobs {args.jobs}: give 1 or more")
    spec, todo, record, sweep_plan = _prepare_sweep(args)
    if sweep_plan.total.over_budget and not args.confirm:
        print(
            "tunebook: the sweep's total estimate exceeds run.budget; re-run with --confirm to go ahead",
            file=sys.stderr,
        )
        return EXIT_OVER_BUDGET
    record = sweep.run_sweep(spec, todo, record, sweep_plan, args.jobs, args.ray, args.show_code)
    failed = [entry["id"] for entry in record["variants"] if entry["status"] != "completed"]
    done = len(record["variants"]) - len(failed)
    print(f"sweep {spec.id}: {done} completed, {len(failed)} failed" + (f" ({', '.join(failed)})" if failed else ""))
    print(f"report: {record['page']}")
    if failed:
        print(f"tunebook: re-run the failed variants with `tunebook sweep {args.params} ... --resume`", file=sys.stderr)
    return 1 if failed else 0


def _run(args: argparse.Namespace) -> int:
    from tunebook import runner

    params, selected, estimate = _prepare(args)
    if estimate.over_budget and not args.confirm:
        print("tunebook: the estimate exceeds run.budget; re-run with --confirm to go ahead", file=sys.stderr)
        return EXIT_OVER_BUDGET
    manifest = runner.run_pipeline(
        params, args.params, selected, force=args.force, show_code=args.show_code, overrides=args.overrides
    )
    print(f"run {manifest['run_id']}: {manifest['status']}")
    print(f"report: {paths.reports_dir() / 'index.html'}")
    return 0


def _runs(args: argparse.Namespace) -> int:
    from tunebook import reports

    table = reports.runs_table().astype(str)
    if table.empty:
        print("no runs yet")
        return 0
    # Left-aligned columns: the metrics column is long text, which pandas would push to the right edge.
    widths = {column: max(len(column), table[column].str.len().max()) for column in table}
    for row in [dict(zip(table, table, strict=True)), *table.to_dict("records")]:
        print("  ".join(f"{row[column]:<{width}}" for column, width in widths.items()).rstrip())
    return 0


def _compare(args: argparse.Namespace) -> int:
    from tunebook.compare import compare_runs

    print(f"comparison: {compare_runs(args.runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
