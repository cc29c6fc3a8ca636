"""DSPy repair (issue 6): the template round trip, the held-out split, every optimiser path with a
scripted model whose right answer is known, the budget, "no repair found", files, diff and apply.

The scripted task model answers an antonym question with the bare word only when it is shown
demonstrations (chat turns) or told "Answer with one word"; otherwise in a sentence, which the
suite's `equals` assertions fail. So a repair that works lifts every held-out case, and one
that does not leaves them failing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_promptopt.prompt import Prompt, render_prompt, render_template
from pytest_promptopt.repair.run import split_cases
from pytest_promptopt.repair.template import Demo, compose, escape_literal, prompt_diff

ANTONYMS = {
    "hot": "cold",
    "big": "small",
    "up": "down",
    "happy": "sad",
    "fast": "slow",
    "light": "dark",
    "open": "closed",
    "rich": "poor",
    "early": "late",
    "full": "empty",
}

# The scripted models, and a hook that writes the session's repairs where the test reads them
# (the controller's, after every report: pytest_unconfigure runs conftest hooks before the plugin's).
CONFTEST = """
import json
from pytest_promptopt import FakeModel

ANTONYMS = %r
HINT = "Answer with one word."

def task(request):
    word = request.messages[-1]["content"].split('"')[1]
    if len(request.messages) >= 3 or HINT in request.messages[-1]["content"]:
        return ANTONYMS[word]
    return "The opposite of %%s is %%s." %% (word, ANTONYMS[word])

def thinking(request):  # a reasoning model's answer, its thoughts first (a provider transform strips them)
    return "<think>the user wants an antonym</think>" + task(request)

def stubborn(request):
    word = request.messages[-1]["content"].split('"')[1]
    return "The opposite of %%s is %%s." %% (word, ANTONYMS[word])

NEW = HINT + ' Opposite of "{{word}}"?'

def proposer(request):
    text = request.messages[-1]["content"]
    if "I provided an assistant with the following instructions" in text:  # GEPA's reflection prompt
        return "```\\n" + NEW + "\\n```"
    system = request.messages[0]["content"] if request.messages[0]["role"] == "system" else ""
    fields = [line.split("`")[1] for line in system.splitlines() if line.strip().startswith(tuple("0123456789")) and "`" in line]
    outputs = [f for f in ("proposed_instruction",) if f in system] or fields[-1:] or ["answer"]
    if "Outputs will be a JSON object" in system:  # DSPy's JSONAdapter
        return json.dumps({f: NEW for f in outputs})
    return "\\n\\n".join("[[ ## %%s ## ]]\\n%%s" %% (f, NEW) for f in outputs) + "\\n\\n[[ ## completed ## ]]"

def judge(request):  # an llm-rubric judge that passes everything
    return '{"reason": "it is a word", "pass": true, "score": 1.0}'

MODELS = {"acme/task": FakeModel(task, name="acme/task"), "acme/stubborn": FakeModel(stubborn, name="acme/stubborn"),
          "acme/thinking": FakeModel(thinking, name="acme/thinking"),
          "acme/proposer": FakeModel(proposer, name="acme/proposer"), "acme/judge": FakeModel(judge, name="acme/judge")}

def pytest_promptopt_make_model(spec):
    return MODELS.get(spec.id)

def pytest_unconfigure(config):
    if hasattr(config, "workerinput"):
        return
    from pytest_promptopt.session import session_key
    state = config.stash.get(session_key, None)
    if state is not None:
        with open("repairs.json", "w") as f:
            json.dump([r.to_dict() for r in state.summary().repairs], f)
