"""Writing to the MLflow Prompt Registry: a suite file's own prompts, registered under a name
derived from the suite, and a repair's winning proposal, registered as a new version with the
alias `candidate`. (Reading references, `prompts:/name/3`, is prompts.py.)

Each prompt is linked to the session's experiment only (its Prompts page lists it): the prompt is
created with MLflow's `_mlflow_experiment_ids` tag, never through `register_prompt`, which links
a prompt to the active experiment (none here, so "Default") from a background thread. A chat
template (a JSON list of `{role, content}`) is registered as a chat prompt, so
`load_prompt(...).format(...)` returns messages; each version carries the model config it was
tested with (model, max_tokens, temperature, ...) and its own tags (a proposal's
`promptopt.repair: proposal` is on its version, never the prompt).

Called by runs.py with its `MlflowClient`, under `mlflow_calls()`. A prompt that cannot be
registered is a problem to warn about, never a failed run.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..redact import scrub
from ..summary import RunSummary, SuiteSummary
from .client import one_line
from .layout import templates
from .prompts import SCHEME, RegistryError, parse_uri

__all__ = [
    "CANDIDATE_ALIAS",
    "EXPERIMENTS_TAG",
    "PROPOSAL_TAG",
    "SuitePrompts",
    "chat_template",
    "model_config",
    "prompt_versions",
    "register_proposal",
    "registry_name",
]

CANDIDATE_ALIAS = "candidate"  # the registry alias of a repair's proposal
PROPOSAL_TAG = "promptopt.repair"  # the version tag marking a registered proposal
# mlflow.prompt.constants.PROMPT_EXPERIMENT_IDS_TAG_KEY: the experiments a prompt is linked to, as
# ",1,5," (the experiment's Prompts page searches it with ILIKE '%,<id>,%')
EXPERIMENTS_TAG = "_mlflow_experiment_ids"
# Model parameters as MLflow's PromptModelConfig names them (a suite's provider config -> version)
_CONFIG_KEYS = {
    "temperature": ("temperature", float),
    "max_tokens": ("max_tokens", int),
    "top_p": ("top_p", float),
    "top_k": ("top_k", int),
    "frequency_penalty": ("frequency_penalty", float),
    "presence_penalty": ("presence_penalty", float),
}


@dataclass
class SuitePrompts:
    """The prompt versions a suite tested: all of them (the suite run's `mlflow.linkedPrompts`)
    and, by prompt index, the version each case's trace links."""

    linked: list[dict[str, str]] = field(default_factory=list)
    by_index: dict[int, dict[str, str]] = field(default_factory=dict)

    def link(self, name: str, version: Any, index: int | None = None) -> None:
        entry = {"name": name, "version": str(version)}
        if entry not in self.linked:
            self.linked.append(entry)
        if index is not None:
            self.by_index[index] = entry


def chat_template(template: str) -> list[dict[str, str]] | None:
    """A chat template's messages (a JSON list of `{role, content}` objects), else None."""
    text = template.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not data or not all(isinstance(m, dict) and set(m) == {"role", "content"} for m in data):
        return None
    if not all(isinstance(m["role"], str) and isinstance(m["content"], str) for m in data):
        return None
    return data


def model_config(results: Sequence[Any], prompt_index: int) -> dict[str, Any] | None:
    """The model config a prompt was tested with, for its registry version: the model and the
    generation parameters its suite gave (the first model, when a suite has several)."""
    result = next((r for r in results if (r.prompt_index or 0) == prompt_index and r.model), None)
    if result is None:
        return None
    config: dict[str, Any] = {"model_name": scrub(result.model)}
    params = result.model_params or {}
    for key, (name, kind) in _CONFIG_KEYS.items():
        value = params.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            config[name] = kind(value)
    stop = params.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, list) and stop and all(isinstance(s, str) for s in stop):
        config["stop_sequences"] = stop
    return config


def registry_name(suite_name: str, index: int, several: bool, prefix: str = "") -> str:
    """The Prompt Registry name of a suite's own prompt: `prefix` (a Unity Catalog registry needs
    `catalog.schema.`), then the suite name as a slug (lowercase letters, digits, `_ - .`), plus
    `-p<index>` when the suite has several prompts."""
    slug = re.sub(r"[^a-z0-9_.\-]+", "-", suite_name.lower()).strip("-.") or "promptopt-suite"
    return prefix + (f"{slug}-p{index}" if several else slug)


def prompt_versions(
    client: Any, suite: SuiteSummary, problems: list[str], prefix: str = "", experiment_id: str | None = None
) -> SuitePrompts:
    """The prompt versions a suite tested, for the child run's `mlflow.linkedPrompts` tag and the
    traces of its cases.

    Registry prompts link the version they resolved to. A suite file's own (inline or file)
    prompts are registered under `registry_name`, as a new version only when the text or the
    model config differs from the latest one, and linked to `experiment_id`. A failure is a
    problem to warn about, never a failed run. (The tag is written at run creation in MLflow's
    format: `MlflowClient.link_prompt_version_to_run` writes through the global tracking URI in
    MLflow 3.17, not the client's.)"""
    found = SuitePrompts()
    for result in suite.results:
        for uri in result.registry_prompts:
            with contextlib.suppress(RegistryError):
                name, version, _ = parse_uri(uri)
                found.link(name, version, result.prompt_index if suite.info.kind == "file" else None)
    if suite.info.kind != "file":
        return found
    texts = templates(suite)
    own = {r.prompt_index or 0 for r in suite.results if r.template is not None and not r.registry_prompts}
    for index in sorted(own & set(texts)):
        name = registry_name(suite.info.name, index, len(texts) > 1, prefix)
        try:
            version = _register_prompt(
                client,
                name,
                scrub(texts[index]),
                f"{suite.info.file} prompts[{index}]",
                experiment_id=experiment_id,
                config=model_config(suite.results, index),
                description=f"prompt {index} of the suite {suite.info.name} ({suite.info.file})",
            )
            found.link(name, version, index)
        except Exception as exc:  # a name taken by a model, a registry that refuses: warn, log the rest
            cause = one_line(exc, on=f"prompt '{name}'")
            problems.append(f"suite '{suite.info.name}': prompts[{index}] was not registered as '{name}': {cause}")
    return found


