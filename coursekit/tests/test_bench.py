"""coursekit.bench: the shared timing and CSV helpers of benchmarks/."""
import pytest

from coursekit import bench


def test_time_interleaved_takes_the_calls_in_turn():
    order = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    times = bench.time_interleaved(calls, repeats=3, timer=lambda fn: (fn(), 1.0)[1])
    assert order == ["a", "b"] * 3, f"methods must be interleaved, got {order}"
    assert times == {"a": [1.0] * 3, "b": [1.0] * 3}


def test_time_interleaved_rejects_no_repeats():
    with pytest.raises(ValueError, match="repeats"):
        bench.time_interleaved({"a": lambda: None}, repeats=0)


def test_spread_reports_median_min_max():
    row = bench.spread([3e-6, 1e-6, 10e-6])
    assert row == {"us": 3.0, "us_min": 1.0, "us_max": 10.0, "runs": 3}


def test_csv_log_round_trip(tmp_path):
    path = tmp_path / "sub" / "x.csv"
    with bench.CsvLog(path) as log:
        log.write({"n": 1, "name": "ours", "us": 2.5})
        log.write([{"n": 2, "name": "sdpa", "us": 3.0}])
    assert bench.read_csv(path) == [{"n": 1, "name": "ours", "us": 2.5}, {"n": 2, "name": "sdpa", "us": 3.0}]
    with bench.CsvLog(None) as log:  # no --out: nothing written, no error
        log.write({"n": 1})
