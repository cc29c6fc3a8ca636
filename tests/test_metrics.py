"""Metrics that read meaning: `similar` (sentence embeddings), the reference metrics (ROUGE, BLEU,
chrF, GLEU), and DSPy-style metric functions as `python` checks, each with known answers."""

from __future__ import annotations

import importlib.util
import math
import sqlite3
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import load_report
from fake_openai import FakeOpenAI, echo_last_user_message, letter_counts

from pytest_promptopt import assertion, bleu, chrf, gleu, not_, python, rouge_1, rouge_2, rouge_l, rouge_n, similar
from pytest_promptopt.assertions import reference
from pytest_promptopt.assertions.base import (
    Assertion,
    AssertionConfigError,
    AssertionContext,
    AssertionEvaluationError,
    Grade,
)
from pytest_promptopt.assertions.dspy_metrics import is_dspy_metric
from pytest_promptopt.assertions.scoring import grade_assertion, render_assertion
from pytest_promptopt.cache import CacheMode, ResponseCache
from pytest_promptopt.models import embeddings
from pytest_promptopt.models.specs import ModelSpec
from pytest_promptopt.suite.loader import load_suite
from pytest_promptopt.suite.sources import assertion_from_string


def grade(a: Assertion, output: str, **ctx: Any) -> Grade:
    return grade_assertion(output, render_assertion(a, ctx.get("vars", {})), AssertionContext(**ctx))


@pytest.fixture
def embedding_cache(tmp_path: Path) -> Iterator[ResponseCache]:
    """The response cache `similar` keeps its vectors in (`AssertionContext.embeddings`)."""
    cache = ResponseCache(tmp_path / "cache.sqlite")
    try:
        yield cache
    finally:
        cache.close()


# ----------------------------------------------------------------------------- ROUGE

# The usual textbook pair: the candidate has every reference word plus one ("found").
REFERENCE = "the cat was under the bed"
CANDIDATE = "the cat was found under the bed"


def test_rouge_on_the_textbook_pair():
    # ROUGE-1: 6 of the 6 reference words are matched, 6 of the candidate's 7 are.
    # promptfoo's rouge-n is the F-measure (12/13); `measure` picks recall (1) or precision (6/7).
    assert grade(rouge_n(REFERENCE), CANDIDATE).score == pytest.approx(12 / 13)
    assert grade(rouge_n(REFERENCE, config={"measure": "recall"}), CANDIDATE).score == pytest.approx(1.0)
    assert grade(rouge_n(REFERENCE, config={"measure": "precision"}), CANDIDATE).score == pytest.approx(6 / 7)
    assert grade(rouge_1(REFERENCE), CANDIDATE).score == pytest.approx(2 * (6 / 7) * 1 / (6 / 7 + 1))  # 12/13
    # ROUGE-2: 4 shared bigrams (the cat, cat was, under the, the bed) of the reference's 5, the candidate's 6.
    assert grade(rouge_n(REFERENCE, config={"n": 2, "measure": "recall"}), CANDIDATE).score == pytest.approx(4 / 5)
    rouge2 = grade(rouge_2(REFERENCE), CANDIDATE)
    assert rouge2.score == pytest.approx(2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5))  # 8/11
    assert not rouge2.passed and rouge2.reason == "ROUGE-2 F-measure 0.7273 is less than threshold 0.75"
    assert grade(rouge_2(REFERENCE, threshold=0.7), CANDIDATE).passed
    # ROUGE-L: the longest common subsequence is the whole reference (6 words).
    assert grade(rouge_l(REFERENCE), CANDIDATE).score == pytest.approx(12 / 13)


def test_rouge_n_tokenises_as_promptfoo_does():
    # js-rouge's Treebank tokens (promptfoo 0.121.20, assertions/rouge.ts): ":" is a token, so the
    # answer has 4 unigrams to the reference's 3 (F 6/7); "can't" is "ca n't", "cannot" is "can not";
    # a repeated word matches once per occurrence in the reference.
    assert grade(rouge_n("Answer Hello world"), "Answer: Hello world").score == pytest.approx(6 / 7)
    assert grade(rouge_n("I cannot say yes"), 'I can\'t say "yes" -- maybe (later).').score == pytest.approx(1 / 3)
    assert grade(rouge_n("the cat sat on the mat"), "The cat sat on the mat. The cat sat.").score == pytest.approx(
        5 / 8
    )