def register_proposal(
    client: Any, run: RunSummary, repair: Any, problems: list[str], prefix: str, experiment_id: str | None = None
) -> str | None:
    """A winning proposal as a new version of its prompt, with the alias `candidate` and the tag
    `promptopt.repair: proposal` on that version; its URI. A failure is a problem to warn about:
    the repair is still logged and its files written."""
    if repair.status != "repaired" or repair.prompt is None:
        return None
    name = _repair_registry_name(run, repair, prefix)
    suite = next((s for s in run.suites if s.info.id == repair.suite), None)
    # which provider's answers it was repaired on: a prompt of several providers gets a version each
    origin = f"{repair.suite} prompts[{repair.prompt_index}] on {repair.model} by {repair.optimizer}"
    if repair.heldout_before is not None and repair.heldout_after is not None:
        origin += f", held-out {repair.heldout_before.describe()} -> {repair.heldout_after.describe()}"
    try:
        version = _register_prompt(
            client,
            name,
            scrub(repair.prompt),
            origin,
            experiment_id=experiment_id,
            config=model_config(suite.results, repair.prompt_index) if suite is not None else None,
            proposal=True,
        )
        client.set_prompt_alias(name, CANDIDATE_ALIAS, version)
    except Exception as exc:  # a name taken by a model, a registry that refuses: warn, log the rest
        cause = one_line(exc, on=f"prompt '{name}'")
        problems.append(
            f"repair of '{repair.suite_name}' prompts[{repair.prompt_index}]: the proposal was not registered "
            f"as '{name}': {cause}"
        )
        return None
    return f"{SCHEME}{name}/{version}"


def _repair_registry_name(run: RunSummary, repair: Any, prefix: str) -> str:
    """Where a proposal is registered: the registered prompt the suite referenced
    (`prompts:/name@alias`), else the name under which the suite's own prompt is registered."""
    suite = next((s for s in run.suites if s.info.id == repair.suite), None)
    if suite is not None:
        for result in suite.results:
            if (result.prompt_index or 0) == repair.prompt_index and result.registry_prompts:
                with contextlib.suppress(RegistryError):
                    return parse_uri(result.registry_prompts[0])[0]
    several = len(templates(suite)) > 1 if suite is not None else repair.prompt_index > 0
    return registry_name(repair.suite_name, repair.prompt_index, several, prefix)


def _register_prompt(
    client: Any,
    name: str,
    template: str,
    origin: str,
    *,
    experiment_id: str | None = None,
    config: Mapping[str, Any] | None = None,
    description: str = "",
    proposal: bool = False,
) -> int:
    """The version holding `template` and `config`: the latest one if both are the same, else a
    new one; the prompt is created when missing, and linked to `experiment_id`.

    `proposal`: a repair's proposal, tagged as one. A suite's own prompt is compared with the
    newest version that is not a proposal, so registering a proposal does not make the next run
    of the unchanged suite register its prompt again."""
    from mlflow.exceptions import MlflowException

    body: str | list[dict[str, str]] = chat_template(template) or template
    config = _valid_config(config)
    existing = client.get_prompt(name)
    if existing is None:
        tags = {EXPERIMENTS_TAG: f",{experiment_id},"} if experiment_id is not None else None
        client.create_prompt(name, description=scrub(description) or None, tags=tags)
    else:
        _link_experiment(client, existing, experiment_id)
        try:
            latest = client.get_prompt_version_by_alias(name, "latest")
        except MlflowException:
            latest = None  # a prompt without versions
        if latest is not None and _same(latest, body, config):
            return int(latest.version)
        if latest is not None and not proposal and _is_proposal(latest):
            own = _newest_own_version(client, name, int(latest.version))
            if own is not None and _same(own, body, config):
                return int(own.version)
    message = f"pytest-promptopt repair: {origin}" if proposal else f"pytest-promptopt: {origin}"
    version = client.create_prompt_version(
        name,
        body,
        description=message,
        tags={PROPOSAL_TAG: "proposal"} if proposal else None,
        model_config=config,
    )
    return int(version.version)


def _same(version: Any, body: Any, config: Mapping[str, Any] | None) -> bool:
    return version.template == body and (getattr(version, "model_config", None) or None) == (config or None)


def _valid_config(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """`config` if MLflow's PromptModelConfig takes it (e.g. temperature >= 0), else None: a
    version without a model config beats no version."""
    if not config:
        return None
    from mlflow.entities.model_registry.prompt_version import PromptModelConfig

    try:
        return PromptModelConfig(**config).to_dict()
    except Exception:
        return None


def _link_experiment(client: Any, prompt: Any, experiment_id: str | None) -> None:
    """Add `experiment_id` to the experiments the prompt is linked to (what MLflow's own linking
    does, without its background thread)."""
    if experiment_id is None:
        return
    ids = [i for i in (prompt.tags or {}).get(EXPERIMENTS_TAG, "").split(",") if i]
    if str(experiment_id) not in ids:
        client.set_prompt_tag(prompt.name, EXPERIMENTS_TAG, "," + ",".join([*ids, str(experiment_id)]) + ",")


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
