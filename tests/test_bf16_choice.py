"""dtype=auto on CPU (issue 27 item 5): bf16 only where the flags are there and a cached
measurement on this machine kind showed it faster. The measurement is stubbed: no timing asserts."""

import json

import pytest
import torch

import sdpo.models as models


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SDPO_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_bf16_memo", {})
    monkeypatch.setattr(models, "cpu_model_name", lambda: "Test CPU 9000")
    return tmp_path


def _stub(monkeypatch, fp32, bf16):
    calls = []

    def peaks():
        calls.append(1)
        return {"float32": fp32, "bfloat16": bf16}

    monkeypatch.setattr(models, "matmul_peaks", peaks)
    return calls


@pytest.mark.parametrize("fp32, bf16, chosen", [(85.0, 355.0, torch.bfloat16),  # avx512_bf16 EPYC under load
                                                 (100.0, 110.0, torch.float32),  # bf16 barely faster: not worth it
                                                 (100.0, 40.0, torch.float32)])  # bf16 slower: never made slower
def test_auto_follows_the_measurement(cache, monkeypatch, fp32, bf16, chosen):
    monkeypatch.setattr(models, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    _stub(monkeypatch, fp32, bf16)
    assert models.resolve_dtype("auto", "cpu") == chosen
    expected = (torch.float32, torch.bfloat16) if chosen == torch.bfloat16 else (torch.float32, None)
    assert models.parameter_dtype("auto", "cpu") == expected
    assert models.resolve_dtype("float32", "cpu") == torch.float32  # explicit dtypes untouched
    assert models.resolve_dtype("bfloat16", "cpu") == torch.bfloat16


def test_without_bf16_flags_nothing_is_measured(cache, monkeypatch):
    monkeypatch.setattr(models, "cpu_flags", lambda: {"avx2", "avx512f"})
    calls = _stub(monkeypatch, 10.0, 1000.0)
    assert models.resolve_dtype("auto", "cpu") == torch.float32
    assert not calls


def test_measured_once_per_machine_kind_and_cached_on_disk(cache, monkeypatch):
    flags = {"avx2", "avx512_bf16"}
    monkeypatch.setattr(models, "cpu_flags", lambda: set(flags))
    calls = _stub(monkeypatch, 80.0, 300.0)
    first = models.cpu_bf16_measurement()
    assert first["bf16"] is True and first["speedup"] == pytest.approx(3.75)
    assert "Test CPU 9000" in first["key"] and "avx512_bf16" in first["key"]
    models._bf16_memo.clear()  # a new process reads the file
    assert models.cpu_bf16_measurement()["speedup"] == pytest.approx(3.75)
    assert len(calls) == 1
    table = json.loads((cache / "cpu_bf16_speed.json").read_text())
    assert table[first["key"]]["float32_gflops"] == 80.0 and table[first["key"]]["bfloat16_gflops"] == 300.0
    # another machine kind (an AMX CPU) is measured for itself
    flags.add("amx_bf16")
    _stub(monkeypatch, 80.0, 60.0)
    second = models.cpu_bf16_measurement()
    assert second["key"] != first["key"] and second["bf16"] is False
    assert len(json.loads((cache / "cpu_bf16_speed.json").read_text())) == 2
    # refresh re-measures
    _stub(monkeypatch, 80.0, 800.0)
    assert models.cpu_bf16_measurement(refresh=True)["bf16"] is True


def test_unreadable_cache_only_costs_a_measurement(cache, monkeypatch):
    monkeypatch.setattr(models, "cpu_flags", lambda: {"avx512_bf16"})
    (cache / "cpu_bf16_speed.json").write_text("{not json")
    calls = _stub(monkeypatch, 50.0, 200.0)
    assert models.cpu_bf16_pays() is True and len(calls) == 1


def test_matmul_peaks_reports_both_dtypes():
    peaks = models.matmul_peaks(size=64, rounds=2, inner=1)
    assert set(peaks) == {"float32", "bfloat16"} and all(v > 0 for v in peaks.values())


def test_load_model_auto_stays_float32_where_bf16_measured_slow(cache, monkeypatch):
    monkeypatch.setattr(models, "cpu_flags", lambda: {"avx512_bf16"})
    _stub(monkeypatch, 100.0, 50.0)
    model, _ = models.load_model("tiny-random", device="cpu")
    assert models.autocast_dtype(model) is None
    assert {p.dtype for p in model.parameters()} == {torch.float32}