def test_rouge_l_tells_word_order_apart_where_rouge_2_cannot():
    # Lin (2004), section 3.1: against "police killed the gunman", S2 and S3 share one bigram each
    # ("the gunman"), but S2 keeps the word order (LCS 3 of 4 words) and S3 does not (LCS 2).
    ref = "police killed the gunman"
    s2, s3 = "police kill the gunman", "the gunman kill police"
    assert grade(rouge_2(ref), s2).score == pytest.approx(1 / 3)
    assert grade(rouge_2(ref), s3).score == pytest.approx(1 / 3)
    assert grade(rouge_l(ref), s2).score == pytest.approx(3 / 4)
    assert grade(rouge_l(ref), s3).score == pytest.approx(1 / 2)


def test_rouge_ignores_case_takes_the_best_reference_and_inverts():
    assert grade(rouge_1("THE CAT WAS UNDER THE BED"), CANDIDATE).score == pytest.approx(12 / 13)
    best = grade(rouge_n(["dogs bark loudly", REFERENCE]), CANDIDATE)
    assert best.passed and best.score == pytest.approx(12 / 13)
    inverted = grade(assertion("not-rouge-n", "dogs bark loudly"), CANDIDATE)
    assert inverted.passed and inverted.score == pytest.approx(1.0)  # 1 - F-measure 0
    assert not grade(not_(rouge_n(REFERENCE)), CANDIDATE).passed


# ----------------------------------------------------------------------------- BLEU, GLEU, chrF


def test_bleu_by_hand():
    # 13a tokens: "the cat sat on the mat ." (7) against "the cat is sitting on the mat ." (8).
    # Clipped n-gram precisions 6/7, 4/6, 2/5, 1/4; brevity penalty exp(1 - 8/7).
    expected = math.exp(1 - 8 / 7) * (6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25
    graded = grade(bleu("The cat is sitting on the mat."), "The cat sat on the mat.")
    assert graded.score == pytest.approx(expected, abs=1e-9)
    assert not graded.passed and graded.reason == f"BLEU score {expected:.4f} is less than threshold 0.5"
    assert grade(bleu("The cat is sitting on the mat.", threshold=0.4), "The cat sat on the mat.").passed


def test_bleu_case_and_references():
    assert grade(bleu("the cat sat on the mat"), "the cat sat on the mat").score == pytest.approx(1.0)
    # Case is ignored unless config says otherwise, as in promptfoo.
    assert grade(bleu("THE CAT SAT ON THE MAT"), "the cat sat on the mat").score == pytest.approx(1.0)
    assert grade(bleu("THE CAT SAT ON THE MAT", config={"lowercase": False}), "the cat sat on the mat").score < 0.1
    # With several references, n-grams are clipped against each (sacrebleu's multi-reference BLEU).
    assert grade(bleu(["a dog barked", "the cat sat on the mat"]), "the cat sat on the mat").score == pytest.approx(1.0)


def test_gleu_by_hand():
    # 1- to 4-grams: 18 in each sentence, 9 shared (5 words, 3 bigrams, "on the mat"): 9 / 18.
    assert grade(gleu("the cat is on the mat"), "the cat sat on the mat").score == pytest.approx(0.5)
    assert grade(gleu(["a dog barked", "the cat is on the mat"]), "the cat sat on the mat").score == pytest.approx(0.5)
    assert grade(gleu("The Cat is on the mat"), "the cat sat on the mat").score == pytest.approx(0.5)
    assert not grade(gleu("a dog barked"), "the cat sat on the mat").passed


def test_chrf_orders_closeness():
    assert grade(chrf("the cat sat on the mat"), "the cat sat on the mat").score == pytest.approx(1.0)
    assert grade(chrf("xyz"), "abc").score == pytest.approx(0.0)
    near = grade(chrf("the cats sat on the mats"), "the cat sat on the mat").score
    far = grade(chrf("a dog barked at night"), "the cat sat on the mat").score
    assert 0.5 < near < 1.0 and far < near


@pytest.mark.parametrize(
    "bad, message",
    [
        (rouge_n("x", config={"n": 0}), "between 1 and 9"),
        (rouge_1("x", config={"n": 2}), "unknown config key 'n'"),
        (rouge_l("x", config={"measure": "mean"}), "recall, precision or f"),
        (bleu("x", config={"lowercase": "yes"}), "wrong type"),
        (assertion("gleu", [1, 2]), "reference string"),
        (assertion("chrf", []), "reference string"),
    ],
)
def test_bad_metric_configs_are_load_errors(bad: Assertion, message: str):
    with pytest.raises(AssertionConfigError, match=message):
        render_assertion(bad, {})


def test_a_missing_library_is_an_assertion_error_saying_how_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "rouge_score", None)  # import fails as when not installed
    reference._rouge_scorer.cache_clear()
    try:
        with pytest.raises(AssertionEvaluationError) as info:
            grade(rouge_l(REFERENCE), CANDIDATE)
    finally:
        reference._rouge_scorer.cache_clear()
    assert str(info.value) == "ROUGE needs the 'rouge-score' package: pip install 'pytest-promptopt[metrics]'"


