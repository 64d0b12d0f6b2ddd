"""The `defcon` command line: list and show the catalog, check a combination.

Error handling lives in one place, `DefconGroup.main`: any `DefconError` raised by a command (and
any usage error typer detects) ends as a single `error: ...` line on stderr with exit code 2,
never a traceback. A new command only raises `DefconError`; it needs no handling of its own.
This module must not import torch: `defcon check` has to answer instantly.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from defcon.catalog import Catalog, load_catalog
from defcon.checker import TECHNIQUES, get_technique
from defcon.engine.settings import RunSettings
from defcon.errors import DefconError
from defcon.planning.orders import check_order_choice
from defcon.storage import writable_folder, writable_target
from defcon.terminal import console as safe_console
from defcon.terminal import say, warn

try:  # recent typer vendors click; older releases depend on it
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, NoArgsIsHelpError

USAGE_ERROR = 2


def fail(message: str, code: int = USAGE_ERROR) -> NoReturn:
    """Print one `error:` line on stderr and exit: the only way the CLI reports bad input."""
    say(f"error: {' '.join(message.split())}")
    raise SystemExit(code)


def run_script(main: Callable[[], int]) -> NoReturn:
    """The entry point of a `benchmarks/` script: `main`'s exit code, or for a `DefconError`
    the same one `error:` line and exit 2 as every CLI command, never a traceback."""
    try:
        code = main()
    except DefconError as error:
        show_cause(error)
        fail(str(error))
    raise SystemExit(code)


def show_cause(error: DefconError) -> None:
    """Under `defcon --debug`, the traceback of what user code raised (before the error line)."""
    from defcon.user_code import debugging

    if debugging() and error.__cause__ is not None:
        import traceback

        traceback.print_exception(error.__cause__, file=sys.stderr)


class DefconGroup(TyperGroup):
    """Maps `DefconError` and click's usage errors to `fail` for every command."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except DefconError as error:
            show_cause(error)
            fail(str(error), getattr(error, "exit_code", USAGE_ERROR))  # a signal: 128 + it
        except NoArgsIsHelpError as error:  # bare `defcon`: the help (rich prints it itself)
            if error.format_message().strip():
                print(error.format_message())
            raise SystemExit(0) from None
        except ClickException as error:
            fail(error.format_message(), error.exit_code)
        except typer.Abort:
            fail("aborted", 1)
        except OSError as error:  # e.g. a full disk or a permission problem outside storage.py
            where = f"'{error.filename}': " if error.filename else ""
            fail(f"{where}{error.strerror or error}")
        raise SystemExit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="defcon",
    cls=DefconGroup,
    help="Plan combinations of ML defenses without conflicts (Def\\Con).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from defcon import __version__

        print(f"defcon {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="When your model or defense code fails, print its traceback before the error.",
        ),
    ] = False,
) -> None:
    if debug:
        import os

        from defcon.user_code import DEBUG_ENV

        os.environ[DEBUG_ENV] = "1"  # bench workers inherit it


CatalogOption = Annotated[
    Path | None,
    typer.Option(
        "--catalog",
        metavar="FILE",
        help="A TOML/YAML/JSON file of your own defense specs, added to the built-in ones.",
        show_default=False,
    ),
]


def stdout() -> Console:
    """Rich console for results; at least 120 columns wide so tables stay readable when piped."""
    return safe_console(min_width=120)


def catalog_from(path: Path | None) -> Catalog:
    return load_catalog(path)


STDOUT = Path("-")
JsonOption = Annotated[
    Path | None,
    typer.Option(
        "--json",
        metavar="PATH",
        help="Write the result as JSON to PATH ('-': print it to stdout instead of the table).",
        show_default=False,
    ),
]


def emit_json(text: str, target: Path) -> None:
    """Print `text` (target '-') or write it atomically to `target` (checked beforehand)."""
    if target == STDOUT:
        print(text)
        return
    from defcon.storage import atomic_write_text

    atomic_write_text(writable_file(target, "--json"), text + "\n")


def check_outputs(out: Path, json_path: Path | None, cache: Path | None) -> None:
    """--out, --json and --cache checked before any training (one `error:` line each)."""
    writable_folder(out, "--out")
    if json_path is not None and json_path != STDOUT:
        writable_file(json_path, "--json")
    if cache is not None:
        writable_folder(cache, "--cache")


