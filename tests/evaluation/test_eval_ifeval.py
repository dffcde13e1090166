import random

import nltk
import pytest

from slotq.evaluation.datasets import EvalItem
from slotq.evaluation.ifeval import IfevalScorer


def item(instruction_ids, kwargs, prompt="Write something."):
    reference = {"prompt": prompt, "instruction_id_list": instruction_ids, "kwargs": kwargs}
    return EvalItem(item_id="1", messages=[{"role": "user", "content": prompt}], reference=reference)


def scorer_for(*items):
    return IfevalScorer(list(items))


def test_no_comma_pass_and_fail():
    case = item(["punctuation:no_comma"], [{}])
    scorer = scorer_for(case)
    passed = scorer.score("There are no commas here at all.", case.reference)
    failed = scorer.score("Apples, pears and plums.", case.reference)
    assert passed["prompt_strict"] is True
    assert passed["instructions"] == [{"id": "punctuation:no_comma", "strict": True, "loose": True}]
    assert failed["prompt_strict"] is False
    assert failed["instructions"][0]["strict"] is False


def test_quotation_and_lowercase():
    case = item(["startend:quotation", "change_case:english_lowercase"], [{}, {}])
    scorer = scorer_for(case)
    both = scorer.score('"all of this text is lowercase english."', case.reference)
    unquoted = scorer.score("all of this text is lowercase english.", case.reference)
    assert both["prompt_strict"] is True
    assert [r["strict"] for r in unquoted["instructions"]] == [False, True]
    assert unquoted["prompt_strict"] is False


def test_keyword_frequency_and_word_count():
    case = item(
        ["keywords:frequency", "length_constraints:number_words"],
        [{"keyword": "queue", "frequency": 2, "relation": "at least"}, {"num_words": 5, "relation": "less than"}],
    )
    scorer = scorer_for(case)
    assert scorer.score("queue queue", case.reference)["prompt_strict"] is True
    result = scorer.score("one queue only, and far too many words here", case.reference)
    assert [r["strict"] for r in result["instructions"]] == [False, False]


def test_loose_accepts_stripped_markdown():
    case = item(["startend:end_checker"], [{"end_phrase": "Is there anything else I can help with?"}])
    scorer = scorer_for(case)
    result = scorer.score("Done.\n**Is there anything else I can help with?**", case.reference)
    assert result["instructions"][0]["strict"] is False
    assert result["instructions"][0]["loose"] is True


def test_response_language_offline():
    case = item(["language:response_language"], [{"language": "en"}])
    scorer = scorer_for(case)
    english = scorer.score("This answer is written entirely in plain English sentences.", case.reference)
    german = scorer.score("Dieser Text ist vollständig auf Deutsch geschrieben worden.", case.reference)
    assert english["prompt_strict"] is True
    assert german["prompt_strict"] is False


def test_empty_output_fails_everything():
    case = item(["punctuation:no_comma"], [{}])
    result = scorer_for(case).score("", case.reference)
    assert result["prompt_strict"] is False
    assert result["instructions"][0]["loose"] is False


def _has_punkt_tab() -> bool:
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        return False
    return True


def test_missing_nltk_resource_skips_check():
    case = item(["length_constraints:number_sentences", "punctuation:no_comma"],
                [{"num_sentences": 2, "relation": "less than"}, {}])
    scorer = scorer_for(case)
    result = scorer.score("One sentence only.", case.reference)

    if _has_punkt_tab():
        assert "length_constraints:number_sentences" not in scorer.skipped
        assert len(result["instructions"]) == 2
        return
    assert "punkt_tab" in scorer.skipped["length_constraints:number_sentences"]
    assert result["skipped"] == ["length_constraints:number_sentences"]
    assert [r["id"] for r in result["instructions"]] == ["punctuation:no_comma"]
    assert result["prompt_strict"] is True


def test_unknown_instruction_skipped():
    case = item(["made_up:instruction"], [{}])
    scorer = scorer_for(case)
    result = scorer.score("anything", case.reference)
    assert "not in the IFEval registry" in scorer.skipped["made_up:instruction"]
    assert result["prompt_strict"] is None
    assert result["instructions"] == []


def test_caller_random_state_kept():
    case = item(["keywords:existence"], [{"keywords": ["queue"]}])
    random.seed(7)
    expected = random.random()
    random.seed(7)
    scorer_for(case).score("a queue", case.reference)
    assert random.random() == pytest.approx(expected)
