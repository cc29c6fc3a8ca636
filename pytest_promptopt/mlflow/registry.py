"""Writing to the MLflow Prompt Registry: a suite file's own prompts, registered under a name
derived from the suite, and a repair's winning proposal, registered as a new version with the
alias `candidate`. (Reading references, `prompts:/name/3`, is prompts.py.)

Called by runs.py with its `MlflowClient`, under `mlflow_calls()`. A prompt that cannot be
registered is a problem to warn about, never a failed run.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from ..redact import scrub
from ..summary import RunSummary, SuiteSummary
from .client import one_line
from .layout import templates
from .prompts import SCHEME, RegistryError, parse_uri

__all__ = ["CANDIDATE_ALIAS", "PROPOSAL_TAG", "prompt_versions", "register_proposal", "registry_name"]

CANDIDATE_ALIAS = "candidate"  # the registry alias of a repair's proposal
PROPOSAL_TAG = "promptopt.repair"  # the version tag marking a registered proposal


def registry_name(suite_name: str, index: int, several: bool, prefix: str = "") -> str:
    """The Prompt Registry name of a suite's own prompt: `prefix` (a Unity Catalog registry needs
    `catalog.schema.`), then the suite name as a slug (lowercase letters, digits, `_ - .`), plus
    `-p<index>` when the suite has several prompts."""
    slug = re.sub(r"[^a-z0-9_.\-]+", "-", suite_name.lower()).strip("-.") or "promptopt-suite"
    return prefix + (f"{slug}-p{index}" if several else slug)


def prompt_versions(client: Any, suite: SuiteSummary, problems: list[str], prefix: str = "") -> list[dict[str, str]]:
    """The prompt versions a suite tested, for the child run's `mlflow.linkedPrompts` tag.

    Registry prompts link the version they resolved to. A suite file's own (inline or file)
    prompts are registered under `registry_name`, as a new version only when the text differs
    from the latest one. A failure is a problem to warn about, never a failed run. (The tag is
    written at run creation in MLflow's format: `MlflowClient.link_prompt_version_to_run` writes
    through the global tracking URI in MLflow 3.17, not the client's.)"""
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
    found = templates(suite)
    own = {r.prompt_index or 0 for r in suite.results if r.template is not None and not r.registry_prompts}
    for index in sorted(own & set(found)):
        name = registry_name(suite.info.name, index, len(found) > 1, prefix)
        try:
            link(name, _register_prompt(client, name, scrub(found[index]), f"{suite.info.file} prompts[{index}]"))
        except Exception as exc:  # a name taken by a model, a registry that refuses: warn, log the rest
            problems.append(
                f"suite '{suite.info.name}': prompts[{index}] was not registered as '{name}': {one_line(exc)}"
            )
    return linked


def register_proposal(client: Any, run: RunSummary, repair: Any, problems: list[str], prefix: str) -> str | None:
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
            f"as '{name}': {one_line(exc)}"
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
