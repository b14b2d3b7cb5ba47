"""The "x floor" column of ``python -m cnorm bench``: the bytes each op must move
(against hand counts), the stream-bandwidth copy, the column in the table, the summary and
the JSON. Nothing here judges a timing: the runs only have to produce the numbers."""

import json
import sys

import numpy as np
import pytest

from cnorm.benchmarks import cases as C
from cnorm.benchmarks import cli
from cnorm.benchmarks import report as R
from cnorm.benchmarks.timing import Bandwidth, Measurement, stream_bandwidth, stream_buffer_bytes

MiB = 2**20

# (case, op, dtype, bytes counted by hand)
HAND_COUNTS = [
    # x, y: 3,145,728 float32 each; weight, bias: 768 each
    ("ln_bert", "fwd", "float32", 2 * 3_145_728 * 4 + 2 * 768 * 4),
    # x, y: 6,422,528 float16; read weight, bias, running_mean, running_var (64 each),
    # write the two running statistics
    ("bn2d_resnet", "train_fwd", "float16", 2 * 6_422_528 * 2 + 4 * 64 * 2 + 2 * 64 * 2),
    # eval: the running statistics are only read
    ("bn2d_resnet", "eval_fwd", "float16", 2 * 6_422_528 * 2 + 4 * 64 * 2),
    # x, y, dy, dx (262,144 float32); weight, bias read, their grads written (64 each);
    # mean and rstd of 4096 rows, float32, written then read
    ("ln_smallD", "fwd_bwd", "float32", 4 * 262_144 * 4 + 4 * 64 * 4 + 2 * 2 * 4096 * 4),
    # RMSNorm: a weight (1024) and its grad, no bias; 1/rms of 4096 rows in float32
    ("rms", "fwd_bwd", "float16", 4 * 4_194_304 * 2 + 2 * 1024 * 2 + 2 * 4096 * 4),
    # InstanceNorm2d without affine: no parameters; mean and rstd of 16 * 64 (sample, channel)
    ("in2d", "fwd_bwd", "float32", 4 * 4_194_304 * 4 + 2 * 2 * 1024 * 4),
    # x, residual read, y and the sum written (4,194,304 float64); weight, bias (1024)
    ("add_ln", "fwd", "float64", 4 * 4_194_304 * 8 + 2 * 1024 * 8),
    # GroupNorm(32, 256): weight, bias and grads (256); mean and rstd of 32 * 32 groups
    ("gn", "fwd_bwd", "float32", 4 * 6_422_528 * 4 + 4 * 256 * 4 + 2 * 2 * 1024 * 4),
]


@pytest.mark.parametrize(
    "name,op,dtype,expected", HAND_COUNTS, ids=[f"{c}-{o}-{d}" for c, o, d, _ in HAND_COUNTS]
)
def test_floor_bytes_hand_counts(name, op, dtype, expected):
    assert C.floor_bytes(C.CASES_BY_NAME[name], op, dtype) == expected


def test_floor_bytes_bfloat16_counts_its_own_bytes():
    pytest.importorskip("ml_dtypes")
    C.select_dtypes("bfloat16")  # registers np.dtype("bfloat16")
    case = C.CASES_BY_NAME["bn2d_tiny"]  # (1, 64, 8, 8): 4096 values
    # x, y, dy, dx; weight, bias, running stats read; running stats and grads written;
    # mean and invstd of 64 channels in float32, written and read
    expected = 4 * 4096 * 2 + 4 * 64 * 2 + 4 * 64 * 2 + 2 * 2 * 64 * 4
    assert C.floor_bytes(case, "fwd_bwd", "bfloat16") == expected
    assert C.floor_bytes(case, "fwd_bwd", "float16") == expected


def test_floor_traffic_names_the_arrays():
    traffic = C.floor_traffic(C.CASES_BY_NAME["bn1d_mlp"], "fwd_bwd", "float32")
    assert set(traffic["read"]) == {"x", "dy", "weight", "bias", "running_mean", "running_var", "saved_stats"}
    assert set(traffic["write"]) == {
        "y",
        "dx",
        "grad_weight",
        "grad_bias",
        "running_mean",
        "running_var",
        "saved_stats",
    }
    fwd = C.floor_traffic(C.CASES_BY_NAME["ln_gpt"], "fwd", "float32")
    assert fwd == {
        "read": {"x": 8 * 512 * 1024 * 4, "weight": 4096, "bias": 4096},
        "write": {"y": 8 * 512 * 1024 * 4},
    }


def test_stream_copy_copies_and_reports_threads():
    from cnorm._kernels import stream

    src = np.arange(10_001, dtype=np.float64) - 5000.5
    for streamed in (False, True):
        dst = np.zeros_like(src)
        assert stream.stream_copy(dst[1:], src[1:], streamed) >= 1  # misaligned start too
        np.testing.assert_array_equal(dst[1:], src[1:])
    with pytest.raises(ValueError, match="dst has"):
        stream.stream_copy(np.empty(3), np.empty(4))
    bw = stream_bandwidth(stream.stream_copy, 1 * MiB, reps=1, can_stream=stream.can_stream())
    assert bw.buffer_bytes == MiB and bw.bytes_per_s >= bw.cached_bytes_per_s > 0


