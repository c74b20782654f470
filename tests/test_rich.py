"""Rich-feedback SDPO: teacher selection, templates, config validation, EMA teacher, short runs."""

import math

import pytest
import torch

from sdpo.templates import strip_thinking
from sdpo.trainers.rich import SDPOConfig, SDPOConfigError, choose_teachers, teacher_prompt


# ---------------------------------------------------------------- selection


def test_demonstration_is_a_successful_peer_never_itself():
    cfg = SDPOConfig()
    rewards = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    choices = choose_teachers(rewards, [None] * 8, 4, cfg)
    assert choices[0].demonstration is None  # the only success in its group is itself
    assert [c.demonstration for c in choices[1:4]] == [0, 0, 0]
    assert choices[4].demonstration == 5 and choices[5].demonstration == 4
    assert [c.demonstration for c in choices[6:]] == [4, 4]
    for i, c in enumerate(choices):
        assert c.demonstration != i
        if c.demonstration is not None:
            assert c.demonstration // 4 == i // 4  # same group


def test_first_successful_peer_by_default_best_as_option_and_nan_never_counts():
    rewards = [0.6, 0.9, float("nan"), 0.0]
    first = choose_teachers(rewards, [None] * 4, 4, SDPOConfig(success_reward_threshold=0.5))
    assert [c.demonstration for c in first] == [1, 0, 0, 0]  # the references: the first successful peer
    best = choose_teachers(rewards, [None] * 4, 4,
                           SDPOConfig(success_reward_threshold=0.5, demonstration_selection="best"))
    assert [c.demonstration for c in best] == [1, 0, 1, 1]


def test_rollout_with_neither_demo_nor_feedback_is_masked():
    cfg = SDPOConfig()
    choices = choose_teachers([0.0, 0.0, 1.0, 0.0], [None, "  ", None, "wrong: 3"], 2, cfg)
    # group 0: nobody succeeded, no usable feedback; rollout 2 succeeded but has no successful peer
    assert [c.active for c in choices] == [False, False, False, True]
    assert choices[3].demonstration == 2
    assert choices[3].use_feedback is False  # default: feedback only when no successful peer


def test_feedback_only_without_solution_rule():
    fb = ["f0", "f1", "f2", "f3"]
    only = choose_teachers([1.0, 0.0, 0.0, 0.0], fb, 2, SDPOConfig())
    assert [c.use_feedback for c in only] == [True, False, True, True]
    always = choose_teachers([1.0, 0.0, 0.0, 0.0], fb, 2, SDPOConfig(environment_feedback_only_without_solution=False))
    assert all(c.use_feedback for c in always)
    none = choose_teachers([1.0, 0.0, 0.0, 0.0], fb, 2, SDPOConfig(include_environment_feedback=False))
    assert [c.active for c in none] == [False, True, False, False]


def test_reprompt_off_uses_feedback_only():
    choices = choose_teachers([1.0, 1.0], ["a", None], 2, SDPOConfig(reprompt_teacher=False))
    assert [c.demonstration for c in choices] == [None, None]
    assert [c.active for c in choices] == [True, False]


def test_group_size_must_divide_batch():
    with pytest.raises(ValueError, match="groups of 3"):
        choose_teachers([1.0] * 4, [None] * 4, 3, SDPOConfig())


# ---------------------------------------------------------------- templates


def test_thinking_blocks_are_stripped():
    assert strip_thinking("<think>scratch\nwork</think>The answer is 4.") == "The answer is 4."
    assert strip_thinking("A <think>x</think>B<think>y</think> C") == "A B C"
    assert strip_thinking("Answer 4 <think>never closed") == "Answer 4"
    assert strip_thinking("<reason>r</reason>ok", "<reason>") == "ok"
    assert strip_thinking("<think>x</think>kept", None) == "<think>x</think>kept"


def test_teacher_prompt_is_filled_correctly():
    cfg = SDPOConfig(
        teacher_prompt_template="Q: {prompt}|{demonstration}|{feedback}",
        demonstration_template="D[{demonstration}]",
        feedback_template="F[{feedback}]",
    )
    assert teacher_prompt("2+2?", "<think>hmm</think>4", None, cfg) == "Q: 2+2?|D[4]|"
    assert teacher_prompt("2+2?", None, "wrong, got 5", cfg) == "Q: 2+2?||F[wrong, got 5]"
    assert teacher_prompt("use {braces}", "{x}", "{y}", cfg) == "Q: use {braces}|D[{x}]|F[{y}]"
    conv = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]
    out = teacher_prompt(conv, "4", None, cfg)
    assert out[0] == conv[0] and out[1] == {"role": "user", "content": "Q: 2+2?|D[4]|"}
    assert conv[1]["content"] == "2+2?"  # the original is untouched
    with pytest.raises(ValueError, match="end with a user message"):
        teacher_prompt([{"role": "assistant", "content": "x"}], "4", None, cfg)