""" % (ANTONYMS,)


def suite(
    provider: str = "acme/task",
    repair: str = "",
    prompt: str = "'Opposite of \"{{word}}\"?'",
    cases: int = 10,
    also: str = "",
) -> str:
    tests = "\n".join(
        f"  - description: {w}\n    vars: {{word: {w}}}\n    assert: [{{type: equals, value: {a}}}{also}]"
        for w, a in list(ANTONYMS.items())[:cases]
    )
    block = f"repair:\n{repair}\n" if repair else ""
    return f"providers: [{provider}]\nprompts: [{prompt}]\n{block}tests:\n{tests}\ngates:\n  pass_rate: 0.8\n"


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    return pytester


def repairs(pytester: pytest.Pytester) -> list[dict[str, Any]]:
    return json.loads((pytester.path / "repairs.json").read_text())


def run_repair(run_pytest: Any, *args: str) -> Any:
    return run_pytest("--promptopt", "--promptopt-repair", "-p", "no:cacheprovider", *args)


# --------------------------------------------------------------------------- template round trip

NO_CR = st.characters(blacklist_characters="\r")  # Jinja turns \r and \r\n into \n in any template


@settings(max_examples=300, deadline=None)
@given(st.text(NO_CR, max_size=40) | st.sampled_from(["{{ x }}", "{% if %}", "{#", "}}{{", "{{{", "{% raw %}{{"]))
def test_escaped_text_renders_to_itself(text: str) -> None:
    assert render_template(escape_literal(text), {}) == text


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.text(NO_CR, min_size=1), st.text(NO_CR)), min_size=1, max_size=3), st.text(NO_CR, min_size=1)
)
def test_composed_template_keeps_its_vars_and_shows_demos_literally(demos: list[tuple[str, str]], word: str) -> None:
    template = 'Opposite of "{{ word }}"?'
    composed = compose(template, [Demo({"word": w}, answer) for w, answer in demos])
    assert Prompt(composed).variables == {"word"}
    messages = json.loads(render_prompt(composed, {"word": word}))
    assert [m["role"] for m in messages] == ["user", "assistant"] * len(demos) + ["user"]
    for (w, answer), (asked, shown) in zip(demos, zip(messages[0::2], messages[1::2])):
        assert asked["content"] == f'Opposite of "{w}"?' and shown["content"] == answer  # braces in the data stay data
    assert messages[-1]["content"] == f'Opposite of "{word}"?'


def test_compose_keeps_a_chat_prompt_and_puts_demos_before_its_last_user_message() -> None:
    template = json.dumps(
        [
            {"role": "system", "content": "You name opposites of {{ lang }} words."},
            {"role": "user", "content": "{{ word }}"},
        ]
    )
    composed = compose(template, [Demo({"word": "hot", "lang": "English"}, "cold {{not a var}}")])
    messages = json.loads(render_prompt(composed, {"word": "up", "lang": "English"}))
    assert messages == [
        {"role": "system", "content": "You name opposites of English words."},
        {"role": "user", "content": "hot"},
        {"role": "assistant", "content": "cold {{not a var}}"},
        {"role": "user", "content": "up"},
    ]
    assert compose(template, []) == template  # no demos: the template as the user wrote it


def test_prompt_diff_is_a_unified_diff() -> None:
    diff = prompt_diff("a\nb\n", "a\nc\n", "old.txt", "new.txt")
    assert diff.splitlines()[:2] == ["--- old.txt", "+++ new.txt"] and "-b" in diff and "+c" in diff


# --------------------------------------------------------------------------- split


@pytest.mark.parametrize("count", [2, 3, 10, 31])
def test_split_is_seeded_disjoint_and_keeps_one_case_on_each_side(count: int) -> None:
    train, held = split_cases(count, 0.4, seed=7)
    assert sorted(train + held) == list(range(count)) and train and held
    assert split_cases(count, 0.4, seed=7) == (train, held)
    assert abs(len(held) - round(count * 0.4)) <= 1
    assert any(split_cases(31, 0.4, seed=s) != split_cases(31, 0.4, seed=7) for s in range(3))


# --------------------------------------------------------------------------- optimiser paths


@pytest.mark.parametrize("optimizer", ["labeled", "bootstrap", "random-search"])
def test_demonstration_optimisers_repair_the_suite_on_held_out_cases(project, run_pytest, optimizer) -> None:
    project.makefile(".promptopt.yaml", antonyms=suite())
    result = run_repair(run_pytest, "--promptopt-repair-optimizer", optimizer)
    assert result.ret == 1  # the gate failed; a proposal does not turn the run green
    [found] = repairs(project)
    assert found["status"] == "repaired" and found["optimizer"] == optimizer
    assert found["heldout_before"] == 0.0 and found["heldout_after"] == 1.0
    assert found["insample_before"] == 0.0 and found["insample_after"] == 1.0
    assert len(found["heldout_cases"]) == 4 and not set(found["heldout_cases"]) & set(found["insample_cases"])
    assert found["weak_estimate"] is True  # 4 held-out cases
    shown = {d["vars"]["word"] for d in found["demos"]}
    assert shown and not shown & set(found["heldout_cases"])  # demos come from the optimiser's part only
    assert 0 < found["calls"]["total"] <= found["budget"] == 300
    proposal = project.path / found["file"]
    assert proposal.name == "antonyms.repaired.json" and json.loads(proposal.read_text()) == json.loads(found["prompt"])
    assert Prompt(found["prompt"]).variables == {"word"}
    assert (project.path / found["diff_file"]).read_text() == found[
        "diff"
    ] and '+    "content": "Opposite of \\"{{word}}\\"?"' in found["diff"]
    assert "Opposite of" in (project.path / "antonyms.promptopt.yaml").read_text()  # the user's suite is untouched


def test_the_optimiser_grades_answers_through_the_providers_transform(project, run_pytest) -> None:
    """The optimiser's metric sees what the run's checks see: the answer after the provider's
    transform (here stripping a reasoning model's thoughts). Graded raw, every candidate failed
    and no repair was found. Two providers on that model with different transforms are repaired
    apart, into files of their own (one file held both before)."""
    strip = "output.split('</think>').pop()"
    provider = f'{{id: acme/thinking, transform: "{strip}"}}, {{id: acme/thinking, transform: "{strip}.trim()"}}'
    project.makefile(".promptopt.yaml", antonyms=suite(provider=provider))
    run_repair(run_pytest, "--promptopt-repair-optimizer", "random-search")
    # One model under two transforms: two providers, each repaired on its own answers, apart.
    first, second = repairs(project)
    for found in (first, second):
        assert found["status"] == "repaired", found["reason"]
        assert found["heldout_before"] == 0.0 and found["heldout_after"] == 1.0
    assert (first["model"], second["model"]) == ("acme/thinking#0", "acme/thinking#1")
    assert (first["file"], second["file"]) == (
        "antonyms.repaired.acme-thinking-0.json",
        "antonyms.repaired.acme-thinking-1.json",
    )


def test_repairs_are_named_as_their_providers_items_are(tmp_path) -> None:
    """One model under two transforms: its items are `echo#0` and `echo#1` (their places in
    `providers:`), and so are its repairs, whatever cases of a test's own provider come first."""
    from pytest_promptopt.models.specs import ModelSpec
    from pytest_promptopt.repair.run import repair_groups, repair_names
    from pytest_promptopt.suite.loader import load_suite

    (tmp_path / "s.promptopt.yaml").write_text(
        "prompts: ['x {{a}}']\n"
        "providers: [{id: echo, transform: output.trim()}, {id: echo, transform: output.toUpperCase()}]\n"
        "tests: [{vars: {a: 1}, provider: fake}, {vars: {a: 2}}]\n"
    )
    loaded = load_suite(tmp_path / "s.promptopt.yaml", "s.promptopt.yaml", ModelSpec("echo"))
    assert [c.name for c in loaded.cases][-2:] == ["a=2[t1-echo#0]", "a=2[t1-echo#1]"]
    groups = repair_groups(loaded.cases)
    names = repair_names(groups, loaded.providers)
    # the test's own provider runs in both places, under each one's transform: two repairs, two names
    assert sorted(names[g[0].model.answers] for g in groups) == ["echo#0", "echo#1", "fake#0", "fake#1"]
    assert repair_names(groups[-1:], loaded.providers) == {}  # one provider's answers: no name part


@pytest.mark.parametrize("optimizer", ["gepa", "miprov2"])
def test_instruction_optimisers_rewrite_the_template_with_a_proposer_model(project, run_pytest, optimizer) -> None:
    project.makefile(".promptopt.yaml", antonyms=suite())
    run_repair(run_pytest, "--promptopt-repair-optimizer", optimizer, "--promptopt-repair-model", "acme/proposer")
    [found] = repairs(project)
    assert found["status"] == "repaired", found["reason"]
    assert found["heldout_before"] == 0.0 and found["heldout_after"] == 1.0
    assert "Answer with one word." in found["prompt"] and Prompt(found["prompt"]).variables == {"word"}
    assert found["calls"]["proposer_calls"] >= 1 and found["calls"]["total"] <= 300


def test_auto_picks_gepa_with_a_proposer_and_demonstrations_without(project, run_pytest) -> None:
    project.makefile(".promptopt.yaml", antonyms=suite())
    run_repair(run_pytest, "--promptopt-repair-model", "acme/proposer")
    assert repairs(project)[0]["optimizer"] == "gepa"
    run_repair(run_pytest)
    assert repairs(project)[0]["optimizer"] == "bootstrap"  # 6 optimiser cases: too few to search demo sets


def test_instruction_optimisers_refuse_the_bundled_model_as_proposer(project, run_pytest) -> None:
    project.makefile(".promptopt.yaml", antonyms=suite())
    result = run_repair(run_pytest, "--promptopt-repair-optimizer", "gepa", "--promptopt-repair-model", "smollm2")
    [found] = repairs(project)
    assert (
        found["status"] == "refused" and "--promptopt-repair-model" in found["reason"] and found["calls"]["total"] == 0
    )
    assert result.ret == 1 and not list(project.path.glob("*.repaired.*"))


def test_no_repair_found_when_nothing_beats_the_original(project, run_pytest) -> None:
    project.makefile(".promptopt.yaml", antonyms=suite(provider="acme/stubborn"))
    run_repair(run_pytest, "--promptopt-repair-optimizer", "labeled")
    [found] = repairs(project)
    assert found["status"] == "no repair found" and "does not beat the original" in found["reason"]
    assert found["heldout_after"] == found["heldout_before"] == 0.0
    assert found["file"] is None and not list(project.path.glob("*.repaired.*"))


def test_labeled_without_answers_is_refused_with_the_fix(project, run_pytest) -> None:
    text = suite()
    for answer in ANTONYMS.values():
        text = text.replace(f"{{type: equals, value: {answer}}}", f"{{type: regex, value: '^{answer}$'}}")
    project.makefile(".promptopt.yaml", antonyms=text)
    run_repair(run_pytest, "--promptopt-repair-optimizer", "labeled")
    [found] = repairs(project)
    assert found["status"] == "refused" and "repair.label" in found["reason"]


def test_suite_repair_block_and_label_template(project, run_pytest) -> None:
    # vars carry the answer; the block picks the optimiser and the label; icontains has no answer of its own
    text = suite(repair="  optimizer: labeled\n  label: '{{answer}}'\n  max_demos: 2\n  heldout: 0.5\n  seed: 3")
    for word, answer in ANTONYMS.items():
        text = text.replace(
            f"vars: {{word: {word}}}\n    assert: [{{type: equals, value: {answer}}}]",
            f"vars: {{word: {word}, answer: {answer}}}\n    assert: [{{type: equals, value: '{{{{answer}}}}'}}]",
        )
    project.makefile(".promptopt.yaml", antonyms=text)
    run_repair(run_pytest)
    [found] = repairs(project)
    assert found["status"] == "repaired" and found["optimizer"] == "labeled" and found["seed"] == 3
    assert len(found["demos"]) == 2 and len(found["heldout_cases"]) == 5
    assert all(d["output"] == ANTONYMS[d["vars"]["word"]] for d in found["demos"])
    # the command line overrides the suite's block
    run_repair(run_pytest, "--promptopt-repair-seed", "5")
    assert repairs(project)[0]["seed"] == 5


@pytest.mark.parametrize("optimizer", ["labeled", "bootstrap"])
def test_a_suite_prompt_is_repaired_as_the_suite_renders_it(project, run_pytest, optimizer) -> None:
    # promptfoo's manners, which the run used: the suite's `env:` global, a var written as optional
    # (`{% if topic %}`) that half the cases lack, a string var that is itself a template. A
    # repair rendering the prompt as a Python test does (strict, no `env`) could not score it.
    text = suite(
        prompt="'{{ env.LEAD }}{% if topic %}On {{ topic }}: {% endif %}Opposite of \"{{word}}\"?'",
        repair="  seed: 1",
    ).replace("providers:", "env: {LEAD: 'Quiz. '}\nproviders:")
    for word in list(ANTONYMS)[:10:2]:
        text = text.replace(f"vars: {{word: {word}}}", f"vars: {{word: {word}, topic: 'words {{{{word}}}}'}}")
    project.makefile(".promptopt.yaml", antonyms=text)
    run_repair(run_pytest, "--promptopt-repair-optimizer", optimizer)
    [found] = repairs(project)
    assert found["status"] == "repaired", found["reason"]
    assert found["heldout_before"] == 0.0 and found["heldout_after"] == 1.0
    assert all(case["proposal"]["passed"] for case in found["cases"]), found["cases"]
    # The demonstrations' user turns are rendered as the suite renders them: env, optional var, and
    # a var that is a template (promptfoo renders it first).
    turns = [m["content"] for m in json.loads(found["prompt"]) if m["role"] == "user"][:-1]
    assert turns and all(t.startswith("Quiz. ") for t in turns)
    shown = {d["vars"]["word"]: turn for d, turn in zip(found["demos"], turns, strict=True)}
    for word, turn in shown.items():
        topic = f"On words {word}: " if word in list(ANTONYMS)[:10:2] else ""
        assert turn == f'Quiz. {topic}Opposite of "{word}"?', turn


def test_a_bad_repair_block_names_the_field(project, run_pytest) -> None:
    project.makefile(".promptopt.yaml", antonyms=suite(repair="  optimizer: magic"))
    result = run_repair(run_pytest)
    result.stdout.fnmatch_lines(["*antonyms.promptopt.yaml:*repair.optimizer*"])


# --------------------------------------------------------------------------- budget


def test_budget_caps_model_calls_and_reports_projected_and_actual(project, run_pytest) -> None:
    project.makefile(".promptopt.yaml", antonyms=suite())
    run_repair(run_pytest, "--promptopt-repair-optimizer", "random-search", "--promptopt-repair-budget", "60")
    [found] = repairs(project)
    assert found["calls"]["total"] <= 60 and found["budget"] == 60
    assert found["projected_calls"]["total"] <= 60
    # Enough for scoring the original (10 calls) and the proposal (10) and one call more: the
    # optimiser stops at the budget, and what it found by then is still judged on held-out cases.
    run_repair(run_pytest, "--promptopt-repair-optimizer", "bootstrap", "--promptopt-repair-budget", "21")
    [found] = repairs(project)
    assert found["calls"]["total"] <= 21 and "budget" in found["reason"]


JUDGED = ", {type: llm-rubric, value: a single word}"


def test_the_budget_counts_the_judge_calls_of_model_graded_assertions(project, run_pytest) -> None:
    project.makefile(".promptopt.yaml", antonyms=suite(also=JUDGED))
    run_repair(run_pytest, "--promptopt-repair-optimizer", "random-search", "--promptopt-judge-model", "acme/judge")
    [found] = repairs(project)
    assert found["status"] == "repaired", found["reason"]
    calls, projected = found["calls"], found["projected_calls"]
    # The optimiser graded its candidates' answers with the rubric: each answer it had not seen
    # cost a judge call; scoring the original and the proposal (20 answers) are task-side calls.
    assert calls["judge_calls"] > 0 and projected["judge_calls"] >= calls["judge_calls"]
    assert calls["total"] == calls["task_calls"] + calls["proposer_calls"] + calls["judge_calls"] <= 300
    assert calls["task_calls"] >= 20 + 20  # the original's and the proposal's answers, and their verdicts
    # A budget that covers scoring the original and the proposal, their verdicts, and a few
    # calls more: the judge's calls exhaust it too, and the run still reports what was found.
    run_repair(
        run_pytest,
        "--promptopt-repair-optimizer",
        "bootstrap",
        "--promptopt-judge-model",
        "acme/judge",
        "--promptopt-repair-budget",
        "43",
        "--promptopt-cache",
        "off",
    )
    [found] = repairs(project)
    assert found["calls"]["total"] <= 43 and "budget" in found["reason"], found


def test_seeded_repair_is_reproducible(project, run_pytest) -> None:
    project.makefile(".promptopt.yaml", antonyms=suite())
    run_repair(run_pytest, "--promptopt-repair-optimizer", "random-search", "--promptopt-repair-seed", "4")
    first = repairs(project)[0]
    run_repair(run_pytest, "--promptopt-repair-optimizer", "random-search", "--promptopt-repair-seed", "4")
    second = repairs(project)[0]
    assert (first["prompt"], first["heldout_cases"], first["demos"]) == (
        second["prompt"],
        second["heldout_cases"],
        second["demos"],
    )


# --------------------------------------------------------------------------- modes and apply


def test_repair_in_every_mode(project, run_pytest, mode) -> None:
    project.makefile(".promptopt.yaml", antonyms=suite())
    result = run_repair(run_pytest, "--promptopt-repair-optimizer", "labeled", *mode)
    result.assert_outcomes(xfailed=10)
    [found] = repairs(project)
    assert found["status"] == "repaired" and found["heldout_after"] == 1.0


def test_apply_points_an_inline_prompt_at_the_proposal_and_the_suite_then_passes(project, run_pytest) -> None:
    project.makefile(".promptopt.yaml", antonyms="# my suite\n" + suite())
    run_repair(run_pytest, "--promptopt-repair-optimizer", "labeled", "--promptopt-repair-apply")
    [found] = repairs(project)
    assert found["applied"] is True
    text = (project.path / "antonyms.promptopt.yaml").read_text()
    assert text.startswith("# my suite\n") and 'prompts: ["file://antonyms.repaired.json"]' in text
    again = run_pytest("--promptopt", "-p", "no:cacheprovider")
    assert again.ret == 0  # 4 demos shown: every case answers with the bare word
    again.assert_outcomes(passed=10)


def test_apply_rewrites_a_chat_prompt_file_in_place(project, run_pytest) -> None:
    chat = json.dumps(
        [{"role": "system", "content": "Antonyms."}, {"role": "user", "content": 'Opposite of "{{word}}"?'}]
    )
    (project.path / "prompts").mkdir()
    (project.path / "prompts" / "antonym.json").write_text(chat)
    project.makefile(".promptopt.yaml", antonyms=suite(prompt="file://prompts/antonym.json"))
    run_repair(run_pytest, "--promptopt-repair-optimizer", "labeled", "--promptopt-repair-apply")
    [found] = repairs(project)
    assert found["applied"] is True and found["file"].endswith("antonym.json")
    written = json.loads((project.path / "prompts" / "antonym.json").read_text())
    assert written[0] == {"role": "system", "content": "Antonyms."} and len(written) == 2 + 2 * len(found["demos"])


def test_apply_leaves_a_split_prompt_file_whole_and_rewrites_the_entry_a_prompt_came_from(project, run_pytest) -> None:
    # multi.txt gives prompts 0 and 1 (one `prompts:` entry); the inline prompt 2 is entry 1.
    (project.path / "multi.txt").write_text('Opposite of "{{word}}"?\n---\nAntonym of "{{word}}"?\n')
    text = suite(prompt="file://multi.txt, 'Reverse of \"{{word}}\"?'")
    project.makefile(".promptopt.yaml", antonyms=text)
    run_repair(run_pytest, "--promptopt-repair-optimizer", "labeled", "--promptopt-repair-apply")
    found = {r["prompt_index"]: r for r in repairs(project)}
    assert sorted(found) == [0, 1, 2] and all(r["status"] == "repaired" for r in found.values()), found
    for index in (0, 1):  # their proposals are files beside the suite, not written into multi.txt
        assert found[index]["applied"] is False and "multi.txt holds 2 prompts" in found[index]["reason"]
        assert (project.path / found[index]["file"]).is_file()
    assert found[2]["applied"] is True
    written = (project.path / "antonyms.promptopt.yaml").read_text()
    assert 'prompts: [file://multi.txt, "file://antonyms.repaired.p2.json"]' in written, written
    assert (project.path / "multi.txt").read_text() == 'Opposite of "{{word}}"?\n---\nAntonym of "{{word}}"?\n'
    again = run_pytest("--promptopt", "-p", "no:cacheprovider")
    again.assert_outcomes(passed=10, xfailed=20)  # the applied prompt passes; the split file's still fail


# --------------------------------------------------------------------------- the bundled model


def test_demonstration_repair_on_the_bundled_model(pytester, run_pytest) -> None:
    """SmolLM2 answers 'The opposite of "hot" is "cold".' zero-shot; shown demonstrations as chat
    turns, it answers with the word. Labeled repair must lift the held-out pass rate."""
    tests = "\n".join(
        f"  - vars: {{word: {w}}}\n    assert: [{{type: equals, value: {a}}}]" for w, a in ANTONYMS.items()
    )
    pytester.makefile(
        ".promptopt.yaml",
        antonyms=(
            "providers: [{id: smollm2, config: {max_tokens: 8}}]\n"
            "prompts: ['What is the opposite of the word \"{{word}}\"? Answer with one word.']\n"
            f"repair: {{optimizer: labeled, max_demos: 3}}\ntests:\n{tests}\ngates: {{pass_rate: 0.8}}\n"
        ),
    )
    pytester.makeconftest(CONFTEST)
    result = run_repair(run_pytest)
    assert result.ret == 1
    [found] = repairs(pytester)
    assert found["status"] == "repaired", found["reason"]
    assert found["heldout_before"] == 0.0 and found["heldout_after"] >= 0.5
    assert found["calls"]["task_calls"] <= 10  # the original's answers come from the run's cache
    assert (pytester.path / found["file"]).is_file()


def test_only_failing_suites_are_repaired_unless_named(project, run_pytest) -> None:
    project.makefile(".promptopt.yaml", antonyms=suite().replace("pass_rate: 0.8", "pass_rate: 0.0"))
    assert run_repair(run_pytest).ret == 0
    assert repairs(project) == []  # the gate passed: nothing to repair
    result = run_repair(
        run_pytest, "--promptopt-repair-suite", "antonyms.promptopt.yaml", "--promptopt-repair-optimizer", "labeled"
    )
    assert result.ret == 0 and repairs(project)[0]["status"] == "repaired"


def test_python_prompt_tests_are_listed_as_skipped(project, run_pytest) -> None:
    project.makepyfile(
        test_py="""
import pytest

@pytest.mark.promptopt(suite="py", gates={"pass_rate": 1.0}, model="acme/stubborn")
def test_one(prompt_model, prompt_check):
    from pytest_promptopt import equals
    prompt_check(prompt_model('Opposite of "hot"?').text, equals("cold"))
"""
    )
    run_repair(run_pytest)
    [found] = repairs(project)
    assert found["suite"] == "py" and found["status"] == "skipped" and "suite file" in found["reason"]


def test_a_prompt_using_the_suites_nunjucks_filter_is_repaired(project, run_pytest) -> None:
    (project.path / "keep.js").write_text("module.exports = (s) => String(s);\n")
    text = suite(prompt="'Opposite of \"{{ word | keep }}\"?'").replace(
        "providers:", "nunjucksFilters: {keep: keep.js}\nproviders:"
    )
    project.makefile(".promptopt.yaml", antonyms=text)
    run_repair(run_pytest, "--promptopt-repair-optimizer", "labeled")
    [found] = repairs(project)
    assert found["status"] == "repaired", found["reason"]
    assert found["heldout_before"] == 0.0 and found["heldout_after"] == 1.0
    assert "{{ word | keep }}" in found["prompt"]


def test_a_suite_whose_cases_chain_answers_is_skipped_with_the_reason(project, run_pytest) -> None:
    # storeOutputAs: each case is built from the answers before it, so none can be scored alone.
    text = suite().replace("vars: {word: hot}", "vars: {word: hot}\n    options: {storeOutputAs: before}")
    project.makefile(".promptopt.yaml", antonyms=text)
    result = run_repair(run_pytest, "--promptopt-repair-optimizer", "bootstrap")
    assert result.ret == 1
    [found] = repairs(project)
    assert found["status"] == "skipped" and "storeOutputAs" in found["reason"], found
    assert found["calls"]["total"] == 0 and not list(project.path.glob("*.repaired.*"))
