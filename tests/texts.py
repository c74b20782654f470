"""Random texts for the numerical tests: words, punctuation, accents, CJK and emoji."""

import random

WORDS = (
    "the a cat sat on mat quickly because tomorrow's weather report said rain however "
    "nobody listened to it and 42 people 3.14 résumé naïve café Zürich 東京 日本語 "
    "привет мир 🎉 👍🏽 ☕ ✨ — “quoted” (parenthesis) [bracket] {brace} \\n tab\tend"
).split(" ")


def random_text(rng: random.Random, lo: int = 1, hi: int = 40) -> str:
    n = rng.randint(lo, hi)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def random_example(rng: random.Random):
    turns = rng.randint(0, 2)
    messages = []
    for _ in range(turns):
        messages.append({"role": "user", "content": random_text(rng)})
        messages.append({"role": "assistant", "content": random_text(rng)})
    messages.append({"role": "user", "content": random_text(rng)})
    return messages, random_text(rng, 1, 60), random_text(rng, 1, 20)
