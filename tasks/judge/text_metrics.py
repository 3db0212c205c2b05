"""Free, deterministic scores of a generated response against its reference: ROUGE-L F1 and exact match.

They run on every alpaca evaluation, judge or not, so a sweep always has a reproducible signal beside perplexity.
ROUGE-L follows Google's `rouge-score` package (Lin 2004; lowercase, runs of characters outside ``[a-z0-9]`` split
tokens, no stemming) in ~20 lines, which spares the project `rouge-score`'s nltk/absl dependencies. Exact match
uses SQuAD's normalisation (lowercase, no punctuation, no articles, single spaces), fitting the report's "simple"
test half (rewrite, correct, classify) where one right answer exists.
"""

from __future__ import annotations

import re
import string

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def rouge_tokens(text: str) -> list[str]:
    """The tokens `rouge-score` compares: lowercase alphanumeric runs."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, in O(len(a)·len(b)) time and O(len(b)) memory."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of `prediction` against `reference`; 0.0 when either has no tokens (as `rouge-score`)."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    if not pred or not ref:
        return 0.0
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> bool:
    """Whether the two texts are equal after `normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(reference)
