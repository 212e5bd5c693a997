"""Progress of a running simulation: round k done (k+1 of R) with the time left, as compare and simulate print it."""

from __future__ import annotations

import json

from fedkper_monai.launch.simulate import RoundProgress


def test_progress_prints_every_kth_round_and_the_last_with_its_label(tmp_path, capsys):
    metrics = tmp_path / "server" / "simulate_job" / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    progress = RoundProgress(tmp_path, rounds=5, label="fedkper seed 0: ", every=2)
    progress()  # nothing written yet: silent
    lines = [{"run": {}}] + [{"round": r, "global_acc": 0.1 * r} for r in range(5)]
    metrics.write_text("".join(json.dumps(line) + "\n" for line in lines[:3]))
    progress()
    metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    progress()
    printed = capsys.readouterr().out.splitlines()
    # numbered from 0 as the summary table and metrics.jsonl number rounds, then how many of the 5 are done
    assert [line.split(";")[0] for line in printed] == [
        "fedkper seed 0: round 1 done (2 of 5", "fedkper seed 0: round 3 done (4 of 5", "fedkper seed 0: round 4 done (5 of 5"
    ]
    assert all("s left)" in line for line in printed)