def test_csv_shorthand_for_the_metrics():
    assert assertion_from_string("similar: a cat") == {"type": "similar", "value": "a cat", "threshold": 0.8}
    assert assertion_from_string("similar(0.6): a cat") == {"type": "similar", "value": "a cat", "threshold": 0.6}
    assert assertion_from_string("rouge-n: a cat") == {"type": "rouge-n", "value": "a cat", "threshold": 0.75}
    assert assertion_from_string("not-rouge-1(0.5): a cat") == {
        "type": "not-rouge-1",
        "value": "a cat",
        "threshold": 0.5,
    }
    assert assertion_from_string("bleu: a cat") == {"type": "bleu", "value": "a cat"}


# ----------------------------------------------------------------------------- similar, offline


PARAPHRASES = [
    ("The cat sat on the mat.", "A cat was sitting on the mat."),
    ("The meeting was moved to Friday.", "They rescheduled the meeting for Friday."),
    ("How do I reset my password?", "What are the steps to change my password?"),
]
UNRELATED = [
    ("The cat sat on the mat.", "Stock markets fell sharply today."),
    ("The meeting was moved to Friday.", "Photosynthesis turns light into chemical energy."),
    ("How do I reset my password?", "The recipe needs two cups of flour."),
]


def test_paraphrases_are_more_similar_than_unrelated_sentences(embedding_cache: ResponseCache):
    paraphrases = [grade(similar(b), a, embeddings=embedding_cache) for a, b in PARAPHRASES]
    unrelated = [grade(similar(b), a, embeddings=embedding_cache) for a, b in UNRELATED]
    assert all(g.passed for g in paraphrases), paraphrases
    assert not any(g.passed for g in unrelated), unrelated
    assert min(g.score for g in paraphrases) > max(g.score for g in unrelated) + 0.3
    assert max(g.score for g in unrelated) < 0.3
    # Any of a list passes; not-similar needs the output far from every value.
    listed = grade(
        similar(["Stock markets fell sharply today.", "A cat was sitting on the mat."]),
        "The cat sat on the mat.",
        embeddings=embedding_cache,
    )
    assert listed.passed and listed.score == paraphrases[0].score and "closest of 2 values" in listed.reason
    assert grade(
        assertion("not-similar", ["Stock markets fell.", "Bread is baked."]),
        "The cat sat on the mat.",
        embeddings=embedding_cache,
    ).passed
    assert not grade(
        assertion("not-similar", ["Stock markets fell.", "A cat was sitting on the mat."]),
        "The cat sat on the mat.",
        embeddings=embedding_cache,
    ).passed


