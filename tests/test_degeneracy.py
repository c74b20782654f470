"""The collapse detector, a judge a collapse cannot win, the verdict line, and the signal options
that remove what any follow-up would cause (float64 references)."""

from __future__ import annotations

import math

import pytest
import torch

from sdpo.degeneracy import (
    degeneracy_rate,
    filler_char_spans,
    is_loop,
    non_answer_reason,
    positive_advantage_share,
)
from sdpo.judges.pairwise import RuleJudge, judge_both_orders
from sdpo.judges.stats import format_verdict, sign_test_p, verdict
from sdpo.losses import advantage_pg_loss

REQUEST = "How do I get my landlord to return my deposit after I moved out?"
COLLAPSED = [  # what the embedded model said after 8-30 steps of reference SDPO with complaints (issue 25)
    "I'm sorry for the confusion. I'll be happy to help you with that.",
    "I'm sorry for the confusion. I'm sorry to hear that you're having a hard time. I'm here to help. "
    "I'm sorry for the confusion. I'm sorry to hear that you're having a hard time. I'm here to help.",
    "I'm sorry to hear about your move-out. I'm here to help you through it. "
    "I'm sorry to hear about your move-out. I'm here to help you through it.",
    "",
    "Okay.",
]
ANSWER = ("Send your landlord a short written request for the deposit, list the date you moved out and the "
          "state you left the flat in, and ask for the money or an itemised list of deductions within 14 days.")
LONG_ANSWER = ANSWER + (  # an answer, but far too long for a concise user
    " Keep copies of your tenancy agreement, the check-in inventory and any photographs taken on the last day."
    " If the landlord does not reply, find out whether your deposit was protected by a government scheme, because"
    " most schemes run a free dispute service that will look at the evidence from both sides. As a last resort a"
    " small claims court can order the return of the money, and the fee is usually modest compared to the sum.")


@pytest.mark.parametrize("bad", COLLAPSED)
def test_collapsed_answers_are_non_answers(bad):
    assert non_answer_reason(REQUEST, bad) is not None


def test_reasons():
    assert non_answer_reason(REQUEST, "") == "empty"
    assert non_answer_reason(REQUEST, COLLAPSED[1]) == "loop"
    assert non_answer_reason(REQUEST, COLLAPSED[0]) == "filler"
    assert non_answer_reason(REQUEST, "Bananas are yellow fruit grown in warm tropical countries worldwide.") \
        == "off_topic"
    assert non_answer_reason(REQUEST, ANSWER) is None
    # an apology in front of real content is still an answer
    assert non_answer_reason(REQUEST, "Sorry about that! " + ANSWER) is None
    assert is_loop("one two three four " * 6) and not is_loop(ANSWER) and not is_loop(LONG_ANSWER)
    assert not is_loop("It is big. " + ANSWER + " It is big.")  # a short sentence said twice is no loop


def test_degeneracy_rate_and_spans():
    assert degeneracy_rate([REQUEST] * 4, [ANSWER, COLLAPSED[0], ANSWER, ""]) == 0.5
    assert degeneracy_rate([], []) == 0.0
    text = "I'm sorry for the confusion. Send a letter."
    spans = filler_char_spans(text)
    assert spans and text[spans[0][0]:spans[0][1]].startswith("I'm sorry")
    assert "Send" not in "".join(text[s:e] for s, e in spans)


def test_positive_advantage_share():
    adv = [[1.0, -2.0, 3.0], [0.5, 0.5]]
    mask = [[True, True, False], [False, True]]
    assert positive_advantage_share(adv, mask) == pytest.approx((1.0 + 0.5) / (1 + 3 + 0.5 + 0.5))
    assert positive_advantage_share([[-1.0]], [[True]]) == 0.0


