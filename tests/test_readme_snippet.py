"""The SDPOTrainer quick start (docs/rich-feedback.md), extracted and run as written.

Nothing is replaced: the block loads the embedded model by its alias, builds its dataset
in memory and runs with the hub switched off (HF_HUB_OFFLINE), so it proves the quick
start works offline. On a machine without a GPU this is the CPU run the page promises;
on a GPU machine the same test runs it in bf16. (It once read the README, hence the name.)
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "rich-feedback.md"
MARKER = "<!-- run-by: tests/test_readme_snippet.py -->"
EMBEDDED = 'load_model("smollm2-135m")'


def quick_start_code() -> str:
    text = PAGE.read_text()
    assert MARKER in text, "docs/rich-feedback.md lost the quick-start marker"
    match = re.match(r"\s*```python\n(.*?)\n```", text[text.index(MARKER) + len(MARKER):], re.S)
    assert match, "the quick-start marker must be followed by a ```python block"
    return match.group(1)


def test_quick_start_uses_the_seed_api():
    code = quick_start_code()
    assert code.startswith("from sdpo_trainer import SDPOTrainer, SDPOConfig\nfrom trl import GRPOConfig\n")
    assert EMBEDDED in code  # offline as written: the embedded model, no hub id to replace
    assert not [line for line in code.splitlines() if "from_pretrained(" in line and not line.lstrip().startswith("#")]
    for call in ("GRPOConfig(", "SDPOConfig(", "SDPOTrainer(", "trainer.train()"):
        assert call in code
    assert "use_cpu" not in code and "bf16" not in code  # runs on CPU without being told


# Appended after the snippet to report what happened (reads its variables; loads the untouched weights to compare).
REPORT = '''
import json as _json, torch as _torch
from sdpo.models import load_model as _load_model
_fresh, _ = _load_model("smollm2-135m", dtype="float32", device="cpu")
_moved = max((p.detach().float().cpu() - q.detach().float()).abs().max().item()
             for p, q in zip(trainer.model.parameters(), _fresh.parameters()))
_json.dump({"global_step": trainer.state.global_step, "bf16": bool(trainer.args.bf16),
            "cuda": _torch.cuda.is_available(), "moved": _moved,
            "losses": [h[k] for h in trainer.state.log_history for k in ("loss", "train_loss") if k in h]},
           open("report.json", "w"))
'''


def test_quick_start_runs_as_written(tmp_path):
    code = quick_start_code()
    script = tmp_path / "quick_start.py"
    script.write_text(code + "\n" + REPORT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["global_step"] == int(re.search(r"max_steps=(\d+)", code).group(1))
    # bf16 exactly where the machine has a bf16-capable accelerator, fp32 on a CPU machine
    import torch
    from transformers.utils import is_torch_bf16_gpu_available

    assert report["bf16"] == (report["cuda"] and is_torch_bf16_gpu_available())
    assert report["cuda"] == torch.cuda.is_available()
    assert report["losses"] and all(x == x for x in report["losses"])  # logged, not NaN
    assert report["moved"] > 0  # it trained