@pytest.mark.parametrize("runtime", ["ctranslate2", "transformers"])
def test_offline_vectors_match_sentence_transformers(embedding_cache: ResponseCache, runtime: str):
    # The plugin runs MiniLM on CTranslate2 (or torch); sentence-transformers' own pipeline is the
    # reference, on texts past the 256-token limit, empty, and outside ASCII.
    from sentence_transformers import SentenceTransformer

    texts = [
        PARAPHRASES[1][0],
        PARAPHRASES[1][1],
        "A much longer sentence, with punctuation; and " * 40,
        "",
        "naïve café — 東京\u200b",
    ]
    ours = embeddings.MiniLMEmbedder(runtime).embed(texts)
    theirs = SentenceTransformer(str(embeddings.minilm_dir()), device="cpu").encode(texts, normalize_embeddings=True)
    for mine, ref in zip(ours, theirs):
        assert max(abs(a - b) for a, b in zip(mine, ref.tolist())) < 1e-5
        assert embeddings.cosine(mine, ref.tolist()) > 0.99999
    assert grade(similar(texts[1]), texts[0], embeddings=embedding_cache).score == pytest.approx(
        float(theirs[0] @ theirs[1]), abs=1e-5
    )


def test_one_runtime_variable_chooses_for_the_embedder_and_the_bundled_model(monkeypatch: pytest.MonkeyPatch):
    from pytest_promptopt.models.base import ModelError
    from pytest_promptopt.models.local import LocalModel

    monkeypatch.setenv("PROMPTOPT_LOCAL_RUNTIME", "onnx")
    choices = "runtime must be one of auto, ctranslate2, transformers, got 'onnx'"
    with pytest.raises(embeddings.EmbeddingError, match=f"the offline embedding model: {choices}"):
        embeddings.MiniLMEmbedder().embed(["a"])
    with pytest.raises(ModelError, match=choices):
        LocalModel()
    monkeypatch.setenv("PROMPTOPT_LOCAL_RUNTIME", " CTranslate2 ")  # as written by hand
    assert embeddings.MiniLMEmbedder().embed(["a"])


def test_the_ctranslate2_copy_of_the_embedder_is_converted_once_and_an_unwritable_home_still_embeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from pytest_promptopt.models import minilm_runtimes

    folder, identity = embeddings.minilm_dir(), embeddings.MiniLMEmbedder().cache_identity
    first, none = minilm_runtimes.minilm_ct2_copy(folder, identity, home=tmp_path / "home")
    assert none is None  # in the home: nothing for the caller to remove
    stamp = (first / "model.bin").stat().st_mtime_ns
    again, _ = minilm_runtimes.minilm_ct2_copy(folder, identity, home=tmp_path / "home")
    assert again == first and (again / "model.bin").stat().st_mtime_ns == stamp  # not converted twice
    other, _ = minilm_runtimes.minilm_ct2_copy(folder, {**identity, "package": "0.0-other"}, home=tmp_path / "home")
    assert other == first and (other / "model.bin").stat().st_mtime_ns != stamp  # other weights: converted afresh
    (tmp_path / "file").write_text("not a folder")
    private, keep = minilm_runtimes.minilm_ct2_copy(folder, identity, home=tmp_path / "file")
    assert keep is not None and private.is_relative_to(keep.name)
    assert (private / "model.bin").is_file() and not str(private).startswith(str(tmp_path))
    keep.cleanup()

    # The embedder removes a private copy once it is loaded (a run per process left ~90 MB behind
    # in the temporary folder each time), and embeds as from the home's copy.
    monkeypatch.setenv("PROMPTOPT_HOME", str(tmp_path / "file"))
    leftovers = set(Path(tempfile.gettempdir()).glob("pytest-promptopt-minilm-*"))
    embedder = minilm_runtimes.CTranslate2Embedder(folder, 256, identity)
    assert set(Path(tempfile.gettempdir()).glob("pytest-promptopt-minilm-*")) == leftovers
    monkeypatch.setenv("PROMPTOPT_HOME", str(tmp_path / "home"))
    from_home = minilm_runtimes.CTranslate2Embedder(folder, 256, identity)
    assert embedder.embed(["a spider has eight legs"]) == from_home.embed(["a spider has eight legs"])