def present(
    record: Any, json_path: Path | None, print_table: Callable[[Any, Console], None]
) -> None:
    """The table on stdout, or with `--json -` the JSON alone on stdout and the table on
    stderr; `--json FILE` also writes the record there."""
    if json_path == STDOUT:
        print_table(record, safe_console(stderr=True, min_width=120))
    else:
        print_table(record, stdout())
    if json_path is not None:
        emit_json(record.model_dump_json(indent=2), json_path)


def option(kind: Any, *names: str, **info: Any) -> Any:
    """A typer option declaration (`Annotated[kind, typer.Option(...)]`)."""
    return Annotated[kind, typer.Option(*names, **info)]


# Every run option, declared once. A name is a `defcon.engine.settings.RunSettings` field (its default
# is the field's), except --set/--settings (read by `RunSettings.resolved`). compose, audit,
# bench and the pilot take them through `run_options`; a new option is one field there and one
# entry here.
RUN_OPTIONS: dict[str, Any] = {
    "dataset": option(
        str, "--dataset", "-d",
        help="digits (embedded), fmnist, adult, compas, or your own PATH.npz / PATH.csv.",
    ),
    "seeds": option(
        int, "--seeds", "-s", help="Seeds per arm, combination by combination (at least 1)."
    ),
    "max_seeds": option(
        int | None, "--max-seeds", show_default=False,
        help="Add seeds while a verdict is inconclusive, up to this many: read at looks "
        "that double the seeds, each stricter so the error rate holds (default: --seeds, "
        "no extra seeds).",
    ),
    "seed_start": option(int, "--seed-start", help="First seed (seeds are START, START+1, ...)."),
    "profile": option(
        str, "--profile", help="Run sizes: quick (CPU minutes), paper (GPU), tiny (tests)."
    ),
    "data_dir": option(
        Path | None, "--data-dir", help="Folder with the four Fashion-MNIST IDX files.",
        show_default=False,
    ),
    "catalog": CatalogOption,
    "model": option(
        str | None, "--model", metavar="MODULE:FACTORY", show_default=False,
        help="Your architecture: a function (input_shape, num_classes) -> torch nn.Module "
        "(default: defcon's CNN for images, MLP for tables).",
    ),
    "device": option(
        str, "--device", help="Where models compute: auto (a GPU when visible), cpu, cuda or cuda:N."
    ),
    "target": option(
        str | None, "--target", metavar="COL[:VALUE]", show_default=False,
        help="A CSV dataset's label column; COL:VALUE makes VALUE the positive class (1) of two.",
    ),
    "sensitive": option(
        str | None, "--sensitive", metavar="COL[:BINS]", show_default=False,
        help="A CSV dataset's sensitive-attribute column (for fairness defenses); bin a numeric "
        "one as COL:qN (N quantile groups) or COL:E1,E2 (cut at those values).",
    ),
    "kind": option(
        str | None, "--kind", show_default=False,
        help="image or tabular, where the shapes of a .npz dataset are ambiguous.",
    ),
    "epochs": option(
        int | None, "--epochs", help="Training epochs (default: the profile's).",
        show_default=False,
    ),
    "lr": option(
        float | None, "--lr", help="Learning rate (default: the profile's).", show_default=False
    ),
    "batch_size": option(
        int | None, "--batch-size", help="Batch size (default: the profile's).",
        show_default=False,
    ),
    "set_values": option(
        list[str] | None, "--set", metavar="NAME.FIELD=VALUE", show_default=False,
        help="A defense setting, e.g. dp_sgd.noise_multiplier=1.2 (repeatable; `defcon show "
        "NAME` lists them).",
    ),
    "settings_file": option(
        Path | None, "--settings", metavar="FILE.toml", show_default=False,
        help="Defense settings: one \\[NAME] table per defense (--set overrides it).",
    ),
}  # fmt: skip
SEED_OPTIONS = ("seeds", "max_seeds", "seed_start")


def run_options(*left_out: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command every run option of `RUN_OPTIONS` but `left_out`; it receives their values
    as one `options` mapping (for `checked_settings`) after its own parameters."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = [
            p
            for p in inspect.signature(command, eval_str=True).parameters.values()
            if p.name != "options"
        ]
        fields = RunSettings.model_fields
        shared = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=declared,
                default=fields[name].default if name in fields else None,
            )  # fmt: skip
            for name, declared in RUN_OPTIONS.items()
            if name not in left_out
        ]

        @functools.wraps(command)
        def with_options(**values: Any) -> None:
            options = {p.name: values.pop(p.name) for p in shared}
            command(options=options, **values)

        parameters = [*own, *shared]
        with_options.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        with_options.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_options

    return decorate


