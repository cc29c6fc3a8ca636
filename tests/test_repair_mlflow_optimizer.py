"""`DemoRepairOptimizer` (issue 6, item 6): the demonstration repair as an MLflow prompt optimiser.

The end-to-end tests run `mlflow.genai.optimize_prompts` against a real SQLite store (a copy of
test_mlflow.py's migrated template) with a registered prompt, a `predict_fn` that formats it and
asks a scripted model, and a `@scorer`. The scripted model answers an antonym question with the
bare word (what the scorer expects) only when the formatted prompt shows it demonstrations; so a
repair that works lifts every record. A second, memorising model only answers words it was
shown: demonstrations then help the optimiser's own records but not the held-out ones, and the
original must come back.

The unit tests call `optimize` with an `eval_fn` that formats candidates with
`PromptVersion.format`, as MLflow's does, but without a store.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_mlflow import migrated_store, sqlite_uri  # noqa: F401  (fixture)

mlflow = pytest.importorskip("mlflow")

from mlflow.entities.model_registry import PromptVersion  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.genai.optimize.types import EvaluationResultRecord  # noqa: E402

from pytest_promptopt import DemoRepairOptimizer  # noqa: E402
from pytest_promptopt.repair.mlflow_optimizer import ANSWER_LABEL  # noqa: E402

pytestmark = pytest.mark.timeout(240)

ANTONYMS = {
    "hot": "cold",
    "big": "small",
    "up": "down",
    "happy": "sad",
    "fast": "slow",
    "light": "dark",
    "open": "closed",
    "rich": "poor",
}
RECORDS = [{"inputs": {"word": w}, "outputs": a} for w, a in ANTONYMS.items()]
ASKED = re.compile(r'Antonym of "(\w+)"')
CHAT = [
    {"role": "system", "content": "You answer antonym questions."},
    {"role": "user", "content": 'Antonym of "{{word}}"?'},
]
TEXT = 'Antonym of "{{ word }}"? Reply briefly.'


def shown_words(prompt: str | list[dict[str, str]]) -> tuple[str, list[str]]:
    """The word asked about, and the words of the demonstrations the prompt shows."""
    text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt if m["role"] == "user")
    *shown, asked = ASKED.findall(text)
    return asked, shown


def learner(prompt: str | list[dict[str, str]]) -> str:
    """Copies the answer format from any demonstration; answers in a sentence without one."""
    word, shown = shown_words(prompt)
    return ANTONYMS[word] if shown else f"The opposite of {word} is {ANTONYMS[word]}."


def memoriser(prompt: str | list[dict[str, str]]) -> str:
    """Answers with the bare word only for a word it was shown (so demos help only their own records)."""
    word, shown = shown_words(prompt)
    return ANTONYMS[word] if word in shown else f"The opposite of {word} is {ANTONYMS[word]}."


@pytest.fixture
def store(tmp_path: Path, migrated_store: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:  # noqa: F811
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri  # no public way to restore the global URI

    shutil.copy(migrated_store, tmp_path / "mlflow.db")
    uri = sqlite_uri(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    # mlflow.genai's evaluation deadlocks SQLite's connection pool with its default worker count.
    monkeypatch.setenv("MLFLOW_GENAI_EVAL_MAX_WORKERS", "4")
    monkeypatch.setenv("MLFLOW_GENAI_EVAL_PREDICT_RATE_LIMIT", "0")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    with warnings.catch_warnings(), _use_tracking_uri(uri):
        warnings.simplefilter("ignore")  # SQLAlchemy and MLflow deprecations
        # Artifacts (optimize_prompts' dataset, the optimiser's report) go to tmp_path, not ./mlruns.
        mlflow.set_experiment(experiment_id=mlflow.create_experiment("demo-repair", (tmp_path / "artifacts").as_uri()))
        yield uri


def optimise(name: str, template: Any, model: Callable[..., str], optimizer: DemoRepairOptimizer) -> Any:
    from mlflow.genai.scorers import scorer

    prompt = mlflow.genai.register_prompt(name=name, template=template)

    def predict_fn(word: str) -> str:
        # optimize_prompts swaps the template of every loaded version for its candidate.
        return model(prompt.format(word=word))

    @scorer
    def exact(outputs: str, expectations: dict[str, Any]) -> float:
        return float(outputs == expectations["expected_response"])

    return mlflow.genai.optimize_prompts(
        predict_fn=predict_fn, train_data=RECORDS, prompt_uris=[prompt.uri], optimizer=optimizer, scorers=[exact]
    )


def test_a_chat_prompt_gets_demonstration_turns_that_beat_the_original(store):
    optimizer = DemoRepairOptimizer(seed=0, max_demos=2, candidates=3)
    result = optimise("antonym-chat", CHAT, learner, optimizer)

    report = optimizer.last_report
    assert report.status == "repaired", report.reason
    assert (result.initial_eval_score, result.final_eval_score) == (0.0, 1.0)
    assert result.final_eval_score_per_scorer == {"exact": 1.0}
    assert (report.heldout_before, report.heldout_after) == (0.0, 1.0) and len(report.heldout_records) == 3
    assert report.eval_records <= optimizer.budget

    version = result.optimized_prompts[0]
    assert (version.name, version.version, version.is_text_prompt) == ("antonym-chat", 2, False)
    messages = version.template
    assert messages[0] == CHAT[0] and messages[-1] == CHAT[1]  # the system message and the question, kept
    turns = messages[1:-1]
    assert [m["role"] for m in turns] == ["user", "assistant"] * len(report.demos) and 1 <= len(report.demos) <= 2
    for demo, (user, assistant) in zip(report.demos, zip(turns[::2], turns[1::2])):
        assert user["content"] == f'Antonym of "{demo["vars"]["word"]}"?'
        assert assistant["content"] == ANTONYMS[demo["vars"]["word"]] == demo["output"]
        assert RECORDS.index({"inputs": demo["vars"], "outputs": demo["output"]}) in report.optimizer_records
    assert version.variables == {"word"}

    # The registered version is what a predict_fn loads: it formats, demonstrations first.
    loaded = mlflow.genai.load_prompt("prompts:/antonym-chat/2")
    formatted = loaded.format(word="rich")
    assert formatted[-1]["content"] == 'Antonym of "rich"?' and len(formatted) == len(messages)
    assert learner(formatted) == "poor"

    run = mlflow.last_active_run()
    assert run.data.metrics["final_eval_score"] == 1.0 and run.data.metrics["promptopt.heldout_final_score"] == 1.0
    assert "promptopt_demo_repair.json" in {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}


def test_a_text_prompt_stays_text_with_worked_examples_and_keeps_its_variable(store):
    optimizer = DemoRepairOptimizer(seed=0, max_demos=2, candidates=3)
    result = optimise("antonym-text", TEXT, learner, optimizer)

    assert optimizer.last_report.status == "repaired", optimizer.last_report.reason
    assert result.final_eval_score > result.initial_eval_score
    version = result.optimized_prompts[0]
    assert version.is_text_prompt and version.variables == {"word"}
    assert version.template.endswith("\n" + TEXT) and version.template.count("{{ word }}") == 1
    for demo in optimizer.last_report.demos:
        word = demo["vars"]["word"]
        assert f'Antonym of "{word}"? Reply briefly.\n{ANSWER_LABEL}{ANTONYMS[word]}' in version.template
    assert version.format(word="big").endswith('Antonym of "big"? Reply briefly.')


def test_demonstrations_that_only_help_their_own_records_are_not_proposed(store):
    optimizer = DemoRepairOptimizer(seed=0, max_demos=4, candidates=3)
    result = optimise("antonym-memo", CHAT, memoriser, optimizer)

    report = optimizer.last_report
    assert report.status == "kept" and "held-out" in report.reason
    assert report.insample_after > report.insample_before  # the search found demos that help in-sample...
    assert report.heldout_after == report.heldout_before == 0.0  # ...and nothing on records it never saw
    version = result.optimized_prompts[0]
    assert version.template == CHAT
    assert result.final_eval_score == result.initial_eval_score == 0.0


# ---- optimize() directly, with an eval_fn that formats like MLflow's -------------------------------


def fake_eval_fn(model: Callable[..., str], chat: bool) -> Callable[..., list[EvaluationResultRecord]]:
    def eval_fn(candidates: dict[str, str], dataset: list[dict[str, Any]]) -> list[EvaluationResultRecord]:
        (template,) = candidates.values()
        version = PromptVersion("p", 1, json.loads(template) if chat else template)
        out = []
        for record in dataset:
            outputs = model(version.format(**record["inputs"]))
            score = float(outputs == record["outputs"])
            out.append(
                EvaluationResultRecord(
                    inputs=record["inputs"],
                    outputs=outputs,
                    expectations=record["outputs"],
                    score=score,
                    trace=None,
                    rationales={},
                    individual_scores={"exact": score},
                )
            )
        return out

    return eval_fn


def test_the_same_seed_gives_the_same_prompt_and_another_seed_another_split():
    def run(seed: int) -> tuple[str, Any]:
        optimizer = DemoRepairOptimizer(seed=seed, max_demos=2, candidates=4)
        out = optimizer.optimize(fake_eval_fn(learner, chat=False), RECORDS, {"p": TEXT}, enable_tracking=False)
        return out.optimized_prompts["p"], optimizer.last_report

    (first, report), (again, _), (_, other) = run(0), run(0), run(1)
    assert first == again and report.status == "repaired"
    assert report.optimizer_records != other.optimizer_records


def test_the_budget_bounds_eval_fn_records_and_too_small_a_budget_keeps_the_original():
    optimizer = DemoRepairOptimizer(seed=0, candidates=6, budget=20)
    optimizer.optimize(fake_eval_fn(learner, chat=False), RECORDS, {"p": TEXT}, enable_tracking=False)
    assert optimizer.last_report.eval_records <= 20 and len(optimizer.last_report.tried) == 1

    small = DemoRepairOptimizer(budget=10)
    out = small.optimize(fake_eval_fn(learner, chat=False), RECORDS, {"p": TEXT}, enable_tracking=False)
    assert out.optimized_prompts == {"p": TEXT} and small.last_report.eval_records == 0
    assert "budget" in small.last_report.reason


BRACED = [{"inputs": {"word": "{{x}}"}, "outputs": "{% raw %}"}] * 3 + RECORDS[:3]


def braced_learner(prompt: str) -> str:
    word = re.findall(r'Antonym of "([^"]+)"', prompt)[-1]
    examples = prompt.count("Antonym of") > 1
    return {"{{x}}": "{% raw %}"}.get(word, ANTONYMS.get(word, "?")) if examples else "?"


def test_a_record_that_reads_as_template_code_is_only_shown_in_a_jinja_template_escaped():
    optimizer = DemoRepairOptimizer(seed=0, heldout=0.34)
    out = optimizer.optimize(fake_eval_fn(braced_learner, chat=False), BRACED, {"p": TEXT}, enable_tracking=False)
    report = optimizer.last_report
    assert report.skipped and all("template code" in why for why in report.skipped.values())
    assert all(BRACED[i]["inputs"]["word"] == "{{x}}" for i in report.skipped)
    assert "{{x}}" not in out.optimized_prompts["p"]

    jinja = '{% if word %}Antonym of "{{ word }}"?{% endif %}'
    optimizer = DemoRepairOptimizer(seed=0, heldout=0.34)
    out = optimizer.optimize(fake_eval_fn(braced_learner, chat=False), BRACED, {"p": jinja}, enable_tracking=False)
    assert not optimizer.last_report.skipped
    shown = [d for d in optimizer.last_report.demos if d["vars"]["word"] == "{{x}}"]
    assert shown, optimizer.last_report.demos
    formatted = PromptVersion("p", 1, out.optimized_prompts["p"]).format(word="hot")
    assert f'Antonym of "{{{{x}}}}"?\n{ANSWER_LABEL}{{% raw %}}' in formatted  # escaped: shown literally


def test_one_prompt_at_a_time_and_no_scores_means_nothing_to_compare():
    with pytest.raises(MlflowException, match="one prompt at a time"):
        DemoRepairOptimizer().optimize(fake_eval_fn(learner, chat=False), RECORDS, {"a": TEXT, "b": TEXT})

    def unscored(candidates: dict[str, str], dataset: list[dict[str, Any]]) -> list[EvaluationResultRecord]:
        return [EvaluationResultRecord(r["inputs"], "x", None, None, None, {}) for r in dataset]

    optimizer = DemoRepairOptimizer()
    out = optimizer.optimize(unscored, RECORDS, {"p": TEXT}, enable_tracking=False)
    assert out.optimized_prompts == {"p": TEXT} and "no scores" in optimizer.last_report.reason
    out = optimizer.optimize(None, [], {"p": TEXT}, enable_tracking=False)  # optimize_prompts' zero-shot mode
    assert out.optimized_prompts == {"p": TEXT} and out.initial_eval_score is None