def test_embedding_providers_are_checked_when_a_suite_loads():
    for provider, message in [
        ("smollm2", "not an embedding model"),
        ({"id": "openai:embedding:x", "config": {"apiKey": "k"}}, "must not"),
        ("minilm-typo", "unknown model"),
        (42, "id string"),
    ]:
        with pytest.raises(AssertionConfigError, match=message):
            render_assertion(similar("x", provider=provider), {})
    for provider in [
        "minilm",
        "huggingface:sentence-similarity:sentence-transformers/all-MiniLM-L6-v2",
        "openai:embedding:text-embedding-3-small",
        {"embedding": {"id": "azureopenai:embedding:ada"}},
    ]:
        render_assertion(similar("x", provider=provider), {})


def test_a_missing_model_package_is_an_assertion_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(embeddings, "_EMBEDDERS", {})
    with pytest.raises(AssertionEvaluationError, match=r"not installed: pip install 'pytest-promptopt\[metrics\]'"):
        grade(similar("x"), "y")


# ----------------------------------------------------------------------------- similar, hosted


def cosine_of_letters(a: str, b: str) -> float:
    va, vb = letter_counts(a), letter_counts(b)
    return sum(x * y for x, y in zip(va, vb)) / math.sqrt(sum(x * x for x in va) * sum(y * y for y in vb))


def hosted(server: FakeOpenAI) -> dict[str, Any]:
    return {
        "id": "openai:embedding:text-embedding-3-small",
        "config": {"apiBaseUrl": server.base_url, "apiKeyEnvar": "FAKE_EMBED_KEY"},
    }


def test_hosted_embeddings_through_litellm(monkeypatch: pytest.MonkeyPatch, embedding_cache: ResponseCache):
    monkeypatch.setenv("FAKE_EMBED_KEY", "sk-fake-secret-0123456789")
    with FakeOpenAI(echo_last_user_message) as server:
        near = grade(similar("abb", provider=hosted(server)), "ab", embeddings=embedding_cache)
        far = grade(similar(["xyz", "zzz"], provider=hosted(server)), "ab", embeddings=embedding_cache)
    assert near.score == pytest.approx(3 / math.sqrt(2 * 5), abs=1e-6) and near.passed  # (1,1)·(1,2)
    assert far.score == 0.0 and not far.passed
    assert server.requests[0] == {"model": "text-embedding-3-small", "input": ["ab", "abb"]}
    assert server.headers[0]["authorization"] == "Bearer sk-fake-secret-0123456789"
    # the key reached the provider, never the cache
    assert b"sk-fake-secret" not in (embedding_cache.path).read_bytes()


def test_embeddings_are_cached_by_model_and_text(monkeypatch: pytest.MonkeyPatch, embedding_cache: ResponseCache):
    monkeypatch.setenv("FAKE_EMBED_KEY", "sk-fake")
    with FakeOpenAI(echo_last_user_message) as server:
        first = grade(similar(["abc", "abd"], provider=hosted(server)), "abcd", embeddings=embedding_cache)
        again = grade(similar(["abc", "abd"], provider=hosted(server)), "abcd", embeddings=embedding_cache)
        assert len(server.requests) == 1 and again == first
        grade(similar("abc", provider=hosted(server)), "a new output", embeddings=embedding_cache)
        assert server.requests[-1]["input"] == ["a new output"]  # only the text it had not seen
        embedding_cache.mode = CacheMode.REPLAY
        with pytest.raises(AssertionEvaluationError, match="replay mode: no recorded embedding"):
            grade(similar("abc", provider=hosted(server)), "never seen", embeddings=embedding_cache)
        embedding_cache.mode = CacheMode.OFF
        grade(similar("abc", provider=hosted(server)), "abcd", embeddings=embedding_cache)
        assert len(server.requests) == 3
    rows = sqlite3.connect(embedding_cache.path).execute("SELECT model, length(vector) FROM embeddings").fetchall()
    assert sorted(rows) == [("openai/text-embedding-3-small", 26 * 4)] * 4  # float32 letter counts