@app.command("list")
def list_command(catalog: CatalogOption = None) -> None:
    """List the defenses by stage: what each mitigates, uses and which slots it fills."""
    from defcon.cli.views import catalog_table

    stdout().print(catalog_table(catalog_from(catalog)))


@app.command("show")
def show_command(
    name: Annotated[str, typer.Argument(help="The defense to describe.", show_default=False)],
    catalog: CatalogOption = None,
    json_path: JsonOption = None,
) -> None:
    """Show everything a defense declares: risks with reasons, metrics, factors, threats."""
    spec = catalog_from(catalog)[name]
    if json_path is not None:
        emit_json(json.dumps(spec.model_dump(mode="json"), indent=2), json_path)
        if json_path == STDOUT:
            return
    from defcon.cli.views import spec_view

    stdout().print(spec_view(spec))
    if spec.implementation is not None:
        from defcon.cli.views import settings_table
        from defcon.engine.defense_settings import config_class

        stdout().print(settings_table(spec.name, config_class(spec.name, catalog_from(catalog))))


PILOT_OPTIONS = ("data_dir", "device", "epochs", "lr", "batch_size", "set_values", "settings_file")


@app.command("check")
@run_options(*(name for name in RUN_OPTIONS if name not in PILOT_OPTIONS))
def check_command(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Two or more defenses to combine.", show_default=False),
    ] = None,
    technique: Annotated[
        str,
        typer.Option(
            "--technique",
            "-t",
            help=f"Which technique predicts: {', '.join(TECHNIQUES)}, or pilot (it trains: "
            "a short run on a small slice of --dataset).",
        ),
    ] = "defcon",
    catalog: CatalogOption = None,
    json_path: JsonOption = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset", help="The dataset the pilot measures on (pilot only).", show_default=False
        ),
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option(
            "--cache",
            help="The pilot's model cache folder (default: defcon-runs/cache).",
            show_default=False,
        ),
    ] = None,
    data_kind: Annotated[
        str | None,
        typer.Option(
            "--data-kind",
            help="image or tabular: the data the combination runs on (factor claims scoped to "
            "other kinds are left out; without it such a label is reported uncertain).",
            show_default=False,
        ),
    ] = None,
    options: Mapping[str, Any] | None = None,
) -> None:
    """Predict whether a combination conflicts, and in which order to apply it."""
    given = dict(options or {})
    epochs, lr, batch_size = given["epochs"], given["lr"], given["batch_size"]
    set_values, settings_file = given["set_values"], given["settings_file"]
    catalog_specs = catalog_from(catalog)
    specs = catalog_specs.resolve(names or [])  # before a pilot loads any data
    for spec in specs:  # declared before anything trains: the pilot would measure nothing
        for declared in spec.not_applicable:
            typer.echo(
                f"note: '{spec.name}' is not applicable to {declared.kind} data: {declared.reason}",
                err=True,
            )
    if technique == "pilot":
        from defcon.measure.pilot import PILOT_PROFILE

        training = RunSettings.checked(epochs=epochs, lr=lr, batch_size=batch_size)
        trained_with = training.applied_to(PILOT_PROFILE)
        configs = defense_configs(set_values, settings_file, catalog_specs, echo=True)
        chosen: Any = pilot_technique(
            dataset,
            cache,
            given["data_dir"],
            given["device"],
            catalog_specs,
            trained_with,
            configs,
        )
    elif (
        dataset is not None
        or cache is not None
        or (epochs, lr, batch_size) != (None,) * 3
        or set_values
        or settings_file is not None
    ):
        raise DefconError(
            f"--dataset, --cache, --epochs, --lr, --batch-size, --set and --settings are read by "
            f"--technique pilot "
            f"only; '{technique}' reads declarations and trains nothing"
        )
    else:
        chosen = get_technique(technique)
    if json_path is not None and json_path != STDOUT:
        writable_file(json_path, "--json")
    from defcon.checker.api import check_kind, run_technique

    verdict = run_technique(chosen, specs, check_kind(data_kind, "--data-kind"))
    if json_path is not None:
        emit_json(json.dumps(verdict.model_dump(mode="json"), indent=2), json_path)
        if json_path == STDOUT:
            return
    from defcon.cli.views import verdict_view

    stdout().print(verdict_view(verdict))
    if not verdict.effective or not verdict.composable:
        print_alternatives(specs, catalog_specs, technique if technique != "pilot" else "defcon")


