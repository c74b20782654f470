"""The defaults that docs/FIDELITY.md says are the references', in one place: a change of any of
them must be a deliberate edit of this file and of the table."""

from sdpo.templates import DEFAULT_OFFLINE_TEMPLATE, DEFAULT_TEMPLATE


def test_online_defaults():
    from sdpo.trainers.online import OnlineSDPOConfig

    cfg = OnlineSDPOConfig(train_jsonl="x")
    expected = dict(advantage_centering="sequence", template="hindsight", system_prompt="general",
                    learning_rate=5e-6, ppo_clip=0.2, temperature=1.0, save_steps=3, max_grad_norm=1.0,
                    max_train_prompts=512, max_prompt_tokens=512, seed=42, max_steps=None, ignore_first_tokens=0,
                    max_context_tokens=2048, use_vllm=False, rule_reward_weight=0.0)
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert DEFAULT_TEMPLATE == "hindsight"


def test_offline_defaults(tmp_path):
    from sdpo.trainers.offline import OfflineSDPOConfig

    cfg = OfflineSDPOConfig(output_dir=str(tmp_path / "o"), report_to="none")
    expected = dict(learning_rate=2e-6, lr_scheduler_type="cosine", num_train_epochs=2.0,
                    per_device_train_batch_size=4, gradient_accumulation_steps=8, max_grad_norm=10.0,
                    ignore_first_tokens=2, advantage_centering="none", append_eos=True, max_context_tokens=2048,
                    template="hindsight-revise", kl_coef=0.0)
    got = {k: getattr(cfg, k) for k in expected}
    got["lr_scheduler_type"] = str(getattr(cfg.lr_scheduler_type, "value", cfg.lr_scheduler_type))
    assert got == expected
    assert cfg.warmup_steps == 0.05 or getattr(cfg, "warmup_ratio", None) == 0.05
    assert DEFAULT_OFFLINE_TEMPLATE == "hindsight-revise"


def test_rich_feedback_defaults():
    from sdpo import SDPOConfig

    cfg = SDPOConfig()
    expected = dict(enabled=True, alpha=0.5, distillation_topk=100, distillation_add_tail=True, teacher_mode="ema",
                    ema_tau=0.05, is_clip=2.0, loss_aggregation="token_mean", success_reward_threshold=1.0,
                    dont_reprompt_on_self_success=True, environment_feedback_only_without_solution=True,
                    thinking_tag="<think>", demonstration_selection="first")
    assert {k: getattr(cfg, k) for k in expected} == expected