class LetterEmbedder:
    """An embedder object given as `provider=` in Python, offline, counting what it embeds."""

    name = "letters"
    hosted = False
    cache_identity = {"embedder": "letters"}

    def __init__(self) -> None:
        self.embedded: list[str] = []

    def embed(self, texts):
        self.embedded.extend(texts)
        return [letter_counts(t) for t in texts]


def test_an_offline_embedder_object_computes_in_replay_mode(embedding_cache: ResponseCache):
    letters = LetterEmbedder()
    assert grade(similar("abb", provider=letters), "ab", embeddings=embedding_cache).score == pytest.approx(
        cosine_of_letters("ab", "abb"), abs=1e-6
    )
    embedding_cache.mode = CacheMode.REPLAY
    grade(
        similar("abb", provider=letters), "a text it has not seen", embeddings=embedding_cache
    )  # no call is at stake: computed
    assert letters.embedded == ["ab", "abb", "a text it has not seen"]
    count = sqlite3.connect(embedding_cache.path).execute("SELECT count(*) FROM embeddings").fetchone()[0]
    assert count == 2  # replay records nothing


# ----------------------------------------------------------------------------- suite files

METRICS_SUITE = """
description: meaning
providers: [echo]
prompts: ["{{sentence}}"]
tests:
  - description: paraphrase
    vars: {sentence: "The meeting was moved to Friday."}
    assert:
      - {type: similar, value: "They rescheduled the meeting for Friday.", metric: meaning}
      - {type: rouge-n, value: "the meeting was moved to friday", threshold: 0.9}
  - description: unrelated
    vars: {sentence: "Stock markets fell sharply today."}
    assert:
      - {type: not-similar, value: ["The cat sat on the mat.", "A recipe for bread."]}
      - {type: similar, value: "The cat sat on the mat.", metric: meaning}
"""


def test_suite_file_with_similar_and_rouge(run_pytest: Any, pytester: pytest.Pytester, mode: list[str]):
    pytester.makefile(".promptopt.yaml", meaning=METRICS_SUITE)
    result = run_pytest("--promptopt", "--promptopt-report", "report.json", *mode)
    result.assert_outcomes(passed=1, failed=1)
    results = {r["name"].split("[")[0]: r for r in load_report(pytester.path / "report.json")["suites"][0]["results"]}
    paraphrase, unrelated = results["paraphrase"], results["unrelated"]
    # promptfoo's Treebank tokens: the final "." is a token the reference lacks (F-measure 12/13)
    assert paraphrase["passed"] and paraphrase["scores"]["rouge-n"] == pytest.approx(12 / 13)
    assert paraphrase["scores"]["meaning"] > 0.75 > unrelated["scores"]["meaning"]
    assert unrelated["reason"].startswith("Similarity ") and unrelated["reason"].endswith("is less than threshold 0.75")
    assert pytester.path.joinpath(".promptopt", "cache.sqlite").is_file()


LOADED_AT_COLLECTION = """
import sys

def pytest_collection_finish(session):
    from pytest_promptopt.models.embeddings import embedder_for
    loaded = embedder_for(None)._loaded
    print("EMBEDDER LOADED AT COLLECTION", loaded is not None, loaded.name, "torch" in sys.modules)
"""


