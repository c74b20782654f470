"""Is an answer an answer? The collapse detector of user-interaction SDPO.

A small chat model trained on complaints read as hindsight tends to drift into short
apologies and filler ("I'm sorry for the confusion. I'm here to help."): text that
satisfies "concise" and "casual" while saying nothing about the request. Every summary,
evaluation and judge of this package checks for that collapse with the functions here.

:func:`non_answer_reason` names why an answer is not an answer, or returns None:

* ``empty`` - fewer than :data:`MIN_WORDS` words;
* ``loop`` - a sentence said three times, repeats making up 30 % of the sentences, or under 60 % of
  the word 4-grams distinct (a repetition loop);
* ``filler`` - with the apology/filler sentences removed (:data:`FILLER_PATTERNS`), fewer
  than :data:`MIN_CONTENT_WORDS` content words are left;
* ``off_topic`` - the request has at least :data:`MIN_REQUEST_WORDS` content words and the
  answer shares none of them (compared on their first five letters, a crude stem).

Content words: lower-case words of three or more letters that are not English stop words
(scikit-learn's list) and not filler vocabulary. The checks are deliberately lenient: a
real answer almost always repeats a word of what it answers; a collapsed one does not.

:func:`filler_char_spans` gives the character spans of apology/filler phrases and
:func:`filler_token_mask` maps them onto response tokens, so a trainer can report the
share of positive advantage that goes to those tokens.
"""

from __future__ import annotations

import re
from typing import Sequence

MIN_WORDS = 3
MIN_CONTENT_WORDS = 4
MIN_REQUEST_WORDS = 3
MIN_DISTINCT_4GRAMS = 0.6
MAX_REPEATED_SENTENCES = 0.3

# phrases a collapsed chat model produces whatever it was asked (apologies, offers, empty affirmations)
FILLER_PATTERNS = (
    r"\bI(?:'m| am) (?:so |very |really |truly )?sorry\b[^.!?\n]*",
    r"\b(?:my )?apologi(?:es|ze|se)\b[^.!?\n]*",
    r"\bsorry (?:for|about|to hear)\b[^.!?\n]*",
    r"\bI(?:'m| am) (?:here|always here|happy|glad|delighted) to (?:help|assist)\b[^.!?\n]*",
    r"\bI(?:'d| would|'ll| will) be (?:happy|glad|delighted) to (?:help|assist)\b[^.!?\n]*",
    r"\bI(?:'m| am) (?:glad|happy) (?:you|to hear|that)\b[^.!?\n]*",
    r"\b(?:I )?hope (?:this|that|it) helps\b[^.!?\n]*",
    r"\b(?:please )?(?:let me know|feel free)\b[^.!?\n]*",
    r"\bif you have any (?:other |more |further )?(?:questions|concerns)\b[^.!?\n]*",
    r"\bI understand(?: your| that| how)?\b[^.!?\n]*",
    r"\bthank(?:s| you)(?: so much)?(?: for [^.!?\n]*)?",
    r"\b(?:great|good|excellent) question\b[^.!?\n]*",
    r"\bhow (?:can|may) I (?:help|assist)\b[^.!?\n]*",
    r"\bis there anything else\b[^.!?\n]*",
    r"\b(?:sure|of course|certainly|absolutely|okay|ok)\b[!.,]?",
)
_FILLER = re.compile("|".join(f"(?:{p})" for p in FILLER_PATTERNS), re.I)
_WORD = re.compile(r"[A-Za-z][A-Za-z']+")
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")
_FILLER_WORDS = frozenset(
    "sorry apologize apologise apologies confusion help helps helping assist happy glad hope understand thanks "
    "thank please know feel free question questions sure course certainly absolutely okay hear here anything "
    "else really just like".split())


def _stop_words() -> frozenset[str]:
    try:
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
    except ImportError:  # scikit-learn is a dependency; keep the module importable without it
        ENGLISH_STOP_WORDS = frozenset("the a an and or but of to in on at for with is are was were be been it this "
                                       "that you your i me my we our they them he she his her".split())
    return frozenset(ENGLISH_STOP_WORDS) | {"i'm", "i've", "i'd", "i'll", "you're", "it's", "don't", "can't"}


