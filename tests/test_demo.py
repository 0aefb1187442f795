"""`mimicshield demo` runs end to end (here on the tiny model; the shipped model in test_mini)."""

from __future__ import annotations

from mimicshield.cli.main import main


def test_demo_writes_a_report_and_prints_every_method(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(tiny_model_dir), "--steps", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    for method in ("sds-", "advdm", "photoguard", "noise"):
        assert f"\n{method} " in printed
    assert (out / "report.html").is_file() and (out / "results.csv").is_file()
    assert len(list((out / "clean").glob("*.png"))) == 6