def print_alternatives(specs: Any, catalog_specs: Any, technique: str) -> None:
    """After a conflict: the planner's conflict-free combinations for the same risks."""
    from defcon.planning.planner import alternatives

    risks = frozenset().union(*(s.mitigates for s in specs))
    kept = alternatives(specs, catalog_specs, technique)
    out = stdout()
    if not kept:
        out.print("no conflict-free combination in the catalog covers the same risks", markup=False)
        return
    out.print(f"conflict-free alternatives for {', '.join(sorted(risks))}:", markup=False)
    for order in kept:
        out.print(f"  {' → '.join(order)}", markup=False)


@app.command("plan")
def plan_command(
    risks: Annotated[
        str, typer.Option("--risks", help="Comma-separated risks every plan must cover.")
    ],
    technique: Annotated[
        str,
        typer.Option(
            "--technique", "-t", help=f"Which technique predicts: {', '.join(TECHNIQUES)}."
        ),
    ] = "defcon",
    top: Annotated[int, typer.Option("--top", min=1, help="How many plans to print.")] = 5,
    catalog: CatalogOption = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="Leave out defenses that cannot run on this built-in dataset (not loaded).",
            show_default=False,
        ),
    ] = None,
    records: Annotated[
        Path | None,
        typer.Option(
            "--records",
            help="A folder of composition records: measured combinations rank by their evidence.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Rank conflict-free defense combinations that cover every named risk (trains nothing)."""
    from defcon.planning.evidence import builtin_facts, load_evidence
    from defcon.planning.planner import inapplicable, parse_risks, plan

    wanted = parse_risks(risks)
    specs = catalog_from(catalog)
    facts = builtin_facts(dataset) if dataset is not None else None
    evidence = load_evidence(records, dataset, say) if records is not None else None
    found = plan(wanted, specs, technique, data=facts, evidence=evidence)
    kept = [c for c in found if c.excluded is None]
    out = stdout()
    unusable = inapplicable(wanted, specs, facts) if facts is not None else {}
    for name, why in unusable.items():
        out.print(f"not applicable: {name}: {why}", markup=False, soft_wrap=True)
    if not found:
        usable = [s for s in specs.values() if s.name not in unusable]
        bare = sorted(wanted - frozenset().union(*(s.mitigates for s in usable)))
        where = f" applicable to {dataset}" if dataset is not None else " in the catalog"
        raise DefconError(f"no defense{where} covers {', '.join(bare)}")
    out.print(f"{len(kept)} plan(s) cover {', '.join(sorted(wanted))} ({technique}):", markup=False)
    for rank, cand in enumerate(kept[:top], 1):
        out.print(f"  {rank}. {' → '.join(cand.order)}", markup=False)
        if cand.evidence is not None:
            out.print(f"     {cand.evidence.sentence()}", markup=False, soft_wrap=True)
    for cand in found:
        if cand.excluded is not None:
            line = f"  excluded {' + '.join(cand.defenses)}: {cand.excluded}"
            out.print(line, markup=False, soft_wrap=True)


def pilot_technique(
    dataset: str | None,
    cache: Path | None,
    data_dir: Path | None,
    device: str,
    specs: Any,
    profile: Any = None,
    configs: Any = None,
) -> Any:
    """The pilot technique on `dataset`, its options checked before anything trains."""
    if dataset is None:
        from defcon.planning.dataset_info import datasets

        raise DefconError(
            "--technique pilot measures the combination on a small slice of a dataset; give "
            f"--dataset NAME ({', '.join(datasets())}, or a .npz/.csv file)"
        )
    cache = cache or Path("defcon-runs/cache")
    writable_folder(cache, "--cache")
    from defcon.engine.devices import resolve_device
    from defcon.measure.pilot import PilotTechnique

    chosen_device = resolve_device(device)
    return PilotTechnique(
        RunSettings(dataset=dataset).source(), cache_dir=cache, data_dir=data_dir,
        catalog=specs, device=chosen_device, configs=configs,
        **({"profile": profile} if profile else {}),
    )  # fmt: skip


@app.command("datasets")
def datasets_command(json_path: JsonOption = None) -> None:
    """List the built-in datasets, where their data comes from, and how to bring Fashion-MNIST."""
    from defcon.planning.dataset_info import datasets, fmnist_folder

    entries = list(datasets().values())
    if json_path is not None:
        listing = [{**d.listing(), "available": d.available()} for d in entries]
        emit_json(json.dumps(listing), json_path)
        if json_path == STDOUT:
            return
    from rich.table import Table

    table = Table(title="Datasets (--dataset NAME)", title_justify="left")
    for column in ("name", "kind", "classes", "input", "sensitive attribute", "source",
                   "available"):  # fmt: skip
        table.add_column(column, no_wrap=column in {"name", "kind", "classes"})
    for d in entries:
        table.add_row(
            d.name, d.kind.value, str(d.num_classes), d.input, d.sensitive or "—",
            escape(d.source), escape(d.available()),
        )  # fmt: skip
    console = stdout()
    console.print(table)
    console.print(
        "Fashion-MNIST is not shipped: 'apt-get install dataset-fashion-mnist' (Debian/Ubuntu) puts "
        "its four IDX files in /usr/share/datasets/fashion-mnist; or download train-images-idx3-"
        "ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte "
        "(optionally .gz) into a folder and pass --data-dir FOLDER or set DEFCON_FMNIST_DIR=FOLDER. "
        f"Looked in: {escape(str(fmnist_folder()))}.",
        highlight=False,
    )


@app.command("report")
def report_command(
    records: Annotated[
        list[Path],
        typer.Argument(
            help="Composition or audit records written by compose or audit (OUT/records/*.json).",
            show_default=False,
        ),
    ],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="text (the terminal tables), md (Markdown), html (one self-contained page with "
            "the plots), model-card (Hugging Face, with model-index) or cyclonedx (CycloneDX 1.6 "
            "ML-BOM JSON).",
        ),
    ] = "text",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to FILE instead of stdout.", show_default=False),
    ] = None,
) -> None:
    """Report past records without rerunning anything: a summary first, then the evidence and
    where it sits in the EU AI Act and NIST AI RMF."""
    from defcon.report.renderers import FORMATS, RENDERERS

    if format not in FORMATS:
        raise DefconError(
            f"--format '{format}' is not accepted; expected one of {', '.join(FORMATS)}"
        )
    if output is not None:
        writable_target(output)
    loaded = [load_any_record(path) for path in records]
    if format == "text" and output is None:
        print_records(loaded, stdout())
        return
    if format == "text":
        import io

        buffer = io.StringIO()
        print_records(loaded, Console(file=buffer, width=120, highlight=False))
        text = buffer.getvalue()
    elif format == "html":
        from defcon.audit.html_report import html_document

        text = html_document(loaded)
    else:
        from defcon.report.report_model import build_report

        text = RENDERERS[format]([build_report(record) for record in loaded])
    if output is None:  # control characters from a record's names never reach the terminal
        from defcon.terminal import printable

        sys.stdout.write(printable(text))
        sys.stdout.flush()
    else:
        from defcon.storage import atomic_write_text

        atomic_write_text(output, text)
        say(f"wrote {escape(str(output))}")


