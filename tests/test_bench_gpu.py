"""`streamrecon bench gpu --device cpu --quick`: the one-shot GPU benchmark runs on CPU and records its figures."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.dl_support import ROOT
from pipelines.processes import python_env


@pytest.mark.timeout(660)  # the subprocess's own 600 s limit reports a hang first, with its stderr
def test_bench_gpu_quick_on_cpu_writes_every_figure(tmp_path):
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "bench", "gpu", "--device", "cpu", "--quick",
                          # a day's budget: what is checked is that every figure is made, never how fast
                          # (a loaded machine once ran out of the default 180 s and skipped sections)
                          "--budget-s", "86400", "--out", str(tmp_path), "--name", "quick"],
                         capture_output=True, text=True, timeout=600,
                         cwd=ROOT, env=python_env())
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((tmp_path / "quick.json").read_text())
    markdown = (tmp_path / "quick.md").read_text()
    v = record["versions"]
    assert v["torch"] and v["device"] == "cpu" and "cores" in v["machine"] and "cuda" in v
    models = {(r["model"], r["batch"]): r for r in record["models"]}
    assert set(models) == {(m, b) for m in ("kgmgt-centred", "kgmgt-causal", "sgfmri") for b in (1, 2)}
    for r in models.values():
        assert 0 < r["ms_per_frame"]["p50"] <= r["ms_per_frame"]["p95"] and r["ms_per_frame"]["n"] >= 4
        assert r["dc_ms_per_frame"]["p50"] > 0 and r["peak_mib"] is None  # no GPU memory on CPU
    precision = {(r["model"], r["precision"]): r for r in record["precision"]}
    for model in ("kgmgt-centred", "sgfmri"):
        assert precision[(model, "fp32")]["psnr_change_db"] == 0
        bf16 = precision[(model, "bf16")]
        assert bf16["psnr_db"] > 10 and abs(bf16["psnr_change_db"]) < 3 and bf16["ms_per_frame"]["p50"] > 0
        assert "CUDA" in precision[(model, "fp16")]["skipped"]
    assert record["compile"] == [{"skipped": record["compile"][0]["skipped"]}] and "CUDA" in record["compile"][0]["skipped"]
    latency = {r["scanners"]: r for r in record["latency"]}
    assert set(latency) == {1, 2}
    for k, r in latency.items():
        assert r["kgmgt_latency_ms"]["n"] == 5 * k and r["conventional_latency_ms"]["n"] == 5 * k
        # fallbacks depend on how busy the machine is (the real-time lag bound): counted, not asserted
        assert r["kgmgt_latency_ms"]["p50"] > 0 and 0 <= r["fallbacks"] <= r["kgmgt_latency_ms"]["n"]
    assert {r["variant"] for r in record["cpu"]} >= {"1 thread, no_grad", "2 threads, no_grad", "1 thread, bf16 autocast"}
    assert all(r["s_per_frame"] > 0 for r in record["cpu"])
    assert "## 4. Frame latency" in markdown and "kgmgt-causal" in markdown and record["command"] in markdown