_STOP = _stop_words()


def content_words(text: str) -> list[str]:
    """Lower-case words of 3+ letters that are neither stop words nor filler vocabulary."""
    words = [w.lower().strip("'") for w in _WORD.findall(text)]
    return [w for w in words if len(w) >= 3 and w not in _STOP and w not in _FILLER_WORDS]


def _stem(word: str) -> str:
    return word[:5]


def filler_char_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of apology / filler phrases in ``text``."""
    return [m.span() for m in _FILLER.finditer(text) if m.end() > m.start()]


def strip_filler(text: str) -> str:
    return _FILLER.sub(" ", text)


def is_loop(text: str) -> bool:
    """A repetition loop: a sentence of 5+ words said three times, or repeated sentences making up
    :data:`MAX_REPEATED_SENTENCES` or more of the sentences, or (20+ words) fewer than
    :data:`MIN_DISTINCT_4GRAMS` of the word 4-grams distinct - the text goes round in circles. A small
    model's habit of reusing a phrase, or one sentence said twice in a long answer, is not a loop."""
    sentences = [" ".join(s.lower().split()) for s in _SENTENCE.findall(text)]
    sentences = [s.strip(" .!?") for s in sentences if len(s.split()) >= 5]
    if sentences:
        counts: dict[str, int] = {}
        for s in sentences:
            counts[s] = counts.get(s, 0) + 1
        repeats = len(sentences) - len(counts)
        if max(counts.values()) >= 3 or repeats / len(sentences) >= MAX_REPEATED_SENTENCES:
            return True
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < 20:
        return False
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return len(set(grams)) / len(grams) < MIN_DISTINCT_4GRAMS


def non_answer_reason(request: str, answer: str) -> str | None:
    """``'empty'``, ``'loop'``, ``'filler'``, ``'off_topic'``, or None for an answer (see the module docs)."""
    if len(answer.split()) < MIN_WORDS:
        return "empty"
    if is_loop(answer):
        return "loop"
    content = content_words(strip_filler(answer))
    if len(content) < MIN_CONTENT_WORDS:
        return "filler"
    asked = {_stem(w) for w in content_words(request)}
    if len(asked) >= MIN_REQUEST_WORDS and not asked & {_stem(w) for w in content}:
        return "off_topic"
    return None


def is_non_answer(request: str, answer: str) -> bool:
    return non_answer_reason(request, answer) is not None


def degeneracy_rate(requests: Sequence[str], answers: Sequence[str]) -> float:
    """The share of ``answers`` that are non-answers to their ``requests`` (0.0 for none)."""
    if len(requests) != len(answers):
        raise ValueError("requests and answers differ in length")
    if not answers:
        return 0.0
    return sum(is_non_answer(r, a) for r, a in zip(requests, answers)) / len(answers)


def degeneracy_breakdown(requests: Sequence[str], answers: Sequence[str]) -> dict[str, int]:
    """How many answers fail for each reason (and ``answers``: how many pass)."""
    out = {"answers": 0, "empty": 0, "loop": 0, "filler": 0, "off_topic": 0}
    for r, a in zip(requests, answers):
        out[non_answer_reason(r, a) or "answers"] += 1
    return out


def filler_token_mask(tokenizer, response_ids: Sequence[int]) -> list[bool]:
    """Per response token: does it overlap an apology / filler span of the decoded response?"""
    from sdpo.signal import token_strings

    pieces = token_strings(tokenizer, list(response_ids))
    text = "".join(pieces)
    spans = filler_char_spans(text)
    mask, pos = [], 0
    for piece in pieces:
        start, end = pos, pos + len(piece)
        pos = end
        mask.append(any(s < end and start < e for s, e in spans) if end > start else False)
    return mask


def positive_advantage_share(advantages: Sequence[Sequence[float]], masks: Sequence[Sequence[bool]]) -> float:
    """Of all positive advantage in the batch, the share that falls on masked (filler) tokens."""
    total = inside = 0.0
    for adv, mask in zip(advantages, masks):
        for a, m in zip(adv, mask):
            if a > 0:
                total += a
                inside += a if m else 0.0
    return inside / total if total > 0 else 0.0