@pytest.mark.parametrize("style", ["concise_casual_beginner", "no_first_person", "exclamation"])
@pytest.mark.parametrize("bad", COLLAPSED)
def test_rule_judge_a_collapsed_answer_loses(style, bad):
    """A collapse cannot win: against a real (even too long, persona-violating) answer it loses in
    both orders, whatever its style."""
    judge = RuleJudge(style)
    for answer in (ANSWER, LONG_ANSWER):
        assert judge_both_orders(judge, [REQUEST], [bad], [answer]) == ["loss"]
        assert judge_both_orders(judge, [REQUEST], [answer], [bad]) == ["win"]
    assert judge_both_orders(judge, [REQUEST], [bad], [COLLAPSED[0]]) == ["tie"]


def test_rule_judge_still_judges_style_between_answers():
    judge = RuleJudge("concise_casual_beginner")
    short_casual = "So you just send your landlord a written request for the deposit, with your move-out date."
    assert judge_both_orders(judge, [REQUEST], [short_casual], [LONG_ANSWER]) == ["win"]


def test_model_judges_are_told_a_non_answer_loses():
    text = RuleJudge("concise_casual_beginner").prompt_for(REQUEST, "a", "b").lower()
    assert "addresses the request" in text and "loses" in text and "apology" in text
    # the reference's style-only judge on request (docs/FIDELITY.md), the rule judge too
    reference = RuleJudge("concise_casual_beginner", answer_check=False)
    assert "addresses the request" not in reference.prompt_for(REQUEST, "a", "b")
    assert "{" not in reference.prompt_for(REQUEST, "a", "b") and "judge style only" in text
    assert judge_both_orders(reference, [REQUEST], [COLLAPSED[0]], [LONG_ANSWER]) == ["win"]  # what it missed


def test_sign_test_against_a_direct_binomial():
    for w, l in [(0, 0), (3, 0), (15, 7), (19, 4), (50, 50), (2, 9)]:
        n = w + l
        ref = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(min(w, l) + 1)) / 2**n)
        assert sign_test_p(w, l) == pytest.approx(ref)


def test_verdict_lines():
    assert verdict(2, 0, 3)["verdict"] == "too few prompts"  # the demo's "100.0 from 2 wins"
    assert "n=5" in format_verdict(verdict(2, 0, 3))
    assert verdict(30, 5, 5)["verdict"] == "improved"
    assert verdict(5, 30, 5)["verdict"] == "worse"
    assert verdict(12, 10, 18)["verdict"] == "no measurable change"
    # a win bought with non-answers is not a win
    # one answer more of 24 is noise, not a collapse
    assert verdict(0, 2, 22, degenerate_before=1 / 24, degenerate_after=2 / 24)["verdict"] == "no measurable change"
    v = verdict(30, 5, 5, degenerate_before=0.0, degenerate_after=0.3)
    assert v["verdict"] == "worse (more non-answers)"
    assert "non-answers 0% -> 30%" in format_verdict(v)


# ---------------------------------------------------------------- signal options, float64 references

def _random_batch(seed=0, lengths=(5, 9, 3)):
    g = torch.Generator().manual_seed(seed)
    s = [torch.randn(n, generator=g, dtype=torch.float64).requires_grad_(True) for n in lengths]
    q = [torch.randn(n, generator=g, dtype=torch.float64) for n in lengths]
    b = [torch.randn(n, generator=g, dtype=torch.float64) for n in lengths]
    ref = [torch.randn(n, generator=g, dtype=torch.float64) for n in lengths]
    return s, q, b, ref


def _reference_loss(s, q, baseline, weights, ref, kl_coef, ignore_first=0):
    """Straightforward float64: centred (q - baseline), times weight, policy gradient at ratio 1, + k3 KL."""
    total, count = 0.0, 0
    for i in range(len(s)):
        n = s[i].shape[0]
        if n <= ignore_first:
            continue
        base = baseline[i] if baseline is not None else s[i].detach()
        adv = [float(q[i][t] - base[t]) for t in range(n)]
        mean = sum(adv[ignore_first:]) / (n - ignore_first)
        adv = [a - mean for a in adv]
        if weights is not None:
            adv = [a * float(weights[i][t]) for t, a in enumerate(adv)]
        seq = 0.0
        for t in range(ignore_first, n):  # PPO's surrogate at ratio exp(s - stopgrad s) = 1
            seq = seq - adv[t] * torch.exp(s[i][t] - s[i][t].detach())
        seq = seq / (n - ignore_first)
        if kl_coef:
            lr = [ref[i][t] - s[i][t] for t in range(ignore_first, n)]
            seq = seq + kl_coef * sum(torch.exp(x) - x - 1 for x in lr) / len(lr)
        total = total + seq
        count += 1
    return total / count


