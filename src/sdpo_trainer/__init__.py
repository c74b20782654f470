"""The seed project's import path, kept so its scripts run unchanged.

``from sdpo_trainer import SDPOTrainer, SDPOConfig`` gives :class:`sdpo.SDPOTrainer`
and :class:`sdpo.SDPOConfig` (``sdpo.trainers.rich``); nothing else lives here. The
seed's options keep their names (``alpha``, ``distillation_topk``, ``teacher_mode``
with ``"ema"``, ``"copy"`` (the current student) or ``"fixed"`` (the initial model),
``ema_tau``, ``ema_update_every``, ``is_coef``, ``is_clip``, ``reprompt_teacher``,
``thinking_tag``).
"""

from sdpo.trainers.rich import SDPOConfig, SDPOConfigError, SDPOTrainer

__all__ = ["SDPOConfig", "SDPOConfigError", "SDPOTrainer"]
