"""``fedkper-monai report``: report.md, CSVs, PNGs and the command line, on the hand-written fixtures."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest
from PIL import Image

from fedkper_monai.cli import main
from fedkper_monai.errors import DataError
from fedkper_monai.report.metrics import SUMMARY_COLUMNS
from fedkper_monai.report.writer import write_report

FIXTURES = Path(__file__).parent / "fixtures"
FEDKPER = FIXTURES / "runs" / "fedkper"
FEDAVG = FIXTURES / "runs" / "fedavg"
FEDKPER_SEED1 = FIXTURES / "runs_seed1" / "fedkper"
ALL_RUNS = [FEDKPER, FEDAVG, FEDKPER_SEED1]
PNG_NAMES = [
    "curve_global_acc.png",
    "curve_mean_personalized_acc.png",
    "curve_global_nfr.png",
    "curve_bwt.png",
    "tradeoff_global_vs_personalized.png",
    "per_site_accuracy.png",
    "per_class_forgetting.png",
]


def _is_png(path: Path) -> tuple[int, int]:
    """Check the PNG signature and decode the image fully; returns (width, height)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    with Image.open(path) as image:
        image.load()  # raises on a truncated or corrupt file
        assert image.size == (width, height)
        # A blank canvas would be one color; a drawn plot has many.
        assert len(image.convert("RGB").getcolors(maxcolors=1_000_000) or []) > 10
    return width, height


def test_write_report_makes_markdown_csv_and_valid_pngs(tmp_path):
    out = tmp_path / "report"
    report = write_report(ALL_RUNS, out)
    assert report == out / "report.md"
    text = report.read_text()
    for label in ("fedkper@seed0", "fedavg", "fedkper@seed1"):
        assert f"| {label} |" in text
    for name in PNG_NAMES:
        assert f"]({name})" in text  # embedded by relative path
        width, height = _is_png(out / name)
        assert (out / name).stat().st_size > 0 and width > 300 and height > 200
    assert "## Mean ± std per algorithm" in text and "0.650 ± 0.071" in text  # fedkper final global acc
    assert "## Notes" not in text  # comparable runs, same sampling at seed 0, all complete
    for column in SUMMARY_COLUMNS:
        assert f"`{column.key}`" in text  # each metric explained

    with (out / "summary.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [column.key for column in SUMMARY_COLUMNS]
    assert [row["run"] for row in rows] == ["fedkper@seed0", "fedavg", "fedkper@seed1"]
    assert float(rows[1]["mean_global_nfr"]) == pytest.approx(0.25)

    with (out / "summary_by_algorithm.csv").open(newline="") as handle:
        groups = list(csv.DictReader(handle))
    assert [group["algorithm"] for group in groups] == ["fedkper", "fedavg"]
    assert float(groups[0]["final_global_acc_mean"]) == pytest.approx(0.65)
    assert groups[1]["final_global_acc_std"] == ""  # one run: no spread

    # Nothing but the report's own files; no staging leftovers beside it.
    assert sorted(p.name for p in out.iterdir()) == sorted(PNG_NAMES + ["report.md", "summary.csv",
                                                                       "summary_by_algorithm.csv"])
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_one_run_per_algorithm_has_no_by_algorithm_table(tmp_path):
    write_report([FEDKPER, FEDAVG], tmp_path / "r")
    assert not (tmp_path / "r" / "summary_by_algorithm.csv").exists()
    assert "Mean ± std" not in (tmp_path / "r" / "report.md").read_text()


def test_report_notes_a_run_without_global_test_set(tmp_path, write_jsonl):
    lines = [json.loads(line) for line in (FEDAVG / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        if "round" in line and "site" not in line:
            line["global_acc"] = None
    write_jsonl(tmp_path / "runs" / "fedavg" / "metrics.jsonl", lines)
    out = tmp_path / "r"
    write_report([FEDKPER, tmp_path / "runs" / "fedavg"], out)
    text = (out / "report.md").read_text()
    assert "fedavg reports no global accuracy" in text
    rows = list(csv.DictReader((out / "summary.csv").open(newline="")))
    assert rows[1]["final_global_acc"] == "" and rows[1]["best_global_acc"] == ""
    for name in PNG_NAMES:
        _is_png(out / name)


def test_write_report_is_atomic_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "r"
    write_report([FEDAVG], out)
    with pytest.raises(FileExistsError):
        write_report([FEDKPER], out)
    assert "| fedavg |" in (out / "report.md").read_text()
    write_report([FEDKPER], out, overwrite=True)
    assert "| fedkper |" in (out / "report.md").read_text()
    # A bad run fails before anything is written.
    with pytest.raises(DataError):
        write_report([FEDKPER, tmp_path / "missing"], tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_cli_report_writes_the_report_and_prints_errors_without_traceback(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["report", str(FEDKPER), str(FEDAVG), "--out", str(out)]) == 0
    assert str(out / "report.md") in capsys.readouterr().out
    assert main(["report", str(FEDKPER), "--out", str(out)]) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "run folder not found" in err and "nope" in err and "Traceback" not in err


def test_cli_report_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["report", "--help"])
    assert caught.value.code == 0
    text = capsys.readouterr().out
    assert "example:" in text and "fedkper-monai report runs/fedkper runs/fedavg" in text
