"""The benchmark: measure every pair (and chosen triples) and compare each technique's predictions.

Combinations are independent tasks. They run in a local process pool (default) or on a Ray
cluster, all sharing one model cache folder, so a model needed by several combinations is
trained once. Each finished combination's record is written atomically; a restarted bench skips
the combinations whose record is already there.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from defcon.bench.lifeline import Interrupted, Stopped, stop_on_signals, worker_start
from defcon.bench.provenance import source_commit
from defcon.catalog import Catalog, load_catalog
from defcon.engine.data import dataset_source, is_data_file, load_dataset
from defcon.engine.registry import require_for_defenses
from defcon.engine.settings import RunSettings
from defcon.errors import DefconError
from defcon.measure.composer import Composer, applicability_problem
from defcon.planning.orders import MEASURED_ORDERS, check_order_choice
from defcon.planning.records import CompositionRecord, repredicted
from defcon.report.reports import load_record, save_record
from defcon.storage import atomic_write_text, read_text, safe_folder
from defcon.user_code import UserCodeError

Executor = Literal["local", "ray"]


class Task(BaseModel):
    """One combination to measure on one dataset; everything a worker needs, picklable."""

    model_config = ConfigDict(frozen=True)

    settings: RunSettings  # the bench's, for this task's dataset, its device concrete
    defenses: tuple[str, ...]
    cache_dir: str
    record_path: str
    threads: int = 1
    order: Literal["checker", "given"] = "checker"  # within a stage (defcon.planning.orders)

    @property
    def dataset(self) -> str:
        return self.settings.dataset


class Skipped(BaseModel):
    model_config = ConfigDict(frozen=True)

    dataset: str
    defenses: tuple[str, ...]
    reason: str


class TriplesFile(BaseModel):
    """`[[triple]] defenses = ["a", "b", "c"]` entries of a triples TOML file."""

    triple: list[dict[str, list[str]]] = Field(min_length=1)


def load_triples(path: Path | str, catalog: Catalog | None = None) -> list[tuple[str, ...]]:
    """Read and validate a triples file: each entry names three distinct known defenses."""
    path = Path(path)
    text = read_text(path, "triples file", "a TOML file of [[triple]] tables")
    try:
        parsed = TriplesFile.model_validate(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ValidationError) as error:
        first = str(error).splitlines()[0]
        raise DefconError(
            f"triples file '{path}' is malformed ({first}); expected [[triple]] tables with "
            "defenses = [three names]"
        ) from None
    catalog = catalog or load_catalog()
    triples = []
    for entry in parsed.triple:
        names = tuple(entry.get("defenses", ()))
        if len(names) != 3:
            raise DefconError(f"triples file '{path}': {list(names)} does not name three defenses")
        catalog.resolve(names, minimum=3)
        triples.append(names)
    return triples


def parse_pairs(text: str, catalog: Catalog | None = None) -> list[tuple[str, ...]] | None:
    """`all` → None (every pair); otherwise 'a+b,c+d' → [(a, b), (c, d)]."""
    if text.strip() == "all":
        return None
    pairs = []
    for item in text.split(","):
        names = tuple(n.strip() for n in item.split("+") if n.strip())
        if len(names) != 2:
            raise DefconError(f"--pairs: '{item}' is not a pair; use 'all' or 'a+b,c+d'")
        (catalog or load_catalog()).resolve(names)
        pairs.append(names)
    return pairs


def pairs_among(text: str, catalog: Catalog | None = None) -> list[tuple[str, ...]]:
    """'a,b,c' → every pair among those defenses, each name checked against the catalog."""
    names = sorted({n.strip() for n in text.split(",") if n.strip()})
    if len(names) < 2:
        raise DefconError(f"--defenses: '{text}' names fewer than two defenses; give two or more")
    (catalog or load_catalog()).resolve(names)
    return list(itertools.combinations(names, 2))


def combinations_for(
    dataset: str,
    pairs: Sequence[tuple[str, ...]] | None,
    triples: Sequence[tuple[str, ...]],
    data_dir: str | None = None,
    catalog: Catalog | None = None,
    data_options: dict[str, str | None] | None = None,
) -> tuple[list[tuple[str, ...]], list[Skipped]]:
    """The combinations that apply to `dataset`, and those skipped with the reason."""
    catalog = catalog or load_catalog()
    source = dataset_source(dataset, **(data_options or {}), refuse_options=False)
    probe = load_dataset(source, seed=0, max_train=1, max_eval=1, data_dir=data_dir)
    runnable = [n for n, s in catalog.items() if s.implementation is not None]
    chosen = list(pairs) if pairs is not None else list(itertools.combinations(sorted(runnable), 2))
    chosen += list(triples)
    keep, skipped = [], []
    for names in chosen:
        problems = [applicability_problem(catalog[n], probe) for n in names]
        problems += [f"'{n}' has no mechanism yet" for n in names if n not in runnable]
        problems = [p for p in problems if p]
        if problems:
            skipped.append(
                Skipped(dataset=dataset, defenses=tuple(names), reason="; ".join(problems))
            )
        else:
            keep.append(tuple(names))
    return keep, skipped


def task_identity(
    dataset: str,
    names: Sequence[str],
    catalog: Catalog,
    model: str | None,
    data_options: dict[str, str | None],
) -> str:
    """A short hash of everything a combination's result depends on beyond its readable name,
    for record file names: a user's data file (its bytes, and --target/--sensitive/--kind), the
    spec and the whole implementation of every defense from a user's catalog, and the source
    of a user's model factory. Two runs that differ there never share (or replace) a record.

    Empty for a built-in dataset, built-in defenses and defcon's models, so the names of the
    records measured before it existed are unchanged.
    """
    from defcon.catalog import builtin_catalog
    from defcon.engine.fingerprint import code_of
    from defcon.engine.models import factory_code
    from defcon.engine.registry import defense_class

    parts: dict[str, object] = {}
    if is_data_file(dataset):
        parts["data"] = _file_digest(Path(dataset))
        parts["options"] = {k: v for k, v in sorted(data_options.items()) if v is not None}
    builtin = builtin_catalog()
    user = {
        name: {
            "spec": catalog[name].model_dump(mode="json"),
            "code": code_of(defense_class(catalog[name])),
        }
        for name in names
        if name not in builtin
    }
    if user:
        parts["defenses"] = user
    if model is not None:
        parts["model"] = factory_code(model)
    if not parts:
        return ""
    text = json.dumps(parts, sort_keys=True, default=str)
    return "-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_task(task: Task) -> str | None:
    """Measure one combination (forced: measuring predicted conflicts is the point) and save it.

    Returns None on success, or the one-line reason why the defenses cannot run together
    (e.g. a mechanism refusing another's wrapper): that is a finding, not a crash of the bench.
    """
    import torch

    caller_threads = torch.get_num_threads()  # restored: with one worker this runs in-process
    torch.set_num_threads(task.threads)
    os.environ.setdefault("DEFCON_PROGRESS", "0")
    try:
        composer = Composer.from_settings(task.settings, cache_dir=task.cache_dir)
        record = composer.compose(task.defenses, force=True, order=task.order)
    except UserCodeError as error:  # a defense or model that raised is a crash, not a finding
        return f"crashed: {error}"
    except DefconError as error:
        return str(error)
    except Exception as error:  # a bug in one combination must not lose the others' hours
        import traceback

        where = traceback.extract_tb(error.__traceback__)[-1]
        return (
            f"crashed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''} "
            f"(at {Path(where.filename).name}:{where.lineno})"
        )
    finally:
        torch.set_num_threads(caller_threads)
    save_record(record, task.record_path)
    return None


Report = Callable[[Task, "str | None"], None]


def _run_local(tasks: Sequence[Task], workers: int, report: Report) -> None:
    if workers <= 1:
        for task in tasks:
            report(task, run_task(task))
        return
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=worker_start,
        initargs=(os.getpid(),),
    )  # fmt: skip
    try:
        futures = {pool.submit(run_task, task): task for task in tasks}
        for future in as_completed(futures):
            report(futures[future], future.result())
    except BaseException:
        # stop the queue: nothing new starts, running combinations end now (their finished
        # models stay in the cache for a rerun), the workers exit before we do
        running = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in running:
            process.terminate()
        for process in running:
            process.join(timeout=10)
        raise
    pool.shutdown(wait=True)


def _run_ray(tasks: Sequence[Task], workers: int, report: Report, address: str | None) -> None:
    try:
        import ray
    except ImportError:
        raise DefconError(
            "--executor ray needs Ray: pip install 'defcon[ray]' (or use --executor local)"
        ) from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address,
            num_cpus=None if address else workers,
            include_dashboard=False,
            log_to_driver=False,
        )
    try:
        remote = ray.remote(num_cpus=1)(run_task)
        pending = {remote.remote(task): task for task in tasks}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                report(pending.pop(ref), ray.get(ref))
    finally:
        if started_here:
            ray.shutdown()


class MeasuringRun(BaseModel):
    """One invocation that measured combinations into a bench folder (OUT/runs.json), so a
    summary rebuilt later (`--report-only`) still says how long the measuring took."""

    finished: str
    wall_time_s: float
    combinations_run: int
    workers: int
    executor: str
    profile: str
    seed_start: int
    commit: str | None = None  # of the checkout it ran from (`defcon.bench.provenance`)


class BenchResult(BaseModel):
    """All records of a bench run, what was skipped, and its cost."""

    records: list[CompositionRecord]
    skipped: list[Skipped]
    failed: list[Skipped] = Field(default_factory=list)
    wall_time_s: float
    executor: str
    workers: int
    seeds: int
    max_seeds: int = 0
    seed_start: int = 0
    profile: str
    pending: int = 0  # combinations not measured yet (a report-only run)
    report_only: bool = False  # nothing was measured by this invocation
    runs: list[MeasuringRun] = Field(default_factory=list)  # every measuring run into OUT


def _load_runs(out: Path) -> list[MeasuringRun]:
    path = out / "runs.json"
    try:
        return [MeasuringRun.model_validate(item) for item in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return []  # absent or unreadable: the summary just lacks the history


def run_bench(
    datasets: Iterable[str],
    settings: RunSettings | None = None,
    *,
    pairs: Sequence[tuple[str, ...]] | None = None,
    triples: Sequence[tuple[str, ...]] = (),
    executor: Executor = "local",
    workers: int = 1,
    out: Path | str = "defcon-bench",
    cache_dir: Path | str | None = None,
    ray_address: str | None = None,
    log: Callable[[str], None] = lambda message: None,
    measure: bool = True,
    order: Literal["checker", "given"] = "checker",
    **options: Any,
) -> BenchResult:
    """Measure every applicable combination on each dataset; resume from records already saved.

    `settings`: the run's, checked at the edge (its dataset is replaced by each of `datasets`);
    or, from Python, its fields as keywords (`seeds=1, profile="tiny"`), checked here.

    With `measure=False` nothing runs: the summaries are rebuilt from what is on disk (records,
    and the reasons of combinations that could not run together), and the combinations not
    measured yet are counted as pending.

    The result's `records` are every record in OUT/records, this selection's and those of
    earlier (possibly wider) runs into the same folder, so the summaries written from it never
    shrink to a narrower rerun's selection.

    `order="given"` applies each combination's defenses in the order named within each stage
    (the measurement of a stage's other orders); its records are named `-given`, apart from the
    checker-ordered ones.
    """
    if settings is None:
        settings = RunSettings.checked(**options).resolved()
    elif options:
        raise TypeError(f"give run_bench settings or their fields, not both: {sorted(options)}")
    # a user's defense settings without a value change nothing: left out of tasks and names
    configs = {name: dict(values) for name, values in settings.configs.items() if values}
    settings = settings.model_copy(update={"configs": configs})
    catalog = settings.specs()
    seeds, max_seeds, seed_start = settings.seeds, settings.most_seeds, settings.seed_start
    profile, model, data_options = settings.profile, settings.model, settings.data_options()
    # a user's settings go into record file names, so runs that differ never share records
    variant = "".join(
        f"-{label}{value}"
        for label, value in (
            ("on-", settings.device), ("model-", model), ("epochs", settings.epochs),
            ("lr", settings.lr), ("batch", settings.batch_size),
        )
        if value not in (None, "cpu")
    ).replace(":", "_")  # fmt: skip
    if configs:  # records of other settings never answer for these
        digest = hashlib.sha256(json.dumps(configs, sort_keys=True).encode()).hexdigest()
        variant += f"-set{digest[:8]}"
    check_order_choice(order, MEASURED_ORDERS, "order")
    if order == "given":
        variant += "-given"
    if workers < 1:
        raise DefconError(f"--workers must be at least 1, got {workers}")
    if executor not in ("local", "ray"):
        raise DefconError(f"unknown executor '{executor}'; accepted: local, ray")
    out = Path(out)
    started = time.perf_counter()
    # before measuring: the code that ran, not what was edited since (a report measures nothing)
    commit = source_commit() if measure else None
    cache_dir = Path(cache_dir) if cache_dir is not None else out / "cache"
    threads = max(1, (os.cpu_count() or 1) // workers)
    tasks, skipped, paths = [], [], []
    for dataset in datasets:
        data_dir = str(settings.data_dir) if settings.data_dir is not None else None
        keep, skip = combinations_for(dataset, pairs, triples, data_dir, catalog, data_options)
        skipped += skip
        label = Path(dataset).name if is_data_file(dataset) else dataset
        # --target, --sensitive and --kind read the files among the datasets, not the built-ins
        task_data = {"dataset": dataset}
        if not is_data_file(dataset):
            task_data |= dict.fromkeys(data_options)
        for names in keep:
            seed_set = f"seeds{seed_start}+{seeds}to{max_seeds}"
            identity = task_identity(dataset, names, catalog, model, data_options)
            stem = f"{label}-{profile}-{seed_set}{variant}-{'+'.join(names)}{identity}"
            path = out / "records" / label / f"{stem}.json"
            if measure:
                safe_folder(path.parent, out)  # a link planted there is replaced, not followed
            paths.append(path)
            if _finished(path):
                continue
            tasks.append(
                Task(
                    settings=settings.model_copy(update=task_data),
                    defenses=names,
                    cache_dir=str(cache_dir),
                    record_path=str(path),
                    threads=threads,
                    order=order,
                )
            )
    if measure:  # a missing package is the user's to install, not a finding about a pair
        require_for_defenses({name for task in tasks for name in task.defenses}, catalog)
    failed: list[Skipped] = []
    pending = 0
    if not measure:
        for task in tasks:
            reason = _failure(Path(task.record_path))
            if reason is None:
                pending += 1
            else:
                failed.append(Skipped(dataset=task.dataset, defenses=task.defenses, reason=reason))
        log(f"report only: {len(paths) - len(tasks)} combinations measured, {len(failed)} could "
            f"not run together, {pending} not measured yet")  # fmt: skip
        tasks = []
    else:
        log(f"{len(paths)} combinations, {len(paths) - len(tasks)} already measured, "
            f"{len(tasks)} to run on {executor} with {workers} worker(s); {len(skipped)} skipped")  # fmt: skip
        kept = len(paths) - len(tasks)
        others = sorted({r.commit or "unknown" for r in _load_runs(out)} - {commit or "unknown"})
        if kept and others:  # resumed by file name: a reader must know they are not re-measured
            log(f"note: the {kept} combinations already measured are kept, not re-measured; "
                f"earlier runs into {out} were at commit {', '.join(c[:10] for c in others)} "
                f"(this checkout: {(commit or 'unknown')[:10]}); give a new --out to measure "
                "every combination here")  # fmt: skip
    done = 0

    def report(task: Task, problem: str | None) -> None:
        nonlocal done
        done += 1
        outcome = f" — could not run: {problem}" if problem else ""
        log(f"[{done}/{len(tasks)}] {task.dataset}: {' + '.join(task.defenses)}{outcome}")
        if problem:
            failed.append(Skipped(dataset=task.dataset, defenses=task.defenses, reason=problem))
            atomic_write_text(_failure_path(Path(task.record_path)), problem + "\n")

    try:
        with stop_on_signals():
            if executor == "ray":
                _run_ray(tasks, workers, report, ray_address)
            else:
                _run_local(tasks, workers, report)
    except Stopped as stopped:
        name = signal.Signals(stopped.signum).name
        raise Interrupted(
            f"bench stopped by {name}: {done} of {len(tasks)} combinations finished (their "
            "records are kept), the running ones were stopped and the rest not started; rerun "
            "the same command to resume",
            stopped.signum,
        ) from None
    records = load_records(out / "records", log, catalog)
    runs = _load_runs(out)
    wall_time_s = round(time.perf_counter() - started, 1)
    if tasks:
        runs.append(
            MeasuringRun(
                finished=datetime.now(UTC).isoformat(timespec="seconds"),
                wall_time_s=wall_time_s,
                combinations_run=len(tasks),
                workers=workers,
                executor=executor,
                profile=profile,
                seed_start=seed_start,
                commit=commit,
            )  # fmt: skip
        )
        atomic_write_text(
            out / "runs.json", json.dumps([r.model_dump() for r in runs], indent=2) + "\n"
        )
    return BenchResult(
        records=records,
        skipped=skipped,
        failed=failed,
        wall_time_s=wall_time_s,
        runs=runs,
        executor=executor,
        workers=workers,
        seeds=seeds,
        max_seeds=max_seeds,
        seed_start=seed_start,
        profile=profile,
        pending=pending,
        report_only=not measure,
    )


def load_records(
    folder: Path | str,
    warn: Callable[[str], None] = lambda message: None,
    catalog: Catalog | None = None,
) -> list[CompositionRecord]:
    """Every composition record under `folder` (all datasets, earlier runs' too), sorted by path.

    A file that does not parse as a record, has a newer schema version, or names a defense the
    catalog (default: the installed one) does not know is skipped with a warning naming it,
    never fatal: the summaries of a bench folder are rebuilt from everything readable in it.
    Predictions are recomputed by every registered technique (`repredicted`), so all are scored
    on every record.
    """
    catalog = catalog if catalog is not None else load_catalog()
    records = []
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            record = load_record(path)
        except (ValueError, OSError) as error:  # pydantic's ValidationError is a ValueError
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            warn(f"warning: skipped {path}: not a readable composition record ({first})")
            continue
        unknown = [name for name in record.defenses if name not in catalog]
        if unknown:
            warn(f"warning: skipped {path}: it names defense(s) {', '.join(unknown)} that the "
                 "catalog does not declare (give the catalog file it was measured with: "
                 "--catalog FILE)")  # fmt: skip
            continue
        records.append(repredicted(record))
    return records


def _failure_path(record_path: Path) -> Path:
    return record_path.with_name(record_path.stem + ".failed.txt")


def _failure(record_path: Path) -> str | None:
    """Why a combination could not run, as the last measuring run wrote it (None: unknown)."""
    path = _failure_path(record_path)
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _finished(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        load_record(path)
    except (ValueError, OSError):
        return False
    return True


__all__ = ["BenchResult", "Task", "load_records", "load_triples", "parse_pairs", "run_bench"]