def print_records(records: list[Any], console: Console) -> None:
    """Today's terminal tables of composition and audit records."""
    from defcon.planning.records import CompositionRecord
    from defcon.report.reports import print_report

    for record in records:
        if isinstance(record, CompositionRecord):
            print_report(record, console)
        else:
            from defcon.audit.auditor import print_audit

            print_audit(record, console)


def load_any_record(record: Path) -> Any:
    """A composition record, else an audit record; one `error:` line when it is neither."""
    from pydantic import ValidationError

    from defcon.planning.records import CompositionRecord, readable
    from defcon.storage import read_text

    text = read_text(record, "record file", "a JSON record written by defcon compose")
    try:
        loaded = CompositionRecord.model_validate_json(text)
    except ValidationError as error:
        from defcon.audit.auditor import AuditRecord

        try:  # an audit record is a record too
            return AuditRecord.model_validate_json(text)
        except ValidationError:
            pass
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise DefconError(
            f"record file '{record}' is not a defcon composition or audit record "
            f"({where + ': ' if where else ''}{problem['msg']})"
        ) from None
    try:
        return readable(loaded, f"record file '{record}'")
    except ValueError as error:
        raise DefconError(str(error)) from None


def parse_tolerances(items: list[str] | None) -> dict[str, float]:
    """`METRIC=VALUE` strings → {metric: value}, with a one-line error for a malformed item."""
    tolerances: dict[str, float] = {}
    for item in items or []:
        metric, sep, value = item.partition("=")
        try:
            if not sep or not metric:
                raise ValueError
            tolerances[metric.strip()] = float(value)
        except ValueError:
            raise DefconError(
                f"--tolerance '{item}' is malformed; expected METRIC=VALUE, e.g. robust_accuracy=0.05"
            ) from None
        if not math.isfinite(tolerances[metric.strip()]) or tolerances[metric.strip()] < 0:
            raise DefconError(f"--tolerance '{item}': a tolerance must be a finite number ≥ 0")
    return tolerances


