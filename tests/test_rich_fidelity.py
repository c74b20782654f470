"""Rich-feedback SDPO against the references (lasgroup/SDPO, sdpo-rl), see docs/FIDELITY.md.

The loss the trainer computes (``SDPOTrainer._compute_self_distillation_loss``, called
on random logits) is compared with a float64 transcription of lasgroup/SDPO's
``compute_self_distillation_loss`` + ``agg_loss(token-mean)`` (verl/trainer/ppo/core_algos.py):

    loss_mask = response_mask * self_distillation_mask[:, None]
    per_token = D(student, teacher)            top-k (+tail) / full generalized JSD, or sampled-token
    per_token *= min(exp(clamp(s - old, -20, 20)), is_clip)      only if is_clip is not None
    loss = sum(per_token * loss_mask) / max(sum(loss_mask), 1)
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sdpo.trainers.rich import SDPOConfig, SDPOConfigError, SDPOTrainer, to_trl_config

B, T, V = 6, 7, 12


# ------------------------------------------------------------------ float64 reference


def _log_softmax64(row):
    row = np.asarray(row, dtype=np.float64)
    m = row.max()
    return row - (m + math.log(np.exp(row - m).sum()))


def _gjsd64(s, t, alpha):
    """Generalized JSD as the reference writes it: lerp(KL(S||M), KL(T||M), alpha), M = (1-a)S + aT."""
    if alpha == 0.0:
        return float((np.exp(t) * (t - s)).sum())
    if alpha == 1.0:
        return float((np.exp(s) * (s - t)).sum())
    m = np.logaddexp(s + math.log(1 - alpha), t + math.log(alpha))
    kl_s = (np.exp(s) * (s - m)).sum()
    kl_t = (np.exp(t) * (t - m)).sum()
    return float(kl_s + alpha * (kl_t - kl_s))


def _with_tail64(lp):
    captured = min(math.log(np.exp(lp).sum()), -1e-7)
    return np.append(lp, math.log(-math.expm1(captured)))


def reference_loss64(student, teacher, ids, response_mask, sd_mask, old, *, mode, alpha, k=5, tail=True,
                     is_clip=2.0, aggregation="token_mean"):
    student, teacher = student.detach().double().numpy(), teacher.double().numpy()
    per_token = np.zeros((B, T))
    s_tok = np.zeros((B, T))
    for b in range(B):
        for t in range(T):
            ls, lt = _log_softmax64(student[b, t]), _log_softmax64(teacher[b, t])
            y = int(ids[b, t])
            s_tok[b, t] = ls[y]
            if mode == "full":
                per_token[b, t] = _gjsd64(ls, lt, alpha)
            elif mode == "topk":
                idx = np.argsort(-student[b, t], kind="stable")[:k]  # the student's top-k tokens
                ss, tt = ls[idx], lt[idx]
                if tail:
                    ss, tt = _with_tail64(ss), _with_tail64(tt)
                else:
                    ss = ss - math.log(np.exp(ss).sum())
                    tt = tt - math.log(np.exp(tt).sum())
                per_token[b, t] = _gjsd64(ss, tt, alpha)
            else:  # sampled token: value (log S(y) - log T(y)) * log S(y)
                per_token[b, t] = (ls[y] - lt[y]) * ls[y]
    if is_clip is not None and old is not None:
        ratio = np.minimum(np.exp(np.clip(s_tok - old.double().numpy(), -20.0, 20.0)), is_clip)
        per_token = per_token * ratio
    mask = response_mask.double().numpy() * sd_mask.double().numpy()[:, None]
    if aggregation == "token_mean":
        return float((per_token * mask).sum() / max(mask.sum(), 1.0))
    # TRL's: mean over all rows of each row's token mean (an empty row contributes 0 and still counts)
    rows = [(per_token[b] * mask[b]).sum() / max(mask[b].sum(), 1.0) for b in range(B)]
    return float(np.mean(rows))


# ------------------------------------------------------------------ the trainer's loss


def _batch(seed, *, masked_rows=(1, 4)):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(B, T, V, generator=g) * 2.0).requires_grad_()
    teacher = torch.randn(B, T, V, generator=g) * 2.0
    ids = torch.randint(0, V, (B, T), generator=g)
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    response_mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    sd_mask = torch.ones(B)
    sd_mask[list(masked_rows)] = 0.0  # rollouts without a teacher
    # old log-probs off by up to +-1.5 nats so that some ratios exceed the clip of 2
    with torch.no_grad():
        s_tok = torch.log_softmax(student.float(), -1).gather(-1, ids[..., None])[..., 0]
    old = s_tok - (torch.rand(B, T, generator=g) * 3.0 - 1.5)
    return student, teacher, ids, response_mask, sd_mask, old


def trainer_loss(cfg, student, teacher, ids, response_mask, sd_mask, old):
    logged = []
    fake = SimpleNamespace(
        sdpo_config=cfg,
        accelerator=SimpleNamespace(gather=lambda x: x),
        _log_self_distillation_metric=lambda mode, value: logged.append(value),
    )
    distillation_logits = SimpleNamespace(
        student_logits=student, teacher_logits=teacher, completion_ids=ids,
        loss_mask=response_mask * sd_mask[:, None],  # as TRL builds it
    )
    inputs = {} if old is None else {"old_per_token_logps": old}
    loss = SDPOTrainer._compute_self_distillation_loss(fake, SimpleNamespace(training=True), inputs,
                                                       distillation_logits)
    return loss, logged


CASES = [
    dict(mode="topk", alpha=0.5, k=5, tail=True),
    dict(mode="topk", alpha=0.0, k=5, tail=True),
    dict(mode="topk", alpha=1.0, k=3, tail=False),
    dict(mode="full", alpha=0.5),
    dict(mode="full", alpha=1.0),
    dict(mode="sampled_token", alpha=1.0),
]


def _config(case, **extra):
    kw = dict(alpha=case["alpha"], **extra)
    if case["mode"] == "full":
        kw["full_logit_distillation"] = True
    elif case["mode"] == "topk":
        kw.update(distillation_topk=case["k"], distillation_add_tail=case["tail"])
    else:
        kw["distillation_topk"] = None
    return SDPOConfig(**kw)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['mode']}-a{c['alpha']}")
@pytest.mark.parametrize("is_clip", [2.0, None])
def test_default_loss_is_the_references_token_mean(case, is_clip):
    for seed in (0, 1):
        batch = _batch(seed)
        cfg = _config(case, is_clip=is_clip)
        assert cfg.loss_aggregation == "token_mean"  # the default
        loss, _ = trainer_loss(cfg, *batch)
        want = reference_loss64(*batch, is_clip=is_clip, **case)
        assert loss.item() == pytest.approx(want, rel=2e-5, abs=1e-7)


def test_token_mean_is_not_diluted_by_rollouts_without_a_teacher():
    """Adding rollouts without a teacher leaves the reference's loss unchanged, and shrinks TRL's."""
    case = CASES[0]
    student, teacher, ids, response_mask, sd_mask, old = _batch(3, masked_rows=())
    few = sd_mask.clone()
    few[[0, 2, 5]] = 0.0
    # rows 0, 2, 5 masked vs rows 0, 2, 5 removed: token mean identical
    masked, _ = trainer_loss(_config(case), student, teacher, ids, response_mask, few, old)
    keep = [1, 3, 4]
    global B
    b0, B = B, len(keep)
    try:
        kept = reference_loss64(student[keep], teacher[keep], ids[keep], response_mask[keep], torch.ones(3),
                                old[keep], **case)
    finally:
        B = b0
    assert masked.item() == pytest.approx(kept, rel=2e-5)
    trl, _ = trainer_loss(_config(case, loss_aggregation="sequence_mean_trl"), student, teacher, ids,
                          response_mask, few, old)
    assert trl.item() < 0.75 * masked.item()  # half the rows count as zero there


@pytest.mark.parametrize("case", CASES[:1] + CASES[3:4], ids=lambda c: c["mode"])
def test_trl_sequence_mean_is_kept_as_an_option(case):
    batch = _batch(5)
    loss, _ = trainer_loss(_config(case, loss_aggregation="sequence_mean_trl"), *batch)
    want = reference_loss64(*batch, aggregation="sequence_mean_trl", **case)
    assert loss.item() == pytest.approx(want, rel=2e-5)
    token_mean = reference_loss64(*batch, **case)
    assert abs(want - token_mean) > 1e-3 * abs(token_mean)  # the two aggregations differ here


def test_no_importance_weighting_when_is_clip_is_none():
    case = CASES[0]
    student, teacher, ids, response_mask, sd_mask, old = _batch(7)
    off, _ = trainer_loss(_config(case, is_clip=None), student, teacher, ids, response_mask, sd_mask, old)
    on_policy, _ = trainer_loss(_config(case, is_clip=None), student, teacher, ids, response_mask, sd_mask, None)
    unweighted = reference_loss64(student, teacher, ids, response_mask, sd_mask, None, **case)
    assert off.item() == pytest.approx(unweighted, rel=2e-5)
    assert off.item() == pytest.approx(on_policy.item(), rel=1e-6)
    # float("inf") is the unclipped ratio (what is_clip=None used to mean)
    unclipped, _ = trainer_loss(_config(case, is_clip=float("inf")), student, teacher, ids, response_mask, sd_mask,
                                old)
    want = reference_loss64(student, teacher, ids, response_mask, sd_mask, old, is_clip=float("inf"), **case)
    assert unclipped.item() == pytest.approx(want, rel=2e-5)
    assert abs(unclipped.item() - off.item()) > 1e-3 * off.item()
    # and is_coef=0 switches the weight off too
    coef0, _ = trainer_loss(_config(case, is_coef=0.0), student, teacher, ids, response_mask, sd_mask, old)
    assert coef0.item() == pytest.approx(off.item(), rel=1e-6)


def test_gradient_matches_the_reference_token_mean():
    """d loss / d student logits equals the float64 gradient of the transcribed reference (finite differences
    on a few coordinates)."""
    case = CASES[0]
    student, teacher, ids, response_mask, sd_mask, old = _batch(11)
    loss, _ = trainer_loss(_config(case), student, teacher, ids, response_mask, sd_mask, old)
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.all(grad[[1, 4]] == 0)  # masked rollouts get no gradient
    g = torch.Generator().manual_seed(0)
    eps = 1e-4
    for _ in range(6):
        b = int(torch.randint(0, B, (1,), generator=g))
        if sd_mask[b] == 0:
            b = 0
        t, v = 0, int(torch.randint(0, V, (1,), generator=g))
        plus, minus = student.detach().double().clone(), student.detach().double().clone()
        plus[b, t, v] += eps
        minus[b, t, v] -= eps
        # the IS ratio is a constant (detached) in both: freeze it at the unperturbed student's value
        fd = (reference_loss64(plus, teacher, ids, response_mask, sd_mask, None, **case)
              - reference_loss64(minus, teacher, ids, response_mask, sd_mask, None, **case)) / (2 * eps)
        with torch.no_grad():
            s_tok = torch.log_softmax(student.double(), -1)[b, t, ids[b, t]]
            ratio = min(math.exp(max(-20.0, min(20.0, float(s_tok - old[b, t])))), 2.0)
        assert grad[b, t, v].item() == pytest.approx(fd * ratio, rel=1e-3, abs=1e-6)


def test_all_rollouts_masked_gives_zero_loss_with_a_graph():
    student, teacher, ids, response_mask, _, old = _batch(2)
    loss, logged = trainer_loss(SDPOConfig(), student, teacher, ids, response_mask, torch.zeros(B), old)
    assert loss.item() == 0.0 and loss.requires_grad and logged == [0.0]


# ------------------------------------------------------------------ the seed's API


def test_seed_import_path_is_an_alias():
    import sdpo
    import sdpo_trainer
    from sdpo_trainer import SDPOConfig as SeedConfig
    from sdpo_trainer import SDPOTrainer as SeedTrainer

    assert SeedTrainer is sdpo.SDPOTrainer is SDPOTrainer
    assert SeedConfig is sdpo.SDPOConfig is SDPOConfig
    assert sdpo_trainer.SDPOConfigError is SDPOConfigError


def test_seed_readme_config_is_accepted():
    """Every option the seed README's configuration block lists, with its values."""
    cfg = SDPOConfig(enabled=True, alpha=0.5, distillation_topk=100, teacher_mode="ema", ema_tau=0.05,
                     ema_update_every=1, is_coef=0.0, is_clip=2.0, reprompt_teacher=True, thinking_tag="<think>")
    assert cfg.mode == "topk"


