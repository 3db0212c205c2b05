"""Read the score out of a judge's reply, or refuse: a parse failure is counted and excluded, a wrong score is not.

The judge is asked for structured output (`{"score": <integer 0-100>}`, `tasks.judge.client`); that JSON is read
first. Gateways without structured output answer in text, read in this order, each step only when the earlier
ones found nothing:

1. a score the reply names: "Score: 85", "score of 85", "85/100", "85 out of 100" (all of them must agree);
2. the reply is one integer ("85", "**85**", "85.");
3. the closing sentence holds exactly one integer, once the scale ("0 to 100", "0-100") is taken out:
   "On a scale of 0 to 100, I give it 85." gives 85.

Anything else is refused, never guessed: an empty reply, a decimal ("8.5"), another scale ("7/10"), a number out of
0..100, two different named scores, two numbers in the closing sentence.
"""

from __future__ import annotations

import json
import re

SCORE_RANGE = range(0, 101)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)
# a number as a token of its own: not inside a word ("GPT-4" gives 4, a closing sentence with it is then ambiguous)
_NUMBER = r"(?<![\w.])(-?\d+(?:\.\d+)?)(?![\w]|\.\d)"
_NAMED = (
    re.compile(rf"\b(?:score|rating)\s*(?:is|of|:|=)?\s*{_NUMBER}(?:\s*(?:/|out of)\s*(\d+))?", re.IGNORECASE),
    re.compile(rf"{_NUMBER}\s*(?:/|out of)\s*(\d+)", re.IGNORECASE),
)
_SCALE = re.compile(r"\b0\s*(?:-|–|to)\s*100\b", re.IGNORECASE)
_LONE = re.compile(r"^[*_`\s]*(\d+)[*_`\s.!]*$")  # "85", "**85**", "85."
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def parse_score(reply: str | None) -> int | None:
    """The integer score 0..100 that `reply` gives, or None when it gives none or is ambiguous (module doc)."""
    if reply is None or not reply.strip():
        return None
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    if text.startswith("{"):
        return _from_json(text)
    for step in (_named, _lone, _closing_sentence):
        found, score = step(text)
        if found:
            return score
    return None


def _from_json(text: str) -> int | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    score = value.get("score") if isinstance(value, dict) else None
    if isinstance(score, str) and score.strip().isdigit():
        score = int(score)
    if isinstance(score, bool) or not isinstance(score, int):
        return None
    return score if score in SCORE_RANGE else None


def _as_score(number: str) -> int | None:
    """A number token as a score: an integer in 0..100, else None."""
    if not re.fullmatch(r"\d+", number):
        return None
    value = int(number)
    return value if value in SCORE_RANGE else None


def _named(text: str) -> tuple[bool, int | None]:
    """Scores the reply names: found when there is at least one; a score only when all agree and are valid."""
    scores = set()
    for pattern in _NAMED:
        for number, out_of in pattern.findall(text):
            if out_of and out_of != "100":
                scores.add(None)  # another scale: 7/10 is not 7
            else:
                scores.add(_as_score(number))
    if not scores:
        return False, None
    return True, scores.pop() if len(scores) == 1 else None


def _lone(text: str) -> tuple[bool, int | None]:
    match = _LONE.match(text)
    return (True, _as_score(match.group(1))) if match else (False, None)


def _closing_sentence(text: str) -> tuple[bool, int | None]:
    sentences = [s for s in _SENTENCE_END.split(_SCALE.sub(" ", text)) if s.strip()]
    numbers = re.findall(_NUMBER, sentences[-1]) if sentences else []
    if not numbers:
        return False, None
    return True, _as_score(numbers[0]) if len(numbers) == 1 else None