SEEDS_WARNING = 20


def warn_about_seeds(seeds: int, max_seeds: int) -> None:
    """One warning line (not an error) when a run asks for many seeds: each one costs minutes."""
    most = max(seeds, max_seeds)
    if most > SEEDS_WARNING:
        say(
            f"warning: {most} seeds: every seed trains and measures every arm again (about a "
            "minute per seed and combination on the quick profile); this will take long"
        )


def writable_file(path: Path, option: str) -> Path:
    """Check, before any work, that `path` can be written: a regular file (or a link to one) or
    nothing yet, in a writable folder. A directory, device or FIFO is refused, never replaced."""
    try:
        target = writable_target(path)
    except DefconError as error:
        raise DefconError(f"{option}: {error}") from None
    writable_folder(target.parent, option)
    return path


def made_here(out: Path, *folders: str) -> None:
    """The folders defcon makes inside the user's --out, each a real folder (a link planted
    there is replaced, with a warning), so no write below --out goes through a link."""
    from defcon.storage import safe_folder

    for folder in folders:
        safe_folder(out / folder, out)


CacheOption = Annotated[
    Path | None,
    typer.Option(
        "--cache",
        help="Model cache folder (default: OUT/cache); share it between runs.",
        show_default=False,
    ),
]


def defense_configs(
    assignments: list[str] | None, file: Path | None, specs: Any, echo: bool = False
) -> Any:
    """--set and --settings checked by each defense's config (before any work); `echo` says
    them on stderr for commands whose output has no place for them (the pilot)."""
    from defcon.engine.defense_settings import defense_settings, settings_text

    configs = defense_settings(assignments, file, specs)
    if echo and configs:
        typer.echo(f"settings: {settings_text(configs)}", err=True)
    return configs


def checked_settings(options: Mapping[str, Any]) -> RunSettings:
    """The run options as one `RunSettings`, checked once before any work: the seeds first (a
    warning about many seeds comes before any refusal), then every other value (one `error:`
    line for the first wrong one), then what needs I/O (catalog, device, model, --set and
    --settings, `RunSettings.resolved`)."""
    values = dict(options)
    set_values, settings_file = values.pop("set_values", None), values.pop("settings_file", None)
    seeds = RunSettings.checked(**{k: values[k] for k in SEED_OPTIONS if k in values})
    warn_about_seeds(seeds.seeds, seeds.most_seeds)
    return RunSettings.checked(**values).resolved(set_values, settings_file)


def start_run(
    options: Mapping[str, Any],
    out: Path,
    json_path: Path | None,
    cache: Path | None,
    own_checks: Callable[[], None] | None = None,
) -> tuple[Any, Console]:
    """What compose and audit share before measuring: the settings checked, the data read,
    the outputs and then the command's `own_checks` checked (each refusal one `error:` line,
    before any work), and the Composer built from the settings."""
    settings = checked_settings(options)
    source = settings.source()
    check_outputs(out, json_path, cache)
    if own_checks is not None:
        own_checks()
    err = safe_console(stderr=True)
    from defcon.measure.composer import Composer

    composer = Composer.from_settings(
        settings, cache_dir=cache or out / "cache", source=source,
        log=lambda message: err.print(f"[dim]{escape(message)}[/]"),
    )  # fmt: skip
    return composer, err


def finish_run(
    record: Any,
    stem: str,
    out: Path,
    json_path: Path | None,
    where: tuple[str, str],
    save: Callable[[Any, Path], Path],
    draw: Callable[[Any, Path], Path],
    print_table: Callable[[Any, Console], None],
    err: Console,
) -> None:
    """What compose and audit share after measuring: the record saved in OUT/`where[0]`, its
    plot in OUT/plots, the table (or JSON) shown, and where both went."""
    folder, plot_name = where
    made_here(out, folder, "plots")
    record_path = save(record, out / folder / f"{stem}.json")
    plot = draw(record, out / "plots" / f"{stem}.png")
    present(record, json_path, print_table)
    err.print(f"record: {escape(str(record_path))}   {plot_name}: {escape(str(plot))}")


OutOption = Annotated[Path, typer.Option("--out", help="Folder for records, plots and the cache.")]


