"""Rules for ``NUMBER_RULES`` beyond the ranges of :func:`sdpo.cli.check_number_rules`'s own table.

``check_number_rules`` looks each rule name up in ``sdpo.cli._RULES``; importing this module adds
the rules below to that table (once; a rule the table already has is kept). The modules whose
arguments use one of them import it next to their ``NUMBER_RULES``. NaN fails every rule.

* ``finite`` - any finite number (a sign, an offset);
* ``>=-1`` - ``transformers``' ``local_rank`` (-1: not launched as one of several processes);
* ``-1or>=1`` - ``transformers``' ``max_steps`` (-1: the epochs decide).
"""

from __future__ import annotations

import math

from sdpo.cli import _RULES

EXTRA_RULES = {
    "finite": (lambda v: math.isfinite(v), "a finite number"),
    ">=-1": (lambda v: v >= -1, ">= -1"),
    "-1or>=1": (lambda v: v == -1 or v >= 1, "-1 or >= 1"),
}

for _name, _rule in EXTRA_RULES.items():
    _RULES.setdefault(_name, _rule)
