"""The benchmark's arithmetic (batched window, pass rates, paired efficiency, batching) and its reading of /metrics."""

import pytest

from bench.report import batched_window, union_seconds


def client(ttft, finished, chunks):
    return {"ttft_s": ttft, "finished_s": finished, "content_s": chunks}


def test_the_window_runs_from_the_last_first_token_to_the_first_finish():
    early = client(1.0, 10.0, [1.0, 2.0, 6.0, 7.0, 8.0, 10.0])  # decoded alone while the other read its prompt
    late = client(5.0, 12.0, [5.0, 6.0, 7.0, 8.0, 11.0])
    figures = batched_window([early, late])
    assert figures["concurrent_batched_window_s"] == 5.0
    assert figures["concurrent_batched_decode_tps"] == (4 + 3) / 5.0  # (5, 10]: 6,7,8,10 and 6,7,8


def test_no_window_without_chunk_times_or_overlap():
    assert batched_window([client(1.0, 2.0, [])])["concurrent_batched_decode_tps"] is None
    apart = [client(1.0, 2.0, [1.0, 2.0]), client(3.0, 4.0, [3.0, 4.0])]
    assert batched_window(apart)["concurrent_batched_decode_tps"] is None
    assert union_seconds([(0, 1), (0.5, 2), (3, 4)]) == 3.0


def test_step_rates_come_from_the_pass_histogram():
    from bench.report import step_figures

    steps = {"1": {"count": 10, "sum": 3.0}, "2": {"count": 1, "sum": 0.4}, "4": {"count": 20, "sum": 10.0}}
    figures = step_figures(steps, clients=4)
    assert figures["step_tps_1"] == 10 / 3.0 and figures["step_tps_n"] == 4 * 20 / 10.0
    assert figures["step_speedup"] == (80 / 10.0) / (10 / 3.0)
    assert step_figures({}, clients=4)["step_speedup"] is None


def test_each_paired_decode_is_against_the_mean_of_its_own_two_samples():
    from bench.report import paired_figures

    rounds = [
        {"decode_tps": 4.0, "bandwidth_before": 30e9, "bandwidth_after": 50e9},  # 4 x 8e9 / 40e9 = 0.8
        {"decode_tps": 3.0, "bandwidth_before": 50e9, "bandwidth_after": 30e9},  # 0.6
        {"decode_tps": 5.0, "bandwidth_before": 30e9, "bandwidth_after": 50e9},  # 1.0
        {"decode_tps": None, "bandwidth_before": 30e9, "bandwidth_after": 50e9},
    ]  # failed: left out
    figures = paired_figures(rounds, bytes_per_token=8e9)
    assert figures["paired_efficiencies"] == [0.8, 0.6, 1.0]
    assert figures["paired_efficiency"] == 0.8
    assert paired_figures([], bytes_per_token=8e9)["paired_efficiency"] is None


def test_each_batch_round_is_against_its_own_one_client_rate():
    from bench.report import paired_batch_figures

    rounds = [
        {"one_decode_tps": 5.0, "concurrent_batched_decode_tps": 20.0},  # 4.0
        {"one_decode_tps": 8.0, "concurrent_batched_decode_tps": 16.0},  # 2.0: slow memory while four decode
        {"one_decode_tps": 4.0, "concurrent_batched_decode_tps": 14.0},  # 3.5
        {"one_decode_tps": 4.0, "concurrent_batched_decode_tps": None},
    ]  # no window: left out
    figures = paired_batch_figures(rounds)
    assert figures["batch_speedups"] == [4.0, 2.0, 3.5]
    assert figures["batch_speedup"] == 3.5
    assert paired_batch_figures([])["batch_speedup"] is None


def test_a_metric_is_read_from_the_exposition_by_its_sample_name():
    from bench.client import metric_value

    text = (
        "# HELP loupe_prefix_cache_tokens Tokens kept.\n# TYPE loupe_prefix_cache_tokens gauge\n"
        "loupe_prefix_cache_tokens 3382.0\n"
    )
    assert metric_value(text, "loupe_prefix_cache_tokens") == 3382
    assert metric_value(text, "loupe_queue_depth") is None


@pytest.mark.slow  # a real server
def test_the_prefix_cache_is_read_once_the_conversation_is_put_away(live_server):
    from bench.client import settled_gauge, stream_chat

    server = live_server()
    answer = stream_chat(server.url, [{"role": "user", "content": "Hello there"}], 3)
    assert answer.error is None
    assert settled_gauge(server.url, "loupe_prefix_cache_tokens") > 0


@pytest.mark.slow  # a real server
def test_paired_batches_run_one_client_then_all_at_once_against_a_real_server(live_server):
    from bench import inputs
    from bench.run import Pairing, paired_batches

    server = live_server(MAX_BATCH="4")
    image = inputs.data_url(inputs.jpeg_bytes(inputs.photo(size=(64, 48))))
    rounds = paired_batches(server.url, image, 4, Pairing(0, 0, lambda: 0.0, batch_rounds=2, batch_tokens=8))
    assert len(rounds) == 2
    for batch in rounds:
        assert batch["error"] is None and batch["one_decode_tps"] > 0
        assert set(batch) == {"one_decode_tps", "concurrent_batched_decode_tps", "concurrent_batched_window_s", "error"}


def test_a_failed_paired_round_is_listed_with_its_reason():
    from bench.report import error_lines

    ok = {"error": None}
    raw = {
        "first_turn": ok,
        "follow_up": ok,
        "concurrent": {"clients": [ok]},
        "paired_decodes": [ok],
        "paired_batches": [ok, {"error": "HTTP 429: too many"}],
    }
    assert error_lines({"bfloat16": {"raw": {"server": raw}}}) == [
        "ERROR bfloat16 server paired batch 2: HTTP 429: too many"
    ]


def test_the_sweep_sets_each_size_against_one_client_and_the_naive_baseline():
    from bench.sweep import questions, size_figures, table

    def measured(ttft, finished, chunks):
        return {**client(ttft, finished, chunks), "completion_tokens": len(chunks), "client_decode_tps": 2.0}

    one = size_figures(1, [measured(0.5, 2.5, [0.5, 1.0, 1.5, 2.0, 2.5])], wall_s=2.5)
    assert one["batched_decode_tps"] == 2.0  # a lone client's own rate
    four = size_figures(4, [measured(0.5 + i, 6.0, [0.5 + i, 4.0, 5.0, 6.0]) for i in range(4)], wall_s=6.0)
    assert four["batched_decode_tps"] == 4 * 3 / (6.0 - 3.5) and four["failures"] == 0
    rendered = table([one, four], {"decode_tps": 1.0}).splitlines()
    assert rendered[3].startswith("| 4 | 4.8 | 2.4x |") and rendered[3].endswith("| 1 | 4.8x |")
    assert len(set(questions(64))) == 64