def test_stream_buffer_default_is_far_above_the_cache():
    assert stream_buffer_bytes(32 * MiB) == 128 * MiB
    assert stream_buffer_bytes(4 * MiB) == 64 * MiB  # at least 64 MiB
    assert stream_buffer_bytes(None) >= 64 * MiB


def _fixed_record(op="fwd", threads=1):
    """A record of ln_bert from made-up times (2 ms cnorm, 1 ms copy) and 10 GB/s."""
    meas = Measurement(times={"cnorm": [2e-3], "copy": [1e-3]}, inner={"cnorm": 1, "copy": 1})
    bw = Bandwidth(threads, 1e10, 5e9, 1e10, 128 * MiB, 5)
    return R.record(C.CASES_BY_NAME["ln_bert"], "float32", op, threads, meas, None, bw)


def test_record_table_and_summary_have_x_floor(capsys):
    rec = _fixed_record()
    floor_s = C.floor_bytes(C.CASES_BY_NAME["ln_bert"], "fwd", "float32") / 1e10
    assert rec["floor_ms"] == pytest.approx(floor_s * 1e3)
    assert rec["x_floor"] == pytest.approx(2e-3 / floor_s)
    assert rec["stream_gbps"] == pytest.approx(10.0)
    assert "x floor" in R.TABLE.header()
    R.print_table(C.CASES_BY_NAME["ln_bert"], "float32", [rec], False, sys.stdout)
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if "x floor" in line)
    row = next(line for line in lines if line.strip().startswith("fwd"))
    col = header.index("x floor") + len("x floor")
    assert row[col - 7 : col].strip() == f"{rec['x_floor']:.2f}"
    summary = R.summary_line([rec], ["fwd"], [1], False)
    assert f"geomean x floor: fwd {rec['x_floor']:.2f}@1t" in summary


def test_no_bandwidth_no_floor():
    meas = Measurement(times={"cnorm": [2e-3]}, inner={"cnorm": 1})
    rec = R.record(C.CASES_BY_NAME["ln_bert"], "float32", "fwd", 1, meas)
    assert rec["floor_bytes"] > 0 and rec["x_floor"] is None and rec["floor_ms"] is None
    assert "x floor" not in R.summary_line([rec], ["fwd"], [1], False)


QUICK = ["--quick", "--reps", "1", "--min-rep-ms", "0.05", "--no-progress", "--threads", "1"]


def test_quick_run_float32_and_bfloat16_has_the_column_and_json(tmp_path, capsys):
    pytest.importorskip("ml_dtypes")
    path = tmp_path / "out.json"
    argv = [*QUICK, "--cases", "ln_token", "--dtype", "float32,bfloat16"]
    argv += ["--stream-mb", "1", "--stream-reps", "1", "--json", str(path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "stream bandwidth (read+write copy, both counted; 2 x 1 MiB" in out
    assert out.count("  x floor  ") == 2  # the header of one table per dtype
    assert "geomean x floor: fwd " in out
    doc = json.loads(path.read_text())
    bw = doc["metadata"]["stream_bandwidth"]["1"]
    assert bw["buffer_bytes"] == MiB and bw["gbps"] > 0 and bw["threads"] == 1
    assert "floor bytes" in doc["metadata"]["floor_bytes"]
    results = doc["results"]
    assert {r["dtype"] for r in results} == {"float32", "bfloat16"}
    case = C.CASES_BY_NAME["ln_token"]
    for r in results:
        assert r["floor_bytes"] == C.floor_bytes(case, r["op"], r["dtype"])
        assert r["stream_gbps"] == bw["gbps"]
        assert r["floor_ms"] == pytest.approx(r["floor_bytes"] / (bw["gbps"] * 1e9) * 1e3)
        assert r["x_floor"] == pytest.approx(r["median_s"]["cnorm"] / (r["floor_ms"] / 1e3))
    f32 = {r["op"]: r["floor_bytes"] for r in results if r["dtype"] == "float32"}
    bf16 = {r["op"]: r["floor_bytes"] for r in results if r["dtype"] == "bfloat16"}
    assert bf16["fwd"] * 2 == f32["fwd"]  # half the bytes (no statistics in a forward)


def test_stream_mb_zero_turns_the_floor_off(capsys):
    assert (
        cli.main([*QUICK, "--cases", "bn2d_tiny", "--ops", "eval_fwd", "--no-torch", "--stream-mb", "0"]) == 0
    )
    out = capsys.readouterr().out
    assert "stream bandwidth: not measured" in out and "geomean x floor" not in out
    assert cli.main([*QUICK, "--cases", "bn2d_tiny", "--stream-mb", "-1"]) == 2
