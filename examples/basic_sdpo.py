"""Minimal rich-feedback SDPO: two-digit additions, reward 1 for the right number.

The reward function returns a score and feedback ("Wrong: the answer given was 121;
the correct answer is 122."). Each prompt gets several rollouts; a rollout's teacher
is the same model shown a correct peer answer (never its own) or, when no peer got
it right, the feedback.

    python examples/basic_sdpo.py                   # embedded SmolLM2-135M, CPU, ~5 min
    python examples/basic_sdpo.py --max-steps 2 --model tiny-random --eval-size 8
"""

from sdpo.tasks import example_parser, run_example

if __name__ == "__main__":
    parser = example_parser("addition", __doc__.splitlines()[0], max_steps=20, learning_rate=1e-5,
                            max_completion_length=12)
    run_example("addition", parser.parse_args())