def test_default_templates_read_naturally():
    text = teacher_prompt("What is 2+3?", "2+3 = 5", "Wrong: the answer given was 6.", SDPOConfig(
        environment_feedback_only_without_solution=False))
    assert text.startswith("What is 2+3?")
    assert "2+3 = 5" in text and "Wrong: the answer given was 6." in text


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha": 1.5}, "alpha must be in"),
        ({"teacher_mode": "teacher"}, "teacher_mode must be one of"),
        ({"loss_aggregation": "sum"}, "loss_aggregation must be one of"),
        ({"demonstration_selection": "random"}, "demonstration_selection must be one of"),
        ({"is_clip": float("nan")}, "is_clip"),
        ({"ema_tau": 0.0}, "ema_tau"),
        ({"distillation_topk": None, "alpha": 0.5}, "needs alpha=1.0"),
        ({"is_clip": 0.0}, "is_clip"),
        ({"dont_reprompt_on_self_success": False}, "its own demonstration"),
        ({"reprompt_teacher": False, "include_environment_feedback": False}, "nothing to distil"),
        ({"thinking_tag": "think"}, "thinking_tag"),
        ({"teacher_prompt_template": "{demonstration}"}, r"must contain \{prompt\}"),
        ({"teacher_prompt_template": "{prompt}{answer}"}, "unknown placeholder"),
        ({"feedback_template": "no placeholder"}, "feedback_template"),
        ({"teacher_prompt_template": "{prompt"}, "not a valid format string"),
    ],
)
def test_invalid_configs_fail_at_construction(kwargs, message):
    with pytest.raises(SDPOConfigError, match=message):
        SDPOConfig(**kwargs)


def test_modes():
    assert SDPOConfig().mode == "topk"
    assert SDPOConfig(full_logit_distillation=True).mode == "full"
    assert SDPOConfig(distillation_topk=None, alpha=1.0).mode == "sampled_token"


# ---------------------------------------------------------------- trainer


@pytest.fixture(scope="module")
def tok():
    from sdpo.models import load_tokenizer

    return load_tokenizer("tiny-random")


def _trainer(tok, tmp_path, reward, *, sdpo_config=None, steps=2, **grpo):
    from datasets import Dataset
    from trl import GRPOConfig

    from sdpo import SDPOTrainer
    from sdpo.models import tiny_random_model

    ds = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "answer": a + b}
         for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
    )
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=4,
        max_completion_length=6, max_steps=steps, learning_rate=1e-3, logging_steps=1, report_to=[],
        use_cpu=True, save_strategy="no", seed=0, **grpo,
    )
    return SDPOTrainer(model=tiny_random_model(len(tok)), args=args, sdpo_config=sdpo_config or SDPOConfig(),
                       processing_class=tok, reward_funcs=[reward], train_dataset=ds)


def test_feedback_from_the_reward_function_reaches_the_teacher(tok, tmp_path):
    seen = {}

    def reward(prompts, completions, answer, **_):
        seen["answer"] = list(answer)
        # rollout 0 of each group succeeds; the others get feedback naming their index
        return [{"score": 1.0 if k % 4 == 0 else 0.0, "feedback": f"attempt {k} was wrong"} for k in range(len(completions))]

    trainer = _trainer(tok, tmp_path, reward, sdpo_config=SDPOConfig(environment_feedback_only_without_solution=False))
    trainer.train()
    messages = trainer._last_teacher_messages
    assert len(messages) == 4 and seen["answer"]
    contents = [m[-1]["content"] for m in messages]
    # rollout 0 has no successful peer -> only its feedback; rollouts 1..3 get rollout 0 as demonstration + feedback
    assert "judged correct" not in contents[0] and "attempt 0 was wrong" in contents[0]
    for k in (1, 2, 3):
        assert "judged correct" in contents[k] and f"attempt {k} was wrong" in contents[k]
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    assert logs[-1]["self_distillation/reprompt_sample_fraction"] == 1.0


