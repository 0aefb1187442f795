"""Sharding inputs over processes, merging their records, and resuming finished work."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mimicshield import METHODS, Budget
from mimicshield.cli.main import main
from mimicshield.filesystem import file_sha256
from mimicshield.runtime.jobs import ProtectionJob
from mimicshield.runtime.large_images import Tiles, WorkingResolution
from mimicshield.runtime.processes import shard
from mimicshield.runtime.records import (
    completed_outputs,
    merge_part_files,
    merge_records,
    part_record_path,
    reuse_completed,
    settings_fingerprint,
)

REPO = Path(__file__).resolve().parents[1]


def test_shards_are_disjoint_cover_everything_and_are_deterministic():
    items = [f"img{i}.png" for i in range(11)]
    shares = [shard(items, index, 3) for index in range(3)]
    assert sorted(sum(shares, [])) == sorted(items)
    assert all(not set(a) & set(b) for a in shares for b in shares if a is not b)
    assert shares[0] == ["img0.png", "img3.png", "img6.png", "img9.png"]  # round robin
    assert shares == [shard(items, index, 3) for index in range(3)]
    assert shard(items[:1], 1, 2) == []  # more processes than images: some get nothing


@pytest.mark.parametrize("index, count", [(2, 2), (-1, 2), (0, 0)])
def test_bad_process_index_is_refused(index, count):
    with pytest.raises(ValueError, match="process index"):
        shard([1, 2, 3], index, count)


def test_merge_orders_images_by_input_and_counts_processes():
    order = ["a", "b", "c", "d"]
    parts = [
        {"seed": 1, "images": [{"input": "c"}, {"input": "a"}]},
        {"seed": 1, "images": [{"input": "d"}, {"input": "b"}]},
    ]
    merged = merge_records(parts, order)
    assert [image["input"] for image in merged["images"]] == order
    assert merged["processes"] == 2 and merged["seed"] == 1
    assert part_record_path(Path("out/protect-X.json"), 1, 2).name == "protect-X.part-1-of-2.json"
    with pytest.raises(ValueError):
        merge_records([], order)


def test_merging_part_files_writes_one_record_with_reused_images_and_removes_the_parts(tmp_path):
    record_path = tmp_path / "protect-X.json"
    for index, inputs in enumerate((["c"], ["a"])):
        part = {"seed": 3, "images": [{"input": name, "ok": True} for name in inputs]}
        part_record_path(record_path, index, 2).write_text(json.dumps(part))
    merged = merge_part_files(record_path, 2, extra_images=[{"input": "b"}], order=["a", "b", "c"])
    assert json.loads(record_path.read_text()) == merged
    assert [image["input"] for image in merged["images"]] == ["a", "b", "c"]
    assert merged["processes"] == 2 and merged["seed"] == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == ["protect-X.json"]


def test_completed_outputs_keep_only_ok_images_of_the_same_fingerprint(tmp_path):
    good = {"ok": True, "output": str(tmp_path / "a.png"), "input_sha256": "1"}
    newer = {**good, "input_sha256": "2"}
    records = [
        {"settings_fingerprint": "F", "images": [good, {**good, "ok": False, "output": "b"}]},
        {"settings_fingerprint": "G", "images": [{**good, "output": str(tmp_path / "c.png")}]},
        {"settings_fingerprint": "F", "images": [newer]},
    ]
    done = completed_outputs(records, "F")
    assert list(done) == [str((tmp_path / "a.png").resolve())]
    assert done[str((tmp_path / "a.png").resolve())]["input_sha256"] == "2"  # later record wins


def _job(tmp_path, **changes):
    settings = {
        "method": METHODS["sds-"](budget=Budget.from_255(8, 1, 2)),
        "output_dir": tmp_path,
        "seed": 0,
    }
    return ProtectionJob(**{**settings, **changes})


def test_fingerprint_tracks_what_decides_the_output_and_ignores_how_it_is_run(tmp_path):
    base = settings_fingerprint(_job(tmp_path), "tiny", "fp32")
    assert base == settings_fingerprint(_job(tmp_path, batch_size=4), "tiny", torch.float32)
    changed = [
        settings_fingerprint(_job(tmp_path, seed=1), "tiny", "fp32"),
        settings_fingerprint(_job(tmp_path), "tiny", "bf16"),
        settings_fingerprint(_job(tmp_path), "other", "fp32"),
        settings_fingerprint(
            _job(tmp_path, method=METHODS["sds-"](budget=Budget.from_255(16, 1, 2))), "tiny", "fp32"
        ),
        settings_fingerprint(_job(tmp_path, mask=torch.ones(1, 1, 4, 4)), "tiny", "fp32"),
        settings_fingerprint(_job(tmp_path, large_images=Tiles()), "tiny", "fp32"),
        settings_fingerprint(
            _job(tmp_path, large_images=WorkingResolution(short_side=256)), "tiny", "fp32"
        ),
        settings_fingerprint(
            _job(
                tmp_path, method=METHODS["sds-"](budget=Budget.from_255(8, 1, 2), noise_samples=2)
            ),
            "tiny",
            "fp32",
        ),
    ]
    assert base not in changed and len(set(changed)) == len(changed)
    targets = [METHODS["photoguard"](target=torch.full((3, 4, 4), value)) for value in (0.0, 1.0)]
    assert len({settings_fingerprint(_job(tmp_path, method=m), "t", "fp32") for m in targets}) == 2


def test_reuse_needs_same_input_bytes_and_the_output_file(tmp_path):
    inputs = [tmp_path / f"{name}.png" for name in "abc"]
    for index, path in enumerate(inputs):
        Image.new("RGB", (8, 8), (index, 0, 0)).save(path)
    outputs = {path: tmp_path / "out" / path.name for path in inputs}
    (tmp_path / "out").mkdir()
    outputs[inputs[0]].write_bytes(b"protected a")
    outputs[inputs[1]].write_bytes(b"protected b")
    entry = {"ok": True, "linf_255": 4.0, "input": "elsewhere/a.png", "unknown_field": 1}
    completed = {
        str(outputs[inputs[0]].resolve()): {**entry, "input_sha256": file_sha256(inputs[0])},
        str(outputs[inputs[1]].resolve()): {**entry, "input_sha256": "changed since"},
        str(outputs[inputs[2]].resolve()): {**entry, "input_sha256": file_sha256(inputs[2])},
    }
    reused, remaining = reuse_completed(inputs, outputs, completed)
    assert [result.input for result in reused] == [str(inputs[0])]
    assert reused[0].reused and reused[0].linf_255 == 4.0
    assert remaining == inputs[1:]  # b: input changed; c: output file missing


def _picture(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def five_images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(5):
        _picture(folder / f"p{index}.png", index)
    return folder


@pytest.fixture
def arguments(protect_args, tiny_model_dir):
    """arguments(folder, out, *options) → a quick ``mimicshield protect`` command line."""
    return lambda folder, out, *options: protect_args(
        folder, "-o", out, *options, model_dir=tiny_model_dir
    )


def test_rerun_skips_finished_images_and_redoes_changed_ones(
    five_images, tmp_path, tiny_model_dir, capsys, arguments
):
    out = tmp_path / "out"
    assert main(arguments(five_images, out)) == 0
    first = {path.name: path.stat().st_mtime_ns for path in out.glob("*.png")}
    _picture(five_images / "p2.png", 99)  # one input edited since
    capsys.readouterr()
    assert main(arguments(five_images, out)) == 0
    assert "4 reused from earlier runs" in capsys.readouterr().out
    second = {path.name: path.stat().st_mtime_ns for path in out.glob("*.png")}
    assert {name for name in first if first[name] != second[name]} == {"p2.png"}
    newest = max(out.glob("protect-*.json"), key=lambda p: p.stat().st_mtime_ns)
    images = json.loads(newest.read_text())["images"]
    assert [image["reused"] for image in images] == [True, True, False, True, True]
    assert all(image["ok"] for image in images)
    # Other settings: nothing reused.
    assert main(arguments(five_images, out, "--seed", "3")) == 0
    assert "reused" not in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_split_the_work_and_merge_one_record(
    five_images, tmp_path, tiny_model_dir, arguments
):
    """`accelerate launch` on CPU (torchrun-style launcher), 2 processes, against one process."""
    single, double = tmp_path / "single", tmp_path / "double"
    assert main(arguments(five_images, single)) == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "mimicshield",
    ]
    completed = subprocess.run(
        launch + arguments(five_images, double),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    (record_path,) = double.glob("protect-*.json")  # parts merged and removed
    record = json.loads(record_path.read_text())
    assert record["processes"] == 2
    assert [Path(image["input"]).name for image in record["images"]] == [
        f"p{index}.png" for index in range(5)
    ]
    assert all(image["ok"] and not image["reused"] for image in record["images"])
    # Batch size 1 and one generator per batch: sharding does not change any output byte.
    for path in single.glob("*.png"):
        assert (double / path.name).read_bytes() == path.read_bytes()