@pytest.mark.parametrize("mode, kind", [("ema", "ema"), ("copy", "live"), ("live", "live"), ("fixed", "base"),
                                        ("frozen", "base")])
def test_teacher_modes_map_onto_trl(mode, kind, tmp_path):
    from trl import GRPOConfig

    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[])
    assert to_trl_config(args, SDPOConfig(teacher_mode=mode)).teacher_model_kind == kind


@pytest.fixture(scope="module")
def tok():
    from sdpo.models import load_tokenizer

    return load_tokenizer("tiny-random")


def test_copy_teacher_is_the_student_and_fixed_teacher_stays_put(tok, tmp_path):
    from tests.test_rich import _trainer

    def reward(prompts, completions, **_):
        return [{"score": float(k % 2), "feedback": "f"} for k in range(len(completions))]

    copy = _trainer(tok, tmp_path, reward, steps=1, sdpo_config=SDPOConfig(teacher_mode="copy"))
    assert copy.teacher_model is copy.model
    fixed = _trainer(tok, tmp_path, reward, steps=1, sdpo_config=SDPOConfig(teacher_mode="fixed"))
    assert fixed.teacher_model is not fixed.model
    t0 = [p.detach().clone() for p in fixed.teacher_model.parameters()]
    s0 = [p.detach().clone() for p in fixed.model.parameters()]
    fixed.train()
    assert all(torch.equal(a, b) for a, b in zip(t0, fixed.teacher_model.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(s0, fixed.model.parameters()))  # the student moved


# ------------------------------------------------------------------ precision


def test_unset_bf16_means_bf16_only_where_supported(tmp_path):
    from transformers.utils import is_torch_bf16_gpu_available
    from trl import GRPOConfig

    from sdpo.trainers.rich import bf16_supported

    assert bf16_supported(use_cpu=True)
    supported = bf16_supported()
    assert supported == (is_torch_bf16_gpu_available() or bf16_supported(use_cpu=False))
    assert GRPOConfig(output_dir=str(tmp_path)).bf16 is supported
    assert GRPOConfig(output_dir=str(tmp_path), use_cpu=True).bf16 is True  # TRL's choice, kept
    assert GRPOConfig(output_dir=str(tmp_path), bf16=False).bf16 is False
    assert GRPOConfig(output_dir=str(tmp_path), fp16=False, bf16=None).bf16 is supported
    if not supported:
        with pytest.raises(ValueError, match="bf16"):
            GRPOConfig(output_dir=str(tmp_path), bf16=True)  # an explicit request is not overridden


# ------------------------------------------------------------------ teacher selection


def _reference_choices(rewards, feedbacks, n, threshold):
    """lasgroup/SDPO ray_trainer.py: _collect_solutions_by_uid, _get_solution (dont_reprompt_on_self_success),
    _collect_feedback and use_feedback / self_distillation_mask with environment_feedback_only_without_solution."""
    success = {}
    for idx, r in enumerate(rewards):
        if r >= threshold:  # NaN compares False
            success.setdefault(idx // n, []).append(idx)
    out = []
    for i in range(len(rewards)):
        peers = [j for j in success.get(i // n, []) if j != i]
        demo = peers[0] if peers else None
        fb = feedbacks[i] if (feedbacks[i] and isinstance(feedbacks[i], str) and feedbacks[i].strip()) else None
        use_fb = fb is not None and demo is None
        out.append((demo, use_fb, demo is not None or use_fb))
    return out


def test_teacher_selection_matches_the_reference_on_random_groups():
    from sdpo.trainers.rich import choose_teachers

    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 6))
        total = n * int(rng.integers(1, 4))
        rewards = [float(rng.choice([0.0, 0.5, 1.0, 1.0, 1.5, float("nan")])) for _ in range(total)]
        feedbacks = [rng.choice([None, "", "  ", "wrong"]) for _ in range(total)]
        got = choose_teachers(rewards, feedbacks, n, SDPOConfig())
        want = _reference_choices(rewards, feedbacks, n, 1.0)
        assert [(c.demonstration, c.use_feedback, c.active) for c in got] == want


REFERENCE_TEMPLATES = dict(  # lasgroup/SDPO actor.yaml 131-150 (YAML "|-" blocks: no trailing newline)
    reprompt="{prompt}{solution}{feedback}\n\nCorrectly solve the original question.",
    solution="\nCorrect solution:\n\n{successful_previous_attempt}",
    feedback="\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback_raw}",
)


@pytest.mark.parametrize("demo, feedback", [("x = 5", None), (None, "test 1 failed"), ("x = 5", "test 1 failed")])
def test_reference_teacher_text_through_the_template_options(demo, feedback):
    from sdpo.trainers.rich import teacher_prompt

    cfg = SDPOConfig(
        teacher_prompt_template="{prompt}{demonstration}{feedback}\n\nCorrectly solve the original question.",
        demonstration_template="\nCorrect solution:\n\n{demonstration}",
        feedback_template="\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback}",
    )
    t = REFERENCE_TEMPLATES
    want = t["reprompt"].format(
        prompt="Solve x + 1 = 6.",
        solution=t["solution"].format(successful_previous_attempt=demo) if demo is not None else "",
        feedback=t["feedback"].format(feedback_raw=feedback) if feedback is not None else "",
    )
    system = {"role": "system", "content": "You are a solver."}
    got = teacher_prompt([system, {"role": "user", "content": "Solve x + 1 = 6."}], demo, feedback, cfg)
    assert got == [system, {"role": "user", "content": want}]