def test_plain_float_rewards_and_masking(tok, tmp_path):
    def reward(prompts, completions, **_):
        return [0.0] * len(completions)  # nobody succeeds, no feedback: every rollout is masked

    trainer = _trainer(tok, tmp_path, reward, steps=1)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs[-1]["self_distillation/reprompt_sample_fraction"] == 0.0
    assert logs[-1]["loss"] == 0.0
    after = list(trainer.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_ema_teacher_update_is_exact(tok, tmp_path):
    def reward(prompts, completions, **_):
        return [{"score": float(k % 2), "feedback": "f"} for k in range(len(completions))]

    tau = 0.3
    trainer = _trainer(tok, tmp_path, reward, steps=1, sdpo_config=SDPOConfig(ema_tau=tau))
    teacher0 = {n: p.detach().clone().double() for n, p in trainer.teacher_model.named_parameters()}
    student0 = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    student1 = dict(trainer.model.named_parameters())
    moved = 0
    for name, p in trainer.teacher_model.named_parameters():
        expected = (1 - tau) * teacher0[name] + tau * student1[name].detach().double()
        assert torch.allclose(p.detach().double(), expected, atol=1e-7), name
        moved += not torch.equal(student1[name].detach(), student0[name])
    assert moved > 0  # the student did move, so the check means something


def test_frozen_teacher_stays_put_and_live_teacher_is_the_student(tok, tmp_path):
    def reward(prompts, completions, **_):
        return [{"score": float(k % 2), "feedback": "f"} for k in range(len(completions))]

    frozen = _trainer(tok, tmp_path, reward, steps=1, sdpo_config=SDPOConfig(teacher_mode="frozen"))
    t0 = [p.detach().clone() for p in frozen.teacher_model.parameters()]
    frozen.train()
    assert all(torch.equal(a, b) for a, b in zip(t0, frozen.teacher_model.parameters()))
    live = _trainer(tok, tmp_path, reward, steps=1, sdpo_config=SDPOConfig(teacher_mode="live"))
    assert live.teacher_model is live.model


def test_reward_function_errors_are_clear(tok, tmp_path):
    def bad(prompts, completions, **_):
        return [{"feedback": "no score"} for _ in completions]

    trainer = _trainer(tok, tmp_path, bad, steps=1)
    with pytest.raises(ValueError, match="without 'score'"):
        trainer.train()


def test_trainer_under_ddp_zero3_and_fsdp2_trains_the_same_model(tiny_dir, tmp_path):
    """Two processes (gloo), EMA teacher: DDP, ZeRO-3 (partitioned load) and FSDP2 (sharded checkpoints)
    end with the same weights, and the saved model is one loadable file in every mode."""
    import deepspeed  # noqa: F401  (a dev dependency: the test must not silently skip)

    from tests.conftest import ROOT, SHARDED_LAUNCH, SHARDED_SCRIPT, launch_two_processes, max_weight_diff

    outs = {}
    modes = (("ddp", ["--multi_gpu"]), ("zero3", SHARDED_LAUNCH["zero3"]), ("fsdp2", SHARDED_LAUNCH["fsdp2"]))
    for port, (mode, launcher) in enumerate(modes):
        outs[mode] = tmp_path / mode
        done = launch_two_processes(launcher, [SHARDED_SCRIPT, str(ROOT / "tests" / "rich_sharded_run.py"),
                                               str(tiny_dir), str(outs[mode]), "ema"], 29630 + port)
        assert "rank 0/2 finished" in done.stdout and "rank 1/2 finished" in done.stdout
    assert max_weight_diff(outs["ddp"], tiny_dir) > 1e-4  # it trained
    assert max_weight_diff(outs["zero3"], outs["ddp"]) <= 5e-5
    assert max_weight_diff(outs["fsdp2"], outs["ddp"]) <= 5e-5


@pytest.mark.parametrize("skip", [True, False])
def test_a_step_with_a_non_finite_gradient_norm_changes_neither_student_nor_ema_teacher(tok, tmp_path, skip):
    """As lasgroup/SDPO (verl/workers/actor/dp_actor.py, _optimizer_step / update_policy): a non-finite gradient
    norm skips the optimizer step and the EMA teacher update (issue 28); skip_nonfinite_steps=False is TRL's."""
    def reward(prompts, completions, **_):
        return [{"score": float(k % 2), "feedback": "f"} for k in range(len(completions))]

    trainer = _trainer(tok, tmp_path, reward, steps=1, sdpo_config=SDPOConfig(ema_tau=0.3, skip_nonfinite_steps=skip))
    first = next(p for p in trainer.model.parameters() if p.requires_grad)
    first.register_hook(lambda g: g * float("nan"))  # the gradient norm of every step is NaN
    student0 = [p.detach().clone() for p in trainer.model.parameters()]
    teacher0 = [p.detach().clone() for p in trainer.teacher_model.parameters()]
    trainer.train()
    student_same = all(torch.equal(a, b) for a, b in zip(student0, trainer.model.parameters()))
    teacher_same = all(torch.equal(a, b) for a, b in zip(teacher0, trainer.teacher_model.parameters()))
    assert (student_same, teacher_same) == (skip, skip)
    assert trainer.nonfinite_steps == (1 if skip else 0)
