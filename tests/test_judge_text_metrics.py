"""ROUGE-L F1 and exact match: hand-checkable cases, and values computed by Google's `rouge-score` 0.1.2
(`RougeScorer(["rougeL"], use_stemmer=False)`), the reference implementation, which the project does not install.
"""

from __future__ import annotations

import pytest

from tasks.judge.text_metrics import exact_match, lcs_length, normalize_answer, rouge_l_f1, rouge_tokens

# (prediction, reference, rouge-score's rougeL fmeasure)
REFERENCE_VALUES = [
    ("the cat sat on the mat", "the cat is on the mat", 0.8333333333333334),
    ("Mouse 1 was chased by the cat.", "mouse 1 was chased!", 0.7272727272727273),
    ("Hello, World! It's café time", "hello world its caf time", 0.7272727272727272),
    ("", "x", 0.0),
    ("a b c d e", "e d c b a", 0.2),
    ("police killed the gunman", "the gunman killed police", 0.5),
    ("The correct spelling is 'Occasion'.", "Occasion", 0.33333333333333337),
]


@pytest.mark.parametrize(("prediction", "reference", "expected"), REFERENCE_VALUES)
def test_rouge_l_matches_the_reference_implementation(prediction: str, reference: str, expected: float) -> None:
    assert rouge_l_f1(prediction, reference) == pytest.approx(expected, abs=1e-12)


def test_rouge_l_by_hand() -> None:
    # LCS of "a b c d" and "a x c d" is "a c d": P = R = 3/4
    assert lcs_length(["a", "b", "c", "d"], ["a", "x", "c", "d"]) == 3
    assert rouge_l_f1("a b c d", "a x c d") == pytest.approx(0.75)
    # P = 2/2, R = 2/4 -> F1 = 2/3; the measure is symmetric in F1
    assert rouge_l_f1("a b", "a x b y") == pytest.approx(2 / 3) == pytest.approx(rouge_l_f1("a x b y", "a b"))
    assert rouge_l_f1("same words", "Same, words!") == 1.0
    assert rouge_l_f1("", "") == 0.0 and rouge_l_f1("x", "y") == 0.0
    assert rouge_tokens("It's 9:30 -- OK?") == ["it", "s", "9", "30", "ok"]


def test_exact_match_normalises_like_squad() -> None:
    assert normalize_answer("  The Occasion!  ") == "occasion"
    assert exact_match("The correct spelling is Occasion.", "the correct spelling is occasion")
    assert exact_match("An apple", "apple.")
    assert not exact_match("The correct spelling is 'Occasion'.", "Occasion")
    assert not exact_match("Mouse was chased", "The mouse was chased by the cat.")
