"""User personas: the preferences a simulated user holds and reacts to.

Each persona is an identifier and a description written in the user's own voice;
user simulators are prompted with the description, and judges use it to decide
which of two answers that user would prefer.
"""

from __future__ import annotations

_LENGTH = {
    "concise": "I want short answers: the key point in a few sentences, no padding or long introductions.",
    "detailed": "I want thorough answers that explain the reasoning, cover the important cases and give examples.",
}
_TONE = {
    "casual": "Talk to me in a relaxed, friendly, conversational way, like a friend would.",
    "professional": "Keep the tone professional and polished, as in a workplace document.",
}
_LEVEL = {
    "beginner": "I am new to most topics, so avoid jargon and explain terms in plain words.",
    "expert": "I know the field well; skip the basics and use precise technical language.",
}

PERSONAS: dict[str, str] = {
    f"{length}_{tone}_{level}": " ".join((_LENGTH[length], _TONE[tone], _LEVEL[level]))
    for length in _LENGTH
    for tone in _TONE
    for level in _LEVEL
}
PERSONAS.update(
    {
        "poetic": "I love answers with some poetry in them: vivid images, rhythm and a lyrical turn of phrase.",
        "no_punctuation": "I write without punctuation and like answers that do the same, no commas or full stops.",
        "no_emojis": "Never use emojis or emoticons in your answers; they look unprofessional to me.",
        "less_filler_praise_sycophancy": (
            "Skip the filler, the compliments about my question and the flattery. Just answer."
        ),
        "answer_directly_reduce_formatting": (
            "Answer directly in plain prose. I do not want headers, bold text or bullet points unless necessary."
        ),
        "no_first_person": "Do not talk about yourself: no 'I think', 'I would', 'in my experience'.",
        "clarification_first": "When my request is ambiguous, ask me a clarifying question before answering.",
        "single_answer": "Give me one recommendation and commit to it, not a menu of options.",
        "writing_tics": (
            "I dislike stock phrases such as 'delve', 'tapestry', 'testament to' and long dashes; write plainly."
        ),
        "formatting": "I like well-structured answers with headers, lists and bold key terms so I can skim.",
        "no_sycophantic": "Do not agree with me just to please me; tell me plainly when I am wrong.",
        "sycophantic_and_praise": "I like being encouraged: praise my ideas and be warm and enthusiastic.",
        "answer_first": "Put the answer in the first sentence, then add any explanation after it.",
        "no_filler_followup": "Do not end with offers of more help or questions like 'Would you like to know more?'.",
        "high_initiative": "Take initiative: anticipate what I will need next and suggest concrete next steps.",
        "committing": "Be decisive. Avoid hedging words like 'might', 'perhaps' or 'it depends'.",
        "no_lists": "Never answer with bullet points or numbered lists; write connected sentences and paragraphs.",
        "more_lists": "I prefer information in bullet points or numbered lists rather than long paragraphs.",
        "more_formatting": "Use more formatting: headers, bold key terms and tables where they help.",
        "less_formatting": "Use less formatting: plain paragraphs, hardly any headers, bold text or lists.",
        "opinionated": "Give me your actual opinion and take a side instead of listing every view neutrally.",
        "exclamation": "I like energetic answers with enthusiasm and exclamation marks!",
    }
)


class UnknownPersonaError(ValueError):
    pass


def persona_description(style: str) -> str:
    """The description of a persona identifier; unknown identifiers list the valid ones."""
    try:
        return PERSONAS[style]
    except KeyError:
        raise UnknownPersonaError(
            f"unknown style {style!r}; valid styles: {', '.join(PERSONAS)} (see `sdpo personas`)"
        ) from None
