"""``sdpo chat``: a local web chat that learns from the user's follow-ups, one SDPO update each.

:mod:`sdpo.chat.engine` (model, answers, updates, undo, checkpoints), :mod:`sdpo.chat.store`
(the SQLite database), :mod:`sdpo.chat.app` (the Gradio page), :mod:`sdpo.chat.simulate`
(headless sessions with a simulated user, evaluated against the base model) and
:mod:`sdpo.chat.export` (interaction records for ``sdpo train-offline``).
"""
