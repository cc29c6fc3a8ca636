"""MLflow reporter: one parent run per pytest session, one child run per suite, and one per repair.

Only the controller calls it, once, after every case ran and the gates were decided (under xdist
the records have already travelled to the controller), so there is one writer per store: no
SQLite write contention, no migration race on a fresh store. Nothing here knows about pytest: it
takes a `RunSummary`, the session's `SessionMeta` and the `MlflowSettings`.

mlflow is imported inside the functions that log (DEVELOPERS.md: lazy heavy imports), and every
call goes through an explicit `MlflowClient` and run id, so no active run leaks into user code.
Every param, tag and artifact passes through `redact`/`scrub` first.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import re
import shlex
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..redact import redact, redact_text, scrub
from ..settings import MlflowSettings
from ..summary import RunSummary, SuiteSummary

__all__ = [
    "Logged",
    "MlflowReportError",
    "Outcome",
    "SessionMeta",
    "log_run",
    "report_run",
    "safe_text",
    "upload_pending",
    "write_pending",
]

PENDING_KEY = "mlflow"  # what a pending-upload file adds to the JSON report
TABLE_FILE = "cases.json"
CASES_DIR = "cases"  # a dataset suite's per-case Parquet parts, in its child run
TABLE_ROWS = 1000  # a dataset suite's rows are also logged as the `cases.json` table up to this many
REPORT_FILE = "promptopt-report.json"
BASELINE_FILE = "baseline_comparison.json"  # with --promptopt-baseline
KIND_TAG = "promptopt.kind"  # "repair" on a repair's child run (a suite's child run has none)
CANDIDATE_ALIAS = "candidate"  # the registry alias of a repair's proposal
PROPOSAL_TAG = "promptopt.repair"  # the version tag marking a registered proposal
LINKED_PROMPTS_TAG = "mlflow.linkedPrompts"  # mlflow.tracing.constant.TraceTagKey.LINKED_PROMPTS
TABLE_COLUMNS = (
    "case_id",
    "name",
    "status",
    "passed",
    "error",
    "score",
    "reason",
    "vars",
    "prompt",
    "output",
    "scores",
    "named_scores",
    "model",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "calls",
    "cache_hits",
    "prompt_index",
    "test_index",
    "nodeid",
    "repeats",
    "repeat_passed",
    "flaky",
)
_JSON_COLUMNS = {"vars", "scores", "named_scores"}
# MLflow's limits (mlflow/utils/validation.py): values, and entities per log_batch call.
_MAX_PARAM_VALUE, _MAX_TAG_VALUE, _MAX_PER_BATCH = 6000, 8000, 100
# Short network limits while logging, so a server that is down costs seconds, not minutes
# (MLflow's defaults retry 7 times over about two minutes), and no progress bars in pytest's
# output. A user's own setting wins.
_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
_SUITE_FILE_LIMIT = 1_000_000


class MlflowReportError(RuntimeError):
    """Logging to MLflow failed in a way we can describe in one line."""


@dataclass
class SessionMeta:
    """What the parent run records about the pytest session (plain data: it is saved in pending files)."""

    started_ms: int
    ended_ms: int
    exit_status: int | None = None
    pytest_args: list[str] = field(default_factory=list)
    rootdir: str = ""
    git_commit: str | None = None
    git_branch: str | None = None
    ci: bool = False
    suite_files: dict[str, str] = field(default_factory=dict)  # suite file (as reported) -> its text

    @classmethod
    def collect(
        cls, run: RunSummary, *, rootdir: Path, pytest_args: list[str], started: float, exit_status: int | None
    ) -> SessionMeta:
        commit = _git(rootdir, "rev-parse", "HEAD")
        branch = _git(rootdir, "rev-parse", "--abbrev-ref", "HEAD")
        if branch in (None, "HEAD"):  # detached, as in most CI checkouts
            branch = next(
                (
                    os.environ[k]
                    for k in ("GITHUB_HEAD_REF", "GITHUB_REF_NAME", "CI_COMMIT_REF_NAME")
                    if os.environ.get(k)
                ),
                None,
            )
        files: dict[str, str] = {}
        for suite in run.suites:
            path = rootdir / suite.info.file
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_size <= _SUITE_FILE_LIMIT:
                    files[suite.info.file] = safe_text(redact_text(path.read_text(encoding="utf-8", errors="replace")))
        return cls(
            started_ms=int(started * 1000),
            ended_ms=int(time.time() * 1000),
            exit_status=exit_status,
            pytest_args=[safe_text(a) for a in pytest_args],
            rootdir=str(rootdir),
            git_commit=commit,
            git_branch=branch,
            ci=os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"),
            suite_files=files,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionMeta:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Logged:
    """Where a run went: the parent run id, one child run id per suite, and any check that failed.
    With --promptopt-repair: one child run per repair, and the Prompt Registry URI of each
    registered proposal (both by position in `run.repairs`)."""

    tracking_uri: str
    experiment: str
    experiment_id: str
    parent_run_id: str
    child_run_ids: dict[str, str]
    problems: list[str] = field(default_factory=list)
    repair_run_ids: list[str] = field(default_factory=list)
    registered: dict[int, str] = field(default_factory=dict)

    @property
    def url(self) -> str | None:
        if not self.tracking_uri.startswith(("http://", "https://")):
            return None
        return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.parent_run_id}"

    def describe(self) -> str:
        where = f"MLflow: {self.tracking_uri}, experiment '{self.experiment}', run {self.parent_run_id}"
        return where + (f" ({self.url})" if self.url else "")


@dataclass
class Outcome:
    """The result of `report_run`: logged, or failed with the run kept in a pending file."""

    logged: Logged | None = None
    error: str | None = None
    pending: Path | None = None

    def warnings(self) -> list[str]:
        found = [f"{self.logged.describe()}: {p}" for p in self.logged.problems] if self.logged else []
        if self.error:
            kept = (
                f"; results kept in {self.pending}, send them later with `python -m pytest_promptopt upload {self.pending}`"
                if self.pending
                else ""
            )
            found.append(self.error + kept)
        return found

    def lines(self) -> list[str]:
        if self.logged is not None:
            return [self.logged.describe()]
        lines = [self.error or "MLflow reporting failed"]
        if self.pending is not None:
            lines.append(
                f"results kept in {self.pending}; send them later with: python -m pytest_promptopt upload {self.pending}"
            )
        return lines


# --------------------------------------------------------------------------- entry points


def report_run(
    run: RunSummary, meta: SessionMeta, target: MlflowSettings, *, artifacts: Sequence[Path] = ()
) -> Outcome:
    """Log `run`; on any failure keep it in a pending-upload file instead. Never raises: the
    tests already ran and gated, and reporting must not change that. `artifacts` (the HTML
    report) are logged to the parent run under their file names."""
    artifact_location = _local_artifacts(target)
    try:
        logged = log_run(
            run,
            meta,
            target.tracking_uri,
            target.experiment,
            artifact_location=artifact_location,
            artifacts=artifacts,
            traces=target.traces,
            prompt_prefix=target.prompt_prefix,
        )
    except Exception as exc:  # any MLflow, network or database fault
        error = f"MLflow reporting failed ({safe_uri(target.tracking_uri)}): {_one_line(exc)}"
        try:
            pending = write_pending(target.pending_dir, run, meta, target, error=error)
        except OSError as write_error:
            return Outcome(error=f"{error}; the results could not be kept either: {write_error}")
        return Outcome(error=error, pending=pending)
    return Outcome(logged=logged)


def log_run(
    run: RunSummary,
    meta: SessionMeta,
    tracking_uri: str,
    experiment: str,
    *,
    artifact_location: str | None = None,
    artifacts: Sequence[Path] = (),
    traces: bool = False,
    prompt_prefix: str = "",
) -> Logged:
    """Create the parent and child runs, log everything, then check it arrived. `traces`
    (--promptopt-mlflow-traces) also writes one trace per case (mlflow_traces.py)."""
    with _mlflow_calls():
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        experiment_id = _experiment_id(client, experiment, artifact_location)
        started = _dt.datetime.fromtimestamp(meta.started_ms / 1000, _dt.timezone.utc)
        parent = client.create_run(
            experiment_id,
            start_time=meta.started_ms,
            tags=_parent_tags(run, meta),
            run_name=f"pytest-{started:%Y%m%d-%H%M%S}",
        ).info.run_id
        children: dict[str, str] = {}
        repair_children: list[str] = []
        registered: dict[int, str] = {}  # repairs' proposals in the Prompt Registry, by position
        registry_problems: list[str] = []  # prompts that could not be registered (the run is still logged)
        with _terminate_on_error(client, parent):
            _log_batch(client, parent, metrics=_parent_metrics(run))
            from ..run_json import report_dict

            client.log_text(
                parent, json.dumps(report_dict(run, exit_status=meta.exit_status), indent=2, default=str), REPORT_FILE
            )
            for path in artifacts:
                client.log_artifact(parent, str(path))
            if run.baseline is not None:
                client.log_text(
                    parent, json.dumps(redact(run.baseline.to_dict()), indent=2, default=str), BASELINE_FILE
                )
            for suite in run.suites:
                children[suite.info.id] = _log_suite(
                    client, experiment_id, parent, suite, meta, registry_problems, run.baseline, prompt_prefix
                )
            for index, repair in enumerate(run.repairs):  # after the suites: a proposal is the newer version
                uri = _register_proposal(client, run, repair, registry_problems, prompt_prefix)
                if uri is not None:
                    registered[index] = uri
                repair_children.append(_log_repair(client, experiment_id, parent, repair, meta, uri))
            client.set_terminated(parent, "FINISHED", end_time=meta.ended_ms)
        try:
            problems = _verify(client, experiment_id, parent, run, children)
        except Exception as exc:  # the run is logged; a failed read-back must not make it pending
            problems = [f"could not read the logged runs back: {_one_line(exc)}"]
        if traces:  # a trace that could not be written is a warning: the runs are logged
            from .traces import write_and_verify

            problems += write_and_verify(client, experiment_id, run, children, started_ms=meta.started_ms)
    return Logged(
        safe_uri(tracking_uri),
        experiment,
        experiment_id,
        parent,
        children,
        registry_problems + problems,
        repair_children,
        registered,
    )


def write_pending(
    directory: Path, run: RunSummary, meta: SessionMeta, target: MlflowSettings, *, error: str = ""
) -> Path:
    """The JSON report plus what `upload` needs (target, session metadata), written atomically."""
    from ..run_json import report_dict

    data = report_dict(run, exit_status=meta.exit_status)
    data[PENDING_KEY] = {
        "tracking_uri": safe_uri(target.tracking_uri),
        "experiment": target.experiment,
        "artifact_location": _local_artifacts(target),
        "prompt_prefix": target.prompt_prefix,
        "error": error,
        "session": meta.to_dict(),
    }
    directory.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    path = directory / f"{stamp}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


def upload_pending(path: Path, *, tracking_uri: str | None = None, experiment: str | None = None) -> Logged:
    """Send a pending-upload file (or any JSON report) to MLflow with the same code as a live run.

    The tracking URI is `tracking_uri`, else $MLFLOW_TRACKING_URI, else the one the file records.
    """
    from ..run_json import run_from_report

    data = json.loads(path.read_text(encoding="utf-8"))
    saved = data.get(PENDING_KEY) or {}
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or saved.get("tracking_uri")
    name = experiment or saved.get("experiment")
    if not uri or not name:
        raise MlflowReportError(f"{path} does not record where it was going; pass --tracking-uri and --experiment")
    if "session" in saved:
        meta = SessionMeta.from_dict(saved["session"])
    else:  # a plain JSON report: only its creation time is known
        created = (
            _dt.datetime.fromisoformat(data["created"]).timestamp() * 1000
            if data.get("created")
            else time.time() * 1000
        )
        meta = SessionMeta(started_ms=int(created), ended_ms=int(created), exit_status=data.get("exit_status"))
    same_store = uri == saved.get("tracking_uri")
    return log_run(
        run_from_report(data),
        meta,
        uri,
        name,
        artifact_location=saved.get("artifact_location") if same_store else None,
        prompt_prefix=saved.get("prompt_prefix") or "",
    )


# --------------------------------------------------------------------------- runs


def _parent_tags(run: RunSummary, meta: SessionMeta) -> dict[str, str]:
    from .. import __version__

    models = sorted({m for s in run.suites for m in s.models})
    tags = {
        "promptopt.session": "true",
        "promptopt.gates_passed": _flag(run.gates_passed),
        "promptopt.exit_status": "" if meta.exit_status is None else str(meta.exit_status),
        "promptopt.ci": _flag(meta.ci),
        "promptopt.pytest_args": shlex.join(meta.pytest_args),
        "promptopt.models": ", ".join(models),
        "promptopt.plugin_version": __version__,
        "promptopt.rootdir": meta.rootdir,
        "mlflow.note.content": _note(run),
    }
    if meta.git_commit:
        tags["mlflow.source.git.commit"] = meta.git_commit
    if meta.git_branch:
        tags["mlflow.source.git.branch"] = meta.git_branch
    if run.baseline is not None:  # --promptopt-baseline (mlflow_baseline.py)
        tags["promptopt.baseline"] = run.baseline.ref
        tags["promptopt.baseline_run_id"] = run.baseline.run_id or ""
    return _clean_tags(tags)


def _parent_metrics(run: RunSummary) -> dict[str, float | None]:
    passed = sum(s.passed for s in run.suites)
    failed = sum(s.failed for s in run.suites)
    repairs: dict[str, float | None] = {}
    if run.repairs:  # --promptopt-repair
        repairs = {"repairs": len(run.repairs), "repaired": sum(1 for r in run.repairs if r.status == "repaired")}
    return {
        **repairs,
        "suites": len(run.suites),
        "cases": sum(s.cases for s in run.suites),
        "passed": passed,
        "failed": failed,
        "errors": sum(s.errors for s in run.suites),
        "pass_rate": passed / (passed + failed) if passed + failed else None,
        "gates_failed": len(run.failed_gates()),
    }


def _log_suite(
    client: Any,
    experiment_id: str,
    parent: str,
    suite: SuiteSummary,
    meta: SessionMeta,
    problems: list[str],
    baseline: Any = None,
    prompt_prefix: str = "",
) -> str:
    linked = _prompt_versions(client, suite, problems, prompt_prefix)
    tags = {
        "mlflow.parentRunId": parent,
        "promptopt.suite": suite.info.name,
        "promptopt.suite_id": suite.info.id,  # the key a later baseline comparison matches on
        "promptopt.suite_file": suite.info.file,
        "promptopt.models": ", ".join(suite.models),
        "promptopt.gates_passed": _flag(suite.gates_passed),
        **{f"promptopt.gate.{_key(g.name)}": "passed" if g.passed else "failed" for g in suite.gates},
    }
    if suite.cases_file is not None:  # a dataset suite: its rows are the `cases/` artifacts
        tags["promptopt.dataset"] = "true"
        tags["promptopt.cases_file"] = suite.cases_file
    if linked:  # MLflow's own link from a run to the prompt versions it used (the UI shows it)
        tags[LINKED_PROMPTS_TAG] = json.dumps(linked)
    child = client.create_run(
        experiment_id, start_time=meta.started_ms, tags=_clean_tags(tags), run_name=suite.info.name
    ).info.run_id
    with _terminate_on_error(client, child):
        templates = _templates(suite)
        _log_batch(client, child, metrics=_suite_metrics(suite, baseline), params=_suite_params(suite, templates))
        if suite.cases_file is None:
            client.log_table(child, _case_table(suite.results), TABLE_FILE)
        else:
            _log_dataset_cases(client, child, suite, problems)
        text = meta.suite_files.get(suite.info.file)
        if text is not None:
            client.log_text(child, text, f"suite/{Path(suite.info.file).name}")
        for index, template in templates.items():
            client.log_text(child, scrub(template), f"prompts/template-{index}.txt")
        client.log_text(child, _rendered_prompts(suite), "prompts/rendered.md")
        client.set_terminated(child, "FINISHED", end_time=meta.ended_ms)
    return child


def registry_name(suite_name: str, index: int, several: bool, prefix: str = "") -> str:
    """The Prompt Registry name of a suite's own prompt: `prefix` (a Unity Catalog registry needs
    `catalog.schema.`), then the suite name as a slug (lowercase letters, digits, `_ - .`), plus
    `-p<index>` when the suite has several prompts."""
    slug = re.sub(r"[^a-z0-9_.\-]+", "-", suite_name.lower()).strip("-.") or "promptopt-suite"
    return prefix + (f"{slug}-p{index}" if several else slug)


def _prompt_versions(client: Any, suite: SuiteSummary, problems: list[str], prefix: str = "") -> list[dict[str, str]]:
    """The prompt versions a suite tested, for the child run's `mlflow.linkedPrompts` tag.

    Registry prompts link the version they resolved to. A suite file's own (inline or file)
    prompts are registered under `registry_name`, as a new version only when the text differs
    from the latest one. A failure is a problem to warn about, never a failed run. (The tag is
    written at run creation in MLflow's format: `MlflowClient.link_prompt_version_to_run` writes
    through the global tracking URI in MLflow 3.17, not the client's.)"""
    from .prompts import RegistryError, parse_uri

    linked: list[dict[str, str]] = []

    def link(name: str, version: Any) -> None:
        entry = {"name": name, "version": str(version)}
        if entry not in linked:
            linked.append(entry)

    for uri in sorted({u for r in suite.results for u in r.registry_prompts}):
        with contextlib.suppress(RegistryError):
            name, version, _ = parse_uri(uri)
            link(name, version)
    if suite.info.kind != "file":
        return linked
    templates = _templates(suite)
    own = {r.prompt_index or 0 for r in suite.results if r.template is not None and not r.registry_prompts}
    for index in sorted(own & set(templates)):
        name = registry_name(suite.info.name, index, len(templates) > 1, prefix)
        try:
            link(name, _register_prompt(client, name, scrub(templates[index]), f"{suite.info.file} prompts[{index}]"))
        except Exception as exc:  # a name taken by a model, a registry that refuses: warn, log the rest
            problems.append(
                f"suite '{suite.info.name}': prompts[{index}] was not registered as '{name}': {_one_line(exc)}"
            )
    return linked


def _register_prompt(client: Any, name: str, template: str, origin: str, *, proposal: bool = False) -> int:
    """The version holding `template`: the latest one if its text is the same, else a new one.

    `proposal`: a repair's proposal, tagged as one. A suite's own prompt is compared with the
    newest version that is not a proposal, so registering a proposal does not make the next run
    of the unchanged suite register its prompt again."""
    from mlflow.exceptions import MlflowException

    if client.get_prompt(name) is not None:
        try:
            latest = client.get_prompt_version_by_alias(name, "latest")
        except MlflowException:
            latest = None  # a prompt without versions
        if latest is not None and latest.template == template:
            return int(latest.version)
        if latest is not None and not proposal and _is_proposal(latest):
            own = _newest_own_version(client, name, int(latest.version))
            if own is not None and own.template == template:
                return int(own.version)
    if proposal:
        return int(
            client.register_prompt(
                name, template, commit_message=f"pytest-promptopt repair: {origin}", tags={PROPOSAL_TAG: "proposal"}
            ).version
        )
    return int(client.register_prompt(name, template, commit_message=f"pytest-promptopt: {origin}").version)


def _is_proposal(version: Any) -> bool:
    return (getattr(version, "tags", None) or {}).get(PROPOSAL_TAG) == "proposal"


def _newest_own_version(client: Any, name: str, latest: int, look_back: int = 20) -> Any:
    """The newest version before `latest` that is not a repair proposal (None if none is near)."""
    from mlflow.exceptions import MlflowException

    for number in range(latest - 1, max(0, latest - 1 - look_back), -1):
        try:
            version = client.get_prompt_version(name, number)
        except MlflowException:
            continue  # a deleted version
        if version is not None and not _is_proposal(version):
            return version
    return None


# --------------------------------------------------------------------------- repairs


def _repair_registry_name(run: RunSummary, repair: Any, prefix: str) -> str:
    """Where a proposal is registered: the registered prompt the suite referenced
    (`prompts:/name@alias`), else the name under which the suite's own prompt is registered."""
    from .prompts import RegistryError, parse_uri

    suite = next((s for s in run.suites if s.info.id == repair.suite), None)
    if suite is not None:
        for result in suite.results:
            if (result.prompt_index or 0) == repair.prompt_index and result.registry_prompts:
                with contextlib.suppress(RegistryError):
                    return parse_uri(result.registry_prompts[0])[0]
    several = len(_templates(suite)) > 1 if suite is not None else repair.prompt_index > 0
    return registry_name(repair.suite_name, repair.prompt_index, several, prefix)


def _register_proposal(client: Any, run: RunSummary, repair: Any, problems: list[str], prefix: str) -> str | None:
    """A winning proposal as a new version of its prompt, with the alias `candidate`; its URI.
    A failure is a problem to warn about: the repair is still logged and its files written."""
    if repair.status != "repaired" or repair.prompt is None:
        return None
    name = _repair_registry_name(run, repair, prefix)
    origin = f"{repair.suite} prompts[{repair.prompt_index}] by {repair.optimizer}"
    if repair.heldout_before is not None and repair.heldout_after is not None:
        origin += f", held-out {repair.heldout_before.describe()} -> {repair.heldout_after.describe()}"
    try:
        version = _register_prompt(client, name, scrub(repair.prompt), origin, proposal=True)
        client.set_prompt_alias(name, CANDIDATE_ALIAS, version)
    except Exception as exc:  # a name taken by a model, a registry that refuses: warn, log the rest
        problems.append(
            f"repair of '{repair.suite_name}' prompts[{repair.prompt_index}]: the proposal was not registered "
            f"as '{name}': {_one_line(exc)}"
        )
        return None
    return f"prompts:/{name}/{version}"


def _log_repair(
    client: Any, experiment_id: str, parent: str, repair: Any, meta: SessionMeta, registry_uri: str | None
) -> str:
    """One repair as a child run: what was repaired and how (params), the pass rates before and
    after and the calls (metrics), the proposal, the original and the diff (artifacts)."""
    from ..report.terminal import repair_lines

    tags = {
        "mlflow.parentRunId": parent,
        KIND_TAG: "repair",
        # Not `promptopt.suite`: a baseline comparison reads the runs with that tag as suites.
        "promptopt.repair.suite": repair.suite_name,
        "promptopt.repair.suite_id": repair.suite,
        "promptopt.repair.status": repair.status,
        "mlflow.note.content": "\n".join(repair_lines([repair], {0: registry_uri} if registry_uri else None)),
    }
    if registry_uri is not None:
        from .prompts import parse_uri

        name, version, _ = parse_uri(registry_uri)
        tags["promptopt.repair.registry_uri"] = registry_uri
        tags[LINKED_PROMPTS_TAG] = json.dumps([{"name": name, "version": str(version)}])
    if repair.file:
        tags["promptopt.repair.file"] = repair.file
    run_name = f"repair {repair.suite_name} prompt {repair.prompt_index}"
    child = client.create_run(
        experiment_id, start_time=meta.started_ms, tags=_clean_tags(tags), run_name=run_name
    ).info.run_id
    with _terminate_on_error(client, child):
        _log_batch(client, child, metrics=_repair_metrics(repair), params=_repair_params(repair))
        data = redact(repair.to_dict())
        client.log_text(child, json.dumps(data, indent=2, ensure_ascii=False, default=str), "repair/result.json")
        client.log_text(child, scrub(repair.original), "repair/original.txt")
        if repair.prompt is not None:
            suffix = Path(repair.file).suffix if repair.file else ".txt"
            client.log_text(child, scrub(repair.prompt), f"repair/proposal{suffix or '.txt'}")
        if repair.diff:
            client.log_text(child, scrub(repair.diff), "repair/proposal.diff")
        client.set_terminated(child, "FINISHED", end_time=meta.ended_ms)
    return child


def _repair_params(repair: Any) -> dict[str, str]:
    params = {
        "suite": repair.suite_name,
        "suite_id": repair.suite,
        "prompt_index": repair.prompt_index,
        "model": repair.model,
        "optimizer": repair.optimizer,
        "seed": repair.seed,
        "budget": repair.budget,
        "status": repair.status,
        "reason": repair.reason,
        "weak_estimate": _flag(repair.weak_estimate),
        "applied": _flag(repair.applied),
        "heldout_cases": len(repair.heldout_cases),
        "insample_cases": len(repair.insample_cases),
    }
    return {k: _truncate(safe_text(str(v)), _MAX_PARAM_VALUE) for k, v in params.items() if v != ""}


def _repair_metrics(repair: Any) -> dict[str, float | None]:
    def rate(score: Any) -> float | None:
        return None if score is None else score.pass_rate

    return {
        "heldout_before": rate(repair.heldout_before),
        "heldout_after": rate(repair.heldout_after),
        "insample_before": rate(repair.insample_before),
        "insample_after": rate(repair.insample_after),
        "calls_task": repair.calls.task_calls,
        "calls_proposer": repair.calls.proposer_calls,
        "calls_judge": repair.calls.judge_calls,
        "calls_projected": repair.projected.total,
        "tokens_task": repair.calls.task_tokens,
        "tokens_proposer": repair.calls.proposer_tokens,
        "tokens_judge": repair.calls.judge_tokens,
        "cache_hits": repair.calls.cache_hits,
        "duration_s": repair.duration_s,
    }


def _templates(suite: SuiteSummary) -> dict[int, str]:
    templates: dict[int, str] = dict(suite.dataset.templates) if suite.dataset is not None else {}
    for result in suite.results:
        if result.template is not None:
            templates.setdefault(result.prompt_index or 0, result.template)
    return dict(sorted(templates.items()))


def _suite_params(suite: SuiteSummary, templates: Mapping[int, str]) -> dict[str, str]:
    import hashlib

    params = {
        "suite_name": suite.info.name,
        "suite_file": suite.info.file,
        "suite_kind": suite.info.kind,
        "model": ", ".join(suite.models),
    }
    for index, template in templates.items():
        params[f"prompt.{index}.template"] = template
        params[f"prompt.{index}.sha256"] = hashlib.sha256(template.encode("utf-8")).hexdigest()
    model_params: dict[str, Any] = {}
    for result in suite.results:
        model_params.setdefault(result.model or "model", result.model_params)
    for model, values in model_params.items():
        params[f"model_params.{_key(model)}"] = json.dumps(redact(values), sort_keys=True, default=str)
    for gate in suite.gates:
        params[f"gate.{_key(gate.name)}.threshold"] = f"{gate.threshold:g}"
    return {k: _truncate(scrub(str(v)), _MAX_PARAM_VALUE) for k, v in params.items()}


def _suite_metrics(suite: SuiteSummary, run_baseline: Any = None) -> dict[str, float | None]:
    totals = suite.totals()
    metrics: dict[str, float | None] = {
        "pass_rate": suite.pass_rate,
        "mean_score": suite.mean_score(),
        "cases": suite.cases,
        "passed": suite.passed,
        "failed": suite.failed,
        "errors": suite.errors,
        "latency_p50_ms": suite.latency_percentile(0.5),
        "latency_p95_ms": suite.latency_percentile(0.95),
        "prompt_tokens": totals["prompt_tokens"],
        "completion_tokens": totals["completion_tokens"],
        "cost": totals["cost"],
        "calls": totals["calls"],
        "cache_hits": totals["cache_hits"],
        "duration_s": totals["duration_s"],
    }
    if suite.repeats > 1:
        metrics.update({"repeats": suite.repeats, "pass_k": suite.pass_k, "flaky": len(suite.flaky)})
    metrics.update({f"metric.{_key(name)}": value for name, value in suite.metric_means().items()})
    metrics.update({f"gate.{_key(g.name)}": g.value for g in suite.gates})
    compared = run_baseline.suites.get(suite.info.id) if run_baseline is not None else None
    if compared is not None:
        metrics.update({"baseline_pass_rate": compared.baseline_pass_rate, "pass_rate_delta": compared.delta})
    return metrics


def _log_dataset_cases(client: Any, run_id: str, suite: SuiteSummary, problems: list[str]) -> None:
    """A dataset suite's per-case Parquet parts as artifacts under `cases/`, and, when it has at
    most TABLE_ROWS rows, the `cases.json` table too (read back from the parts)."""
    folder = Path(suite.cases_file or "")
    if not folder.is_dir():
        problems.append(f"suite '{suite.info.name}': its per-case table {folder} is gone; only its stats were logged")
        return
    client.log_artifacts(run_id, str(folder), CASES_DIR)
    if suite.cases <= TABLE_ROWS:
        from ..runners.dataset import iter_results

        client.log_table(run_id, _case_table(list(iter_results(folder))), TABLE_FILE)


def _case_table(results: Sequence[Any]) -> dict[str, list[Any]]:
    """One row per case; the MLflow UI shows it (log_table). JSON columns stay strings so every
    cell is a scalar the UI can filter."""
    rows = [redact({**r.to_dict(), "status": r.status}) for r in results]
    return {
        column: [
            json.dumps(row.get(column), ensure_ascii=False, sort_keys=True, default=str)
            if column in _JSON_COLUMNS
            else row.get(column)
            for row in rows
        ]
        for column in TABLE_COLUMNS
    }


def _rendered_prompts(suite: SuiteSummary) -> str:
    parts = [f"# {suite.info.name}: rendered prompts\n"]
    for result in suite.results:
        parts.append(f"## {result.name} ({result.case_id})\n\n```\n{result.prompt}\n```\n")
    return scrub("\n".join(parts))


def _note(run: RunSummary) -> str:
    from ..report.terminal import repair_lines, summary_lines

    lines = summary_lines(run) + (["", "repair:", *repair_lines(run.repairs)] if run.repairs else [])
    return "```\n" + "\n".join(lines) + "\n```"


def _verify(client: Any, experiment_id: str, parent: str, run: RunSummary, children: Mapping[str, str]) -> list[str]:
    """Read back what was logged: one child run per suite and one per repair, one table row per
    case. (The table is read from its artifact: `MlflowClient.load_table` searches runs through
    the global tracking URI in MLflow 3.17, not the client's.)"""
    problems = []
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", max_results=1000
    )
    repairs = [r for r in found if r.data.tags.get(KIND_TAG) == "repair"]
    suites = len(found) - len(repairs)
    if suites != len(run.suites):
        problems.append(f"{suites} child runs found for {len(run.suites)} suites")
    if len(repairs) != len(run.repairs):
        problems.append(f"{len(repairs)} repair runs found for {len(run.repairs)} repairs")
    with tempfile.TemporaryDirectory(prefix="promptopt-mlflow-") as tmp:
        for suite in run.suites:
            run_id = children[suite.info.id]
            if suite.cases_file is not None:  # a dataset suite: its Parquet parts, and a table when small
                if Path(suite.cases_file).is_dir() and not client.list_artifacts(run_id, CASES_DIR):
                    problems.append(f"suite '{suite.info.name}': no per-case table under '{CASES_DIR}/'")
                if suite.cases > TABLE_ROWS or not Path(suite.cases_file).is_dir():
                    continue
            local = client.download_artifacts(run_id, TABLE_FILE, tmp)
            rows = len(json.loads(Path(local).read_text(encoding="utf-8")).get("data", []))
            if rows != suite.cases:
                problems.append(f"suite '{suite.info.name}': the case table has {rows} rows for {suite.cases} cases")
    return problems


