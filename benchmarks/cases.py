"""Sixteen realistic hindsight cases of uneven length, for the signal benchmark."""

from __future__ import annotations

_PARAGRAPHS = [
    "A hash map stores key-value pairs in an array of buckets. The key is hashed to pick a bucket, "
    "so lookups take constant time on average, as long as the table is not too full.",
    "When two keys land in the same bucket, the map resolves the collision either by chaining, "
    "keeping a small list per bucket, or by open addressing, probing for the next free slot.",
    "Most implementations grow the table when the load factor passes a threshold such as 0.75, "
    "rehashing every entry into a larger array; this keeps operations fast at the cost of an occasional pause.",
    "In Python, dictionaries are hash maps with insertion order preserved since version 3.7, and the "
    "keys must be hashable, which is why lists cannot be used as keys but tuples of immutable values can.",
    "If you need sorted iteration, a balanced tree or a sorted list with bisection is a better fit, "
    "because hash maps give no useful order beyond insertion.",
    "For very large data that does not fit in memory, consider an on-disk key-value store such as "
    "SQLite or LMDB, which keep an index on disk and cache the hot part of it in memory.",
]

_PROMPTS = [
    "How does a hash map work?",
    "Explain hash maps to me like I'm new to programming.",
    "I'm preparing for an interview. Can you explain hash maps, collisions and resizing in detail, "
    "and mention how Python's dict differs from Java's HashMap?",
    "quick q: why can't I use a list as a dict key in python",
]

_FOLLOWUPS = [
    "Way too long. I just needed the one-line version.",
    "Can you give a concrete code example instead of all the theory?",
    "Thanks, that's exactly the level of detail I wanted.",
    "You didn't answer the part about Java at all.",
    "Please avoid jargon like 'load factor', I'm a beginner.",
    "Could you format that as a bulleted list?",
    "Hmm, I think you're wrong about the insertion order thing.",
    "Great. Unrelated: what's a good name for a cat?",
]


def benchmark_cases() -> list[tuple]:
    """(messages, response, followup) with contexts of 1-5 turns and responses of 1-6 paragraphs."""
    cases = []
    for i in range(16):
        n_par = 1 + (i * 5) % 6  # 1..6 paragraphs, spread unevenly
        response = " ".join(_PARAGRAPHS[(i + k) % len(_PARAGRAPHS)] for k in range(n_par))
        if i % 5 == 0:
            response = response.split(". ")[0] + "."  # a few very short answers
        messages = []
        for t in range(i % 3):  # some multi-turn histories
            messages.append({"role": "user", "content": _PROMPTS[(i + t) % len(_PROMPTS)]})
            messages.append({"role": "assistant", "content": _PARAGRAPHS[(i + 2 * t) % len(_PARAGRAPHS)]})
        messages.append({"role": "user", "content": _PROMPTS[i % len(_PROMPTS)]})
        cases.append((messages, response, _FOLLOWUPS[i % len(_FOLLOWUPS)]))
    return cases
