"""``sdpo personas``: the user personas (styles) simulators and judges know."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PersonasArguments:
    style: str | None = field(default=None, metadata={"help": "show only this persona"})


ARGUMENTS = PersonasArguments


def run(args: PersonasArguments) -> int:
    from sdpo.feedback.personas import PERSONAS, persona_description

    if args.style:
        print(f"{args.style}: {persona_description(args.style)}")
        return 0
    width = max(map(len, PERSONAS))
    for name, text in PERSONAS.items():
        print(f"{name.ljust(width)}  {text}")
    return 0