def test_the_offline_embedder_loads_during_collection_on_the_main_thread(run_pytest: Any, pytester: pytest.Pytester):
    # Not on a grading thread when the first `similar` check runs: loading then happens beside
    # pytest's own work (and inside the test loop's time). On CTranslate2, torch is not imported.
    from pytest_promptopt.models.minilm_runtimes import minilm_ct2_copy

    # The copy a first run converts (that step alone needs torch) is there, as after any first run.
    minilm_ct2_copy(embeddings.minilm_dir(), embeddings.MiniLMEmbedder().cache_identity)  # in the home
    pytester.makefile(".promptopt.yaml", meaning=METRICS_SUITE)
    pytester.makeconftest(LOADED_AT_COLLECTION)
    result = run_pytest("--promptopt", "-s", "-p", "no:xdist", subprocess=True)  # a fresh interpreter
    result.stdout.fnmatch_lines(["*EMBEDDER LOADED AT COLLECTION True ctranslate2 False*"])
    result.assert_outcomes(passed=1, failed=1)


def test_a_rerun_takes_hosted_embeddings_from_the_cache(
    run_pytest: Any, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("FAKE_EMBED_KEY", "sk-fake")
    with FakeOpenAI(echo_last_user_message) as server:
        pytester.makefile(
            ".promptopt.yaml",
            letters=f"""
            providers: [echo]
            prompts: ["{{{{word}}}}"]
            defaultTest:
              assert:
                - type: similar
                  value: "{{{{word}}}}s"
                  threshold: 0.85  # cat/cats: 3 / (sqrt(3) * sqrt(4)) = 0.866
                  provider: {{id: "openai:embedding:text-embedding-3-small", config: {{apiBaseUrl: "{server.base_url}", apiKeyEnvar: FAKE_EMBED_KEY}}}}
            tests:
              - vars: {{word: cat}}
              - vars: {{word: dog}}
        """,
        )
        run_pytest("--promptopt").assert_outcomes(passed=2)
        asked = len(server.requests)
        assert sorted(t for r in server.requests for t in r["input"]) == ["cat", "cats", "dog", "dogs"]
        run_pytest("--promptopt").assert_outcomes(passed=2)
        assert len(server.requests) == asked  # every vector came from the cache
        run_pytest("--promptopt", "--promptopt-cache", "off").assert_outcomes(passed=2)
        assert len(server.requests) > asked


def test_prompt_check_keeps_embeddings_in_the_runs_cache(
    run_pytest: Any, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
):
    """`prompt_check` grades `similar` with the session's response cache (handed to it by the
    fixture): a rerun takes every vector from it, and `--promptopt-cache off` asks again."""
    monkeypatch.setenv("FAKE_EMBED_KEY", "sk-fake")
    with FakeOpenAI(echo_last_user_message) as server:
        provider = {
            "id": "openai:embedding:text-embedding-3-small",
            "config": {"apiBaseUrl": server.base_url, "apiKeyEnvar": "FAKE_EMBED_KEY"},
        }
        pytester.makepyfile(
            test_words=f"""
            import pytest
            from pytest_promptopt import similar

            @pytest.mark.parametrize("word", ["cat", "dog"])
            def test_plural(prompt_model, prompt_check, word):
                prompt_check(prompt_model(word), similar(word + "s", threshold=0.85, provider={provider!r}))
            """
        )
        run_pytest("--promptopt", "--promptopt-model", "echo").assert_outcomes(passed=2)
        asked = len(server.requests)
        assert sorted(t for r in server.requests for t in r["input"]) == ["cat", "cats", "dog", "dogs"]
        run_pytest("--promptopt", "--promptopt-model", "echo").assert_outcomes(passed=2)
        assert len(server.requests) == asked  # every vector came from the cache
        run_pytest("--promptopt", "--promptopt-model", "echo", "--promptopt-cache", "off").assert_outcomes(passed=2)
        assert len(server.requests) > asked


# ----------------------------------------------------------------------------- DSPy-style metrics


def exact_answer(example, pred, trace=None):
    return example.answer.lower() == pred.answer.strip().lower()


def test_dspy_metrics_are_recognised_by_their_parameters():
    assert is_dspy_metric(exact_answer)
    assert is_dspy_metric(lambda gold, pred: 1.0)
    assert is_dspy_metric(lambda a, b, trace=None: 1.0)
    assert is_dspy_metric(lambda gold, pred, trace=None, pred_name=None, pred_trace=None: 1.0)  # GEPA's
    assert not is_dspy_metric(lambda output, context: True)  # promptfoo's get_assert
    assert not is_dspy_metric(lambda output, context, extra=None: True)
    assert not is_dspy_metric(lambda output: True)


def test_a_dspy_metric_as_a_python_assertion():
    variables = {"question": "Capital of France?", "answer": "Paris"}
    assert grade(python(exact_answer), " paris ", vars=variables).passed
    failed = grade(python(exact_answer), "Lyon", vars=variables)
    assert not failed.passed and failed.score == 0.0
    # a float is a score; `threshold` decides
    overlap = python(
        lambda example, prediction: len(set(prediction.output.split()) & set(example["answer"].split())) / 2,
        threshold=0.5,
    )
    assert grade(overlap, "Paris", vars={"answer": "Paris France"}).passed
    assert not grade(overlap, "Lyon", vars={"answer": "Paris France"}).passed
    # a misspelt field is an assertion error naming the fields there are
    with pytest.raises(AssertionEvaluationError, match="has no field 'expected'; its fields: question, answer"):
        grade(python(lambda example, pred, trace=None: example.expected == pred.answer), "Paris", vars=variables)


def test_a_gepa_style_metric_result_reads_its_feedback():
    import dspy

    def metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
        return dspy.Prediction(score=0.25, feedback="one of four facts")

    graded = grade(python(metric, threshold=0.5), "x")
    assert not graded.passed and graded.score == 0.25 and graded.reason == "one of four facts"


def test_one_metric_serves_suite_tests_and_repair(tmp_path: Path):
    (tmp_path / "metrics.py").write_text(
        textwrap.dedent("""
        def exact_answer(example, pred, trace=None):
            return example.answer.lower() == pred.answer.strip().lower()
    """)
    )
    suite_file = tmp_path / "s.promptopt.yaml"
    suite_file.write_text(
        textwrap.dedent("""
        prompts: ["Capital of {{country}}?"]
        tests:
          - vars: {country: France, answer: Paris}
            assert: [{type: python, value: "file://metrics.py:exact_answer"}]
    """)
    )
    case = load_suite(suite_file, "s.promptopt.yaml", ModelSpec("echo")).cases[0]
    ctx = AssertionContext(vars=case.vars, base_dir=case.base_dir)
    assert grade_assertion("Paris", case.assertions[0], ctx).passed
    assert not grade_assertion("Rome", case.assertions[0], ctx).passed
    # The repair's metric grades with the suite's assertions, so it runs the same function.
    import dspy

    from pytest_promptopt.repair.program import case_metric

    metric = case_metric([case], "output")
    example = dspy.Example(country="France", case_index=0).with_inputs("country")
    assert metric(example, dspy.Prediction(output="Paris")) == 1.0
    assert metric(example, dspy.Prediction(output="Rome")) == 0.0
    assert metric(example, dspy.Prediction(output="Paris"), trace=[]) is True  # bootstrapping asks for a bool


def test_prompt_check_takes_a_metric_function(run_pytest: Any, pytester: pytest.Pytester):
    pytester.makepyfile(
        test_capitals="""
        import pytest

        def exact_answer(example, pred, trace=None):
            return example.answer.lower() in pred.answer.lower()

        @pytest.mark.parametrize("country,answer", [("France", "Paris"), ("Peru", "Quito")])
        def test_capital(prompt_model, prompt_check, country, answer):
            reply = prompt_model(f"The capital of {country} is Lima or Paris.")
            prompt_check(reply, exact_answer, vars={"answer": answer})
    """
    )
    result = run_pytest("--promptopt", "--promptopt-model", "echo", "--promptopt-report", "r.json")
    result.assert_outcomes(passed=1, failed=1)
    results = {r["name"].split("[")[-1]: r for r in load_report(pytester.path / "r.json")["suites"][0]["results"]}
    assert results["France-Paris]"]["passed"] and results["Peru-Quito]"]["assertions"][0]["type"] == "python"
