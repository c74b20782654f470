"""Rich-feedback SDPO on code: small Python functions checked by tests in the sandbox.

The model's function runs in a separate, limited process (time, memory, no network,
no processes, no writes outside its temporary directory). The feedback names what
failed: "test 2 failed: input [1, 2, 3], expected 6, got 0", an exception with its
message, or a time-out. The teacher sees a passing peer solution or that feedback.

    python examples/sdpo_rich_feedback.py            # embedded SmolLM2-135M, CPU, ~8 min
    python examples/sdpo_rich_feedback.py --max-steps 2 --model tiny-random
"""

from sdpo.tasks import example_parser, run_example

if __name__ == "__main__":
    parser = example_parser("code", __doc__.splitlines()[0], max_steps=10, learning_rate=1e-5,
                            max_completion_length=64, train_size=32, eval_size=8)
    run_example("code", parser.parse_args())