def compose_every_order(
    composer: Any,
    names: list[str],
    force: bool,
    tolerances: dict[str, float],
    out: Path,
    json_path: Path | None,
    err: Console,
) -> None:
    """`compose --order all`: one record per order of the same-stage defenses, then which order
    did better (`defcon.planning.orders`). With `--json -` the records go to stdout as a JSON list and
    every table and line to stderr."""
    from defcon.planning.orders import order_lines, stage_orders
    from defcon.report.reports import bar_chart, print_report, record_stem, save_record

    specs, verdict = composer.plan(names, force=force)  # validated once, before any training
    view = safe_console(stderr=True, min_width=120) if json_path == STDOUT else stdout()
    measured: dict[tuple[str, ...], str] = {}
    records = []
    for given in stage_orders({spec.name: spec for spec in specs}, names):
        record = composer.compose(list(given), force=force, tolerances=tolerances, order="given")
        stem = record_stem(record)
        made_here(out, "records", "plots")
        path = save_record(record, out / "records" / f"{stem}.json")
        bar_chart(record, out / "plots" / f"{stem}.png")
        print_report(record, view)
        err.print(f"record: {escape(str(path))}")
        measured[tuple(record.order)] = "unreliable" if record.unreliable else record.label
        records.append(record)
    for line in order_lines(measured, verdict.order):
        view.print(escape(line))
    if json_path is not None:
        emit_json("[" + ",\n".join(r.model_dump_json(indent=2) for r in records) + "]", json_path)


@app.command("compose")
@run_options()
def compose_command(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Two or more defenses to combine (each adds arms to train).", show_default=False
        ),
    ] = None,
    tolerance: Annotated[
        list[str] | None,
        typer.Option("--tolerance", metavar="METRIC=VALUE", help="Override a metric's tolerance."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Measure even when Def\\Con predicts a conflict.")
    ] = False,
    order: Annotated[
        str,
        typer.Option(
            "--order",
            help="Within each stage: the checker's order, the order given, or all orders "
            "(one record each, and which did better).",
        ),
    ] = "checker",
    out: OutOption = Path("defcon-runs"),
    json_path: JsonOption = None,
    cache: CacheOption = None,
    save_model: Annotated[
        Path | None,
        typer.Option(
            "--save-model",
            metavar="DIR",
            help="Save the combined model of the first seed, as served, in this new or empty "
            "folder (read it back with defcon.load_pipeline).",
            show_default=False,
        ),
    ] = None,
    options: Mapping[str, Any] | None = None,
) -> None:
    """Apply defenses in the checker's order and measure each one alone vs combined."""
    tolerances: dict[str, float] = {}

    def own_checks() -> None:
        tolerances.update(parse_tolerances(tolerance))
        if check_order_choice(order) == "all" and save_model is not None:
            raise DefconError("--save-model saves one model; use it with --order checker or given")
        if save_model is not None:
            from defcon.measure.artefact import check_target

            check_target(save_model)

    composer, err = start_run(options or {}, out, json_path, cache, own_checks)
    from defcon.report.reports import bar_chart, print_report, record_stem, save_record

    if order == "all":
        compose_every_order(composer, names or [], force, tolerances, out, json_path, err)
        return
    record = composer.compose(
        names or [], force=force, tolerances=tolerances, save_model=save_model,
        order=order,  # type: ignore[arg-type]
    )  # fmt: skip
    finish_run(record, record_stem(record), out, json_path, ("records", "plot"), save_record,
               bar_chart, print_report, err)  # fmt: skip
    if save_model is not None:
        from defcon.measure.artefact import read_manifest

        for note in read_manifest(save_model).notes:
            warn(f"saved model: {note}")
        err.print(f"saved model: {escape(str(save_model))} (defcon.load_pipeline reads it)")


@app.command("audit")
@run_options("max_seeds")
def audit_command(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Defenses to audit alone and combined (none: the undefended model).",
            show_default=False,
        ),
    ] = None,
    risk: Annotated[
        list[str] | None,
        typer.Option(
            "--risk",
            metavar="RISK",
            help="Measure only this risk (repeatable; default: all that apply, except "
            "distribution_inference, measured only when named because of its cost).",
        ),
    ] = None,
    out: OutOption = Path("defcon-runs"),
    json_path: JsonOption = None,
    cache: CacheOption = None,
    options: Mapping[str, Any] | None = None,
) -> None:
    """Measure every risk on no defense, each defense alone and combined; predict each change."""
    composer, err = start_run(options or {}, out, json_path, cache)
    from defcon.audit.auditor import Auditor, audit_stem, heatmap, print_audit, save_audit

    record = Auditor(composer).audit(names or [], risks=risk)
    finish_run(record, audit_stem(record), out, json_path, ("audits", "heatmap"), save_audit, heatmap, print_audit,
               err)  # fmt: skip


