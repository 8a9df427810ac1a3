"""The sweep report, on a real tiny multirun (the basic sweep of test_sweeps)."""

import csv
import json
import statistics

import pytest
from test_sweeps import basic_sweep  # noqa: F401  (one multirun shared by the test run)

from cortexnet.analysis import report


def _summaries(sweep, model):
    out = []
    for job in sorted(sweep.iterdir()):
        overrides = (job / ".hydra" / "overrides.yaml").read_text() if job.is_dir() else ""
        if f"model={model}" in overrides and (job / "summary.json").exists():
            out.append(json.loads((job / "summary.json").read_text()))
    return out


def test_report_table_holds_the_runs_numbers(basic_sweep, tmp_path, capsys):  # noqa: F811
    sweep, _ = basic_sweep
    out = tmp_path / "report"
    report.main([str(sweep), "--out", str(out)])
    printed = capsys.readouterr().out
    rows = {r["variant"]: r for r in csv.DictReader((out / "table.csv").open())}
    assert set(rows) == {"model=feedforward", "model=recurrent"}  # the seed is not a variant
    for model in ("feedforward", "recurrent"):
        row = rows[f"model={model}"]
        done = _summaries(sweep, model)
        accs = [s["final_acc"] for s in done]
        assert int(row["runs"]) == len(done) == 2
        assert int(row["failed"]) == 1  # the seed=-1 job
        assert float(row["acc_mean"]) == pytest.approx(statistics.fmean(accs), abs=1e-12)
        assert float(row["acc_std"]) == pytest.approx(statistics.stdev(accs), abs=1e-12)
        assert int(float(row["params"])) == done[0]["params"]
        assert float(row["mflops"]) == pytest.approx(done[0]["flops"] / 1e6)
        expected = statistics.fmean(s["images_per_s"] for s in done)
        assert float(row["images_per_s"]) == pytest.approx(expected)
        assert f"| model={model} | 2 | 1 | {done[0]['params']:,} |" in printed
    assert (out / "table.md").read_text() in printed
    for name in ("acc_vs_params.png", "acc_vs_flops.png", "acc_vs_steps.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    assert printed.count("failed: ") == 2


def test_report_on_a_missing_folder_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"cortexnet.analysis.report: error: sweep folder "
                                f"{tmp_path / 'nowhere'} does not exist"]  # fmt: skip


def test_report_on_a_folder_without_runs_names_it(tmp_path):
    with pytest.raises(ValueError, match="no run folder"):
        report.report(tmp_path)