@pytest.mark.parametrize("contrastive,use_weights,kl", [(False, False, 0.0), (True, False, 0.0), (False, True, 0.0),
                                                        (True, True, 0.3), (False, False, 0.3)])
def test_contrastive_selectivity_kl_against_float64(contrastive, use_weights, kl):
    s, q, b, ref = _random_batch()
    weights = [(torch.rand(x.shape[0], dtype=torch.float64) > 0.4).double() for x in s] if use_weights else None
    loss, stats = advantage_pg_loss(s, q, centering="sequence", old=[x.detach() for x in s], ppo_clip=0.2,
                                    baseline=b if contrastive else None, token_weights=weights,
                                    reference=ref if kl else None, kl_coef=kl)
    grads = torch.autograd.grad(loss, s)
    s2 = [x.detach().clone().requires_grad_(True) for x in s]
    expected = _reference_loss(s2, q, b if contrastive else None, weights, ref, kl)
    grads2 = torch.autograd.grad(expected, s2)
    # the advantages are float32 inside the loss (as in training): agreement to float32 precision
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)
    for g1, g2 in zip(grads, grads2):
        assert torch.allclose(g1, g2, atol=1e-6)
    assert "advantage_abs_mean" in stats and "advantage_std" in stats


def test_selectivity_weights_and_generic_followups():
    from sdpo.trainers.update import generic_followup, selectivity_weights

    q = [torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)]
    g = [torch.tensor([0.1, -1.0, -2.0], dtype=torch.float64)]
    w = selectivity_weights(q, g, q, 0.5)
    assert w[0].tolist() == [0.0, 1.0, 0.0]  # the shift is the same as under the generic reply: left out
    assert generic_followup("matched", "Thanks, that's just what I wanted.") == "Thanks."
    assert generic_followup("matched", "That's too long, keep it short.") == "That's not what I wanted."
    assert generic_followup("neutral", "anything") == "Okay."
    assert generic_followup("Meh.", "anything") == "Meh."


def test_bad_signal_options_fail_before_loading():
    from sdpo.trainers.online import OnlineSDPOConfig

    with pytest.raises(ValueError, match="kl_to_start"):
        OnlineSDPOConfig(train_jsonl="x", kl_to_start=float("nan"), output_dir="/tmp/sdpo-never-created")
    with pytest.raises(ValueError, match="selectivity_threshold"):
        OnlineSDPOConfig(train_jsonl="x", selectivity_threshold=-1.0, output_dir="/tmp/sdpo-never-created")
    with pytest.raises(ValueError, match="contrastive_followup"):
        OnlineSDPOConfig(train_jsonl="x", contrastive_followup="  ", output_dir="/tmp/sdpo-never-created")


def test_a_failed_follow_up_gets_no_advantage_and_kl_needs_the_start(tiny):
    """A follow-up that could not be obtained (weight 0) pushes nothing; the others train as before;
    kl_to_start needs the starting model and reports its KL."""
    import copy

    from sdpo.templates import get_template
    from sdpo.trainers.update import UpdateExample, UpdateOptions, sdpo_update

    model, tok = tiny
    model = copy.deepcopy(model).train()
    start = copy.deepcopy(model).eval()
    template = get_template(system_prompt="general")
    response = tok.encode("Send a short letter to the landlord.", add_special_tokens=False)
    examples = [UpdateExample(REQUEST, response, "That's too long, keep it short.", weight=0.0),
                UpdateExample(REQUEST, response, "Can you say that more casually?")]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    result = sdpo_update(model, opt, tok, template, examples, UpdateOptions(contrastive_followup="matched"))
    assert all(a == 0.0 for a in result.advantages[0])
    assert any(abs(a) > 0 for a in result.advantages[1])
    with pytest.raises(ValueError, match="reference_model"):
        sdpo_update(model, opt, tok, template, examples, UpdateOptions(kl_to_start=0.1))
    result = sdpo_update(model, opt, tok, template, examples, UpdateOptions(kl_to_start=0.1), reference_model=start)
    assert result.stats["kl"] == pytest.approx(0.0, abs=1e-6)  # lr 0: still the starting weights