@app.command("bench")
@run_options("dataset")
def bench_command(
    datasets: Annotated[
        str,
        typer.Option("--datasets", help="Comma-separated datasets (names or .npz/.csv files)."),
    ] = "fmnist,adult",
    pairs: Annotated[str, typer.Option("--pairs", help="'all', or pairs like 'a+b,c+d'.")] = "all",
    defenses: Annotated[
        str | None,
        typer.Option(
            "--defenses",
            help="Comma-separated defenses: every pair among these instead of --pairs "
            "(default: every defense with a mechanism).",
            show_default=False,
        ),
    ] = None,
    triples: Annotated[
        Path | None,
        typer.Option(
            "--triples",
            metavar="FILE",
            help="TOML file of \\[\\[triple]] tables, each with defenses = \\[three names].",
            show_default=False,
        ),
    ] = None,
    stability_start: Annotated[
        int | None,
        typer.Option(
            "--stability-start",
            help="Repeat the benchmark on the disjoint seed set starting here (in OUT/stability) "
            "and report the label flip rate.",
            show_default=False,
        ),
    ] = None,
    executor: Annotated[
        str, typer.Option("--executor", help="local (process pool) or ray.")
    ] = "local",
    workers: Annotated[int, typer.Option("--workers", "-w", help="Parallel combinations.")] = 1,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Ray cluster address (default: start Ray locally).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for records, RESULTS.md, plots, cache.")
    ] = Path("defcon-bench"),
    cache: CacheOption = None,
    report_only: Annotated[
        bool,
        typer.Option(
            "--report-only",
            help="Measure nothing: rebuild RESULTS.md and scores.json from the records in OUT "
            "(and OUT/stability), counting what is not measured yet.",
        ),
    ] = False,
    options: Mapping[str, Any] | None = None,
) -> None:
    """Measure every pair (and triples) and score each technique's predictions against it."""
    from defcon.bench.results import scores_by_dataset, write_results
    from defcon.bench.run import load_triples, pairs_among, parse_pairs, run_bench
    from defcon.engine.defense_settings import settings_text
    from defcon.report.scoring import score_text

    settings = checked_settings(options or {})
    specs = settings.specs()
    if settings.configs:  # the bench's output has no place for them
        typer.echo(f"settings: {settings_text(settings.configs)}", err=True)
    chosen_pairs = parse_pairs(pairs, specs)
    if defenses is not None:
        if chosen_pairs is not None:
            raise DefconError("--defenses and --pairs both choose the pairs; give one of them")
        chosen_pairs = pairs_among(defenses, specs)
    chosen_triples = load_triples(triples, specs) if triples is not None else []
    names = [d.strip() for d in datasets.split(",") if d.strip()]
    if not names:
        raise DefconError("--datasets is empty; name one or more of digits, fmnist, adult, compas")
    writable_folder(out, "--out")
    if cache is not None:
        writable_folder(cache, "--cache")
    err = safe_console(stderr=True)
    common = dict(
        pairs=chosen_pairs, triples=chosen_triples, executor=executor, workers=workers,
        cache_dir=cache, ray_address=ray_address,
        log=lambda message: err.print(f"[dim]{escape(message)}[/]"), measure=not report_only,
    )  # fmt: skip
    first, most = settings.seed_start, settings.most_seeds
    if (
        stability_start is not None
        and stability_start < first + most
        and (first < stability_start + most)
    ):
        raise DefconError(
            f"--stability-start {stability_start} overlaps the seeds {first}.."
            f"{first + most - 1}; pick a disjoint seed set"
        )
    result = run_bench(names, settings, out=out, **common)
    repeat = None
    if stability_start is not None:
        err.print(f"[dim]stability: the same benchmark on seeds from {stability_start}[/]")
        again = RunSettings.checked(**{**settings.model_dump(), "seed_start": stability_start})
        repeat = run_bench(names, again, out=out / "stability", **common)
    markdown, plot = write_results(result, out, repeat=repeat)
    console = stdout()
    for dataset, by_technique in scores_by_dataset(result.records).items():
        for technique, score in by_technique.items():
            console.print(
                f"{dataset:>8} {technique:>8}: accuracy {score_text(score.accuracy)}, balanced "
                f"accuracy {score_text(score.balanced_accuracy)} over {score.n} conclusive "
                "combinations"
            )
    console.print(f"wall time {result.wall_time_s:.0f} s; results: {markdown}, plot: {plot}")


if __name__ == "__main__":  # pragma: no cover
    app()
