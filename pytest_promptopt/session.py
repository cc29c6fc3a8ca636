"""The run-wide object kept in `config.stash`: models, cache, collected results, gates, reports."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from typing import Any, Callable

import pytest

from .cache import ResponseCache
from .execute import execute_case, json_safe
from .models.base import Model, ModelError
from .models.registry import ModelSpec, create_model
from .redact import redact
from .registry import PromptResolver, activate
from .registry import active as resolver_active
from .results import CaseResult, RunSummary, summarize
from .settings import Settings
from .suite.model import Case, SuiteInfo

__all__ = ["RECORD_ATTR", "PromptoptSession", "record_key", "session_key"]

RECORD_ATTR = "promptopt_record"  # the teardown report attribute that carries a case record
session_key = pytest.StashKey["PromptoptSession"]()
record_key = pytest.StashKey[str]()  # an item's encoded record, until its teardown report


class PromptoptSession:
    """One per pytest process. Workers execute cases; the controller also collects and decides.

    `make_model` is the `pytest_promptopt_make_model` hook (a conftest may supply adapters).
    """

    def __init__(self, settings: Settings, *, is_controller: bool, make_model: Callable[[ModelSpec], Any] | None = None,
                 registry_token: str | None = None) -> None:
        self.settings = settings
        self.is_controller = is_controller
        # Prompt Registry references resolve once per session: the controller's token names the
        # file its workers share (registry.py). The registry is the tracking URI's; with MLflow
        # reporting off, $MLFLOW_TRACKING_URI, else the project's store.
        self.registry_token = registry_token or uuid.uuid4().hex
        uri = settings.mlflow.tracking_uri if settings.mlflow else (
            os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(settings.rootdir / 'mlflow.db').as_posix()}")
        self.registry = PromptResolver(uri, settings.cache_path.parent / "registry" / f"{self.registry_token}.json")
        if settings.enabled:
            activate(self.registry)  # for Prompt.from_registry in Python tests
        self._make_model = make_model
        self._models: dict[str, Model] = {}
        self._models_lock = threading.Lock()
        self._cache: ResponseCache | None = None
        self.records: list[tuple[SuiteInfo, CaseResult]] = []
        self._summary: RunSummary | None = None
        self.started = time.time()
        self.mlflow: Any = None  # the MLflow reporting outcome (report/mlflow_writer.Outcome)

    # ------------------------------------------------------------------ execution (any process)

    @property
    def cache(self) -> ResponseCache:
        if self._cache is None:
            self._cache = ResponseCache(self.settings.cache_path, self.settings.cache_mode)
        return self._cache

    def model_for(self, spec: ModelSpec) -> Model:
        """One adapter per spec per process, so the bundled model loads once per worker."""
        with self._models_lock:
            model = self._models.get(spec.key)
            if model is None:
                model = self._make_model(spec) if self._make_model else None
                if model is None:
                    params = dict(spec.params)
                    if "/" in spec.id and "timeout" not in params:
                        params["timeout"] = self.settings.timeout_s
                    model = create_model(ModelSpec(spec.id, params, spec.label))
                self._models[spec.key] = model
            return model

    def adopt_model(self, model: Model) -> ModelSpec:
        """Use a model object given directly (e.g. `@pytest.mark.promptopt(model=FakeModel(...))`)."""
        spec = ModelSpec(f"object:{getattr(model, 'name', type(model).__name__)}", {"instance": id(model)}, getattr(model, "name", ""))
        with self._models_lock:
            self._models[spec.key] = model
        return spec

    def run_case(self, case: Case, nodeid: str) -> CaseResult:
        try:
            model = self.model_for(case.model)
        except ModelError as exc:
            return CaseResult(case.case_id, case.name, nodeid, error=f"model error ({case.model.display}): {exc}",
                              prompt=case.rendered_prompt, prompt_index=case.prompt_index, test_index=case.test_index, position=case.position,
                              model=case.model.display, template=case.prompt.template,
                              registry_prompts=[case.prompt.registry_uri] if case.prompt.registry_uri else [],
                              model_params=redact(json_safe(dict(case.model.params))))
        return execute_case(case, model, self.cache, nodeid)

    # ------------------------------------------------------------------ results (controller)

    @staticmethod
    def encode(info: SuiteInfo, result: CaseResult) -> str:
        """A record as a JSON string: the only form that crosses xdist safely (see STYLE.md)."""
        return json.dumps({"suite": info.to_dict(), "case": result.to_dict()}, ensure_ascii=False, default=str)

    def add_record(self, payload: str) -> None:
        data = json.loads(payload)
        self.records.append((SuiteInfo.from_dict(data["suite"]), CaseResult.from_dict(data["case"])))
        self._summary = None

    def finish(self, exit_status: int, pytest_args: list[str]) -> tuple[int, list[str]]:
        """After every case ran (on the controller): compare with a baseline, decide the gates,
        write the JSON and HTML reports and log to MLflow. Returns the session's exit status
        (a failing gate turns 0 into 1) and warnings to show."""
        run = self.summary()
        messages: list[str] = []
        baseline, mlflow = self.settings.baseline, self.settings.mlflow
        if baseline is not None and run.baseline is None and mlflow is not None:
            # --promptopt-baseline: shown by every reporter; it never gates (yet).
            from .report.mlflow_baseline import compare_with_baseline

            run.baseline = compare_with_baseline(run, baseline, mlflow.tracking_uri, mlflow.experiment)
            if run.baseline.error:
                messages.append(run.baseline.error)
        if not run.gates_passed and exit_status == 0:
            exit_status = 1
        if self.settings.report_path is not None:
            from .report.json_report import write_report

            write_report(self.settings.report_path, run, exit_status=exit_status)
        html_path = self.settings.html_path
        if html_path is not None:  # also logged to MLflow as an artifact
            from .report.html_report import write_html

            write_html(html_path, run, exit_status=exit_status)
        if mlflow is not None:
            from .report.mlflow_writer import SessionMeta, report_run

            meta = SessionMeta.collect(run, rootdir=self.settings.rootdir, pytest_args=pytest_args, started=self.started, exit_status=exit_status)
            self.mlflow = report_run(run, meta, mlflow, artifacts=[html_path] if html_path else [])
            messages.extend(self.mlflow.warnings())
        return exit_status, messages

    def summary(self) -> RunSummary:
        if self._summary is None:
            self._summary = summarize(self.records)
        return self._summary

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
        if self.is_controller:
            self.registry.discard()
        if resolver_active() is self.registry:
            activate(None)