# --------------------------------------------------------------------------- helpers


def _experiment_id(client: Any, name: str, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:
            experiment = client.get_experiment_by_name(name)  # created meanwhile by another session
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise MlflowReportError(
            f"experiment '{name}' is deleted; restore it or choose another with --promptopt-experiment"
        )
    return experiment.experiment_id


def _log_batch(
    client: Any, run_id: str, *, metrics: Mapping[str, float | None], params: Mapping[str, str] | None = None
) -> None:
    from mlflow.entities import Metric, Param

    stamp = int(time.time() * 1000)
    metric_list = [Metric(k, float(v), stamp, 0) for k, v in metrics.items() if v is not None]
    param_list = [Param(k, v) for k, v in (params or {}).items()]
    for start in range(0, max(len(metric_list), len(param_list), 1), _MAX_PER_BATCH):
        end = start + _MAX_PER_BATCH
        client.log_batch(run_id, metrics=metric_list[start:end], params=param_list[start:end])


@contextlib.contextmanager
def _terminate_on_error(client: Any, run_id: str) -> Iterator[None]:
    """A run cut short is marked FAILED (best effort), so it never looks like a finished session."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, "FAILED")
        raise


@contextlib.contextmanager
def _mlflow_calls() -> Iterator[None]:
    """Import mlflow, then keep its network limits short and its loggers, progress bars and
    warnings quiet, for the duration of the logging only."""
    saved = {name: os.environ.get(name) for name in _ENV_DEFAULTS}
    for name, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [logger.level for logger in loggers]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                import mlflow  # noqa: F401  (it sets its logger's level on import, hence the order)
            except ImportError:
                raise MlflowReportError(
                    "mlflow is not installed; pip install 'pytest-promptopt[mlflow]' (or pass --promptopt-no-mlflow)"
                ) from None
            for logger in loggers:
                logger.setLevel(logging.WARNING)  # "Creating initial MLflow database tables..." and the like
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _local_artifacts(target: MlflowSettings) -> str | None:
    """Artifacts of the project's own store live next to it (MLflow would use ./mlruns of the cwd)."""
    if not target.local_store:
        return None
    db = Path(target.tracking_uri[len("sqlite:///") :])
    return (db.parent / "mlruns").as_uri()


def _git(rootdir: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=rootdir, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)


def safe_text(text: str) -> str:
    """`text` without URL credentials (`https://user:pw@host`) or secret environment values."""
    return scrub(_USERINFO.sub(r"\1***@", text))


def safe_uri(uri: str) -> str:
    return safe_text(uri)


def _clean_tags(tags: Mapping[str, str]) -> dict[str, str]:
    return {k: _truncate(safe_text(str(v)), _MAX_TAG_VALUE) for k, v in tags.items()}


def _key(name: str) -> str:
    """A param/metric key MLflow accepts (alphanumerics, `_ - . space`; no path tricks)."""
    key = re.sub(r"[^\w.\- ]", "_", name).strip() or "_"
    return "_" + key if key.startswith(".") else key


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 40] + " ... (truncated; see the artifacts)"


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    # requests/urllib3 bury the cause ("Connection refused", a timeout) in a long retry message.
    cause = re.search(r"(\[Errno -?\d+\][^\"')]*|timed out|Name or service not known)", text)
    if cause and ("Max retries exceeded" in text or "timed out" in text):
        return safe_text(f"cannot reach the tracking server: {cause.group(1).strip()}")
    if not isinstance(exc, MlflowReportError):
        text = f"{type(exc).__name__}: {text}"
    return safe_text(text[:400])