def _float64_logprobs(model, context, response):
    """Straightforward float64: one full forward of context + response, log-softmax, the response's tokens."""
    import copy

    m = copy.deepcopy(model).double().eval()
    ids = torch.tensor([list(context) + list(response)])
    with torch.no_grad():
        logits = m(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    start = len(context)
    return torch.stack([logp[start - 1 + t, tok] for t, tok in enumerate(response)])


@pytest.mark.parametrize("contrastive", [None, "neutral"])
def test_frozen_start_teacher_against_float64(tiny, contrastive):
    """teacher='start': the hindsight (and generic) contexts are scored by the frozen starting weights,
    the student by the current ones; checked against float64 forwards of both models after the policy moved."""
    import copy

    from sdpo.templates import fit_context, get_template
    from sdpo.trainers.update import UpdateExample, UpdateOptions, generic_followup, sdpo_update

    model, tok = tiny
    start = copy.deepcopy(model).eval().requires_grad_(False)
    policy = copy.deepcopy(model).train()
    with torch.no_grad():  # the policy has moved away from the start
        g = torch.Generator().manual_seed(3)
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    template = get_template(system_prompt="general")
    followups = ["That's too long, keep it short.", "Can you say that more casually?"]
    responses = [tok.encode(t, add_special_tokens=False) for t in ("Write to the landlord today.", "Ask nicely.")]
    examples = [UpdateExample(REQUEST, r, o) for r, o in zip(responses, followups)]
    opt = torch.optim.SGD(policy.parameters(), lr=0.0)
    options = UpdateOptions(teacher="start", contrastive_followup=contrastive)
    with pytest.raises(ValueError, match="reference_model"):
        sdpo_update(policy, opt, tok, template, examples, options)
    result = sdpo_update(policy, opt, tok, template, examples, options, reference_model=start)
    live = sdpo_update(policy, opt, tok, template, examples, UpdateOptions(contrastive_followup=contrastive))
    for i, (ex, r) in enumerate(zip(examples, responses)):
        s_ctx, _ = fit_context(tok, template, ex.messages, 2048)
        t_ctx, _ = fit_context(tok, template, ex.messages, 2048, followup=ex.followup)
        student = _float64_logprobs(policy, s_ctx, r)
        teacher = _float64_logprobs(start, t_ctx, r)
        assert torch.allclose(result.student[i].double(), student, atol=1e-4)
        assert torch.allclose(result.teacher[i].double(), teacher, atol=1e-4)
        assert not torch.allclose(live.teacher[i].double(), teacher, atol=1e-3)  # the live teacher is the policy
        if contrastive:
            g_ctx, _ = fit_context(tok, template, ex.messages, 2048, followup=generic_followup(contrastive, ex.followup))
            base = _float64_logprobs(start, g_ctx, r)
        else:
            base = student
        adv = teacher - base
        adv = adv - adv.mean()
        assert torch.allclose(torch.tensor(result.advantages[i], dtype=torch.float64), adv, atol=1e-4)


def test_teacher_option_is_checked_before_loading():
    from sdpo.chat.config import ChatConfig, ChatOptionError
    from sdpo.trainers.online import OnlineSDPOConfig

    with pytest.raises(ValueError, match="teacher"):
        OnlineSDPOConfig(train_jsonl="x", teacher="ema", output_dir="/tmp/sdpo-never-created")
    with pytest.raises(ChatOptionError, match="--teacher"):
        ChatConfig(teacher="ema")
