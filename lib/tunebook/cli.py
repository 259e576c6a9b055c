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
    dry.set_defaults(command=_plan)

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


def _prepare(args: argparse.Namespace):
    from tunebook import plan, runner, tiny

    params = load_params(args.params, args.overrides)
    selected = runner.select_stages(args.stages.split(",") if args.stages else None, args.from_stage)
    # The offline tiny model is built by the run, so it is planned from its params: its config and pre-training.
    estimate = plan.estimate(params, args.params, *tiny.plan_inputs(params))
    stages = runner.plan_stages(params, selected, getattr(args, "force", False))
    print(f"run {params.run.id} ({args.params}): " + ", ".join(f"{s.stage} [{s.label}]" for s in stages))
    print(plan.format_plan(estimate))
    return params, selected, estimate


def _plan(args: argparse.Namespace) -> int:
    _prepare(args)
    return 0


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
