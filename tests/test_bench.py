"""The throughput benchmark: its arithmetic by hand, and `minbert bench --quick` end to end on
the tiny model (the real benchmark is not a test: it takes minutes and needs an idle machine)."""

import json
import re
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from minbert.bench import compare
from minbert.bench.compare import headline_ratios
from minbert.bench.measure import (
    ModelShape,
    alternating_runs,
    inference_flops,
    pair_ratios,
    summarise,
    training_flops,
)
from minbert.bench.options import ABLATIONS, machine_ablations, machine_setup
from minbert.bench.systems import (
    BenchError,
    build_minbert,
    build_peer,
    count_work,
    max_output_difference,
    minbert_attention_like,
)
from minbert.cli import build_parser, main
from minbert.cli_bench import options_from_args
from minbert.data.batching import Batch, Segment
from minbert.device import fast_bf16

pytest.importorskip("transformers")  # the peer; a dev dependency

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


def test_flop_formulas_by_hand():
    shape = ModelShape(layer_params=100, num_layers=2, hidden_size=8)
    # 6 N B T + 12 L H B T^2 with N=100, L=2, H=8, B=3, T=5
    assert training_flops(shape, 3, 5) == 6 * 100 * 15 + 12 * 2 * 8 * 3 * 25 == 23_400
    # 2 N B T + 4 L H B T^2
    assert inference_flops(shape, 3, 5) == 2 * 100 * 15 + 4 * 2 * 8 * 3 * 25 == 7_800
    # [CLS]-only last layer (keys and values: 2 * (8^2 + 8) = 144 of each layer's 500)
    wide = ModelShape(layer_params=1000, num_layers=2, hidden_size=8)
    full_layer = 2 * 500 * 15 + 4 * 8 * 3 * 25  # 17,400
    # keys and values for 15 tokens, the other 356 parameters for 3 rows, 1 query x 5 keys
    last = 2 * 144 * 15 + 2 * 356 * 3 + 4 * 8 * 3 * 5  # 4,320 + 2,136 + 480
    assert inference_flops(wide, 3, 5, first_token_only=True) == full_layer + last == 24_336
    assert training_flops(wide, 3, 5, first_token_only=True) == 3 * 24_336
    # packed: per-token work on 11 real tokens of the 15; attention still padded
    assert inference_flops(wide, 3, 5, tokens=11) == 2 * (2 * 500 * 11 + 4 * 8 * 3 * 25)


def test_model_shape_counts_the_transformer_layers_only(tiny_model, tiny_config):
    h, i, layers = tiny_config.hidden_size, tiny_config.intermediate_size, 2
    attention = 4 * (h * h + h) + 2 * h  # Q, K, V, output projection; LayerNorm
    feed_forward = (h * i + i) + (i * h + h) + 2 * h  # up, down; LayerNorm
    shape = ModelShape.of(tiny_model)
    assert shape == ModelShape(layers * (attention + feed_forward), layers, h)
    assert shape.layer_params < sum(p.numel() for p in tiny_model.parameters())


def _segment(mask: list[list[int]]) -> Segment:
    m = torch.tensor(mask)
    return Segment(m * 7, m, torch.zeros_like(m))


def test_count_work_separates_real_and_padded_tokens():
    shape = ModelShape(layer_params=10, num_layers=1, hidden_size=4)
    sst = Batch([_segment([[1, 1, 1, 0], [1, 1, 0, 0]])], torch.zeros(2), np.arange(2))
    quora = Batch([_segment([[1, 1, 1]])], torch.zeros(1), np.arange(1))  # a cross-encoded pair
    work = count_work([("sst", sst), ("quora", quora)], shape)
    assert (work.batches, work.examples, work.sentences) == (2, 3, 2 + 2)
    assert (work.real_tokens, work.padded_tokens) == (5 + 3, 8 + 3)
    assert work.train_flops == training_flops(shape, 2, 4) + training_flops(shape, 1, 3)
    assert work.infer_flops == inference_flops(shape, 2, 4) + inference_flops(shape, 1, 3)


def test_summary_and_per_pair_ratios():
    assert summarise([3.0, 1.0, 2.0]) == {
        "median": 2.0,
        "min": 1.0,
        "max": 3.0,
        "spread": 1.0,
        "n": 3,
    }
    # minbert rates over peer rates, pair by pair: the median of the ratios, not of the rates.
    ratios = pair_ratios([10.0, 30.0, 20.0], [5.0, 30.0, 40.0])
    assert ratios == [2.0, 1.0, 0.5]
    assert summarise(ratios)["median"] == 1.0


def test_runs_alternate_and_rotate_who_goes_first():
    order = []
    runs = alternating_runs(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3, torch.device("cpu")
    )
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert [len(r) for r in runs.values()] == [3, 3]
    assert all(r.seconds > 0 and r.memory["peak_rss_mib"] > 0 for r in runs["a"])


def test_headline_keys_are_medians_of_the_pair_ratios():
    def setup(train: float, infer: float, rate: float) -> dict:
        return {
            "train": {
                "ratio": {"median": train},
                "minbert": {"real_tokens_per_s": {"median": rate}},
                "peer": {"real_tokens_per_s": {"median": 100.0}},
            },
            "infer": {
                "ratio": {"median": infer},
                "minbert": {"sentences_per_s": {"median": rate}},
                "peer": {"sentences_per_s": {"median": 50.0}},
            },
        }

    out = headline_ratios({"default": setup(1.1, 1.3, 110.0), "best": setup(1.2, 1.4, 300.0)})
    assert out["train_ratio_default"] == 1.1 and out["infer_ratio_default"] == 1.3
    assert out["train_ratio_best"] == 1.2 and out["infer_ratio_best"] == 1.4
    assert out["minbert_best_over_peer_default"] == {
        "train_real_tokens": 3.0,
        "infer_sentences": 6.0,
    }


def test_quick_and_explicit_options():
    parser = build_parser()
    quick = options_from_args(parser.parse_args(["bench", "--quick", "--reps", "7"]))
    assert quick.quick and quick.reps == 7 and quick.train_steps == 3
    full = options_from_args(parser.parse_args(["bench", "--fixed-batch", "8x64"]))
    assert not full.quick and full.reps == 5 and full.fixed_batch == (8, 64)
    with pytest.raises(BenchError, match="--sweep"):
        options_from_args(parser.parse_args(["bench", "--sweep-only"]))


@pytest.mark.parametrize("peer_attention", ["sdpa", "eager"])
def test_both_systems_compute_the_same_function(tiny_setup, peer_attention):
    model = str(tiny_setup / "model")
    minbert = build_minbert(model, minbert_attention_like(peer_attention), seed=0)
    peer = build_peer(model, peer_attention, minbert.model)
    assert peer.attention == peer_attention
    ids = torch.tensor([[2, 5, 6, 7, 3, 0], [2, 8, 3, 9, 10, 3]])
    batch = Batch([Segment(ids, (ids > 0).long(), torch.zeros_like(ids))], None, np.arange(2))
    device = torch.device("cpu")
    probe = [(task, batch) for task in ("sst", "quora", "sts")]
    assert max_output_difference(minbert, peer, probe, device) < 1e-5


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_quick_benchmark_end_to_end_on_the_tiny_model(
    tiny_setup, tmp_path, capsys, restore_threads
):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--quick",
            "--device", "cpu",
            "--model", str(tiny_setup / "model"),
            "--data-dir", str(tiny_setup / "data"),
            "--threads", "1",  # a tiny model on busy cores: one thread avoids OpenMP stalls
            "--fixed-batch", "4x16",
            "--matmul-size", "64",
            "--json", str(out),
            "--ablate",
            "--sweep", str(tmp_path / "sweep.png"),
            "--sweep-lengths", "8", "16", "128",  # 128 > the tiny model's 64 positions: skipped
            "--sweep-batch-sizes", "2", "4",
        ]
    )  # fmt: skip
    assert code == 0
    results = json.loads(out.read_text())
    for key in (
        "train_ratio_default",
        "train_ratio_best",
        "infer_ratio_default",
        "infer_ratio_best",
    ):
        assert results[key] > 0
    for name in ("default", "best"):
        setup = results["setups"][name]
        assert setup["max_output_difference_fp32"] < 1e-3
        assert len(setup["train"]["ratios"]) == 3
        for system in ("minbert", "peer"):
            train = setup["train"][system]
            assert train["real_tokens_per_s"]["median"] <= train["padded_tokens_per_s"]["median"]
            assert train["peak_fraction"]["median"] > 0
            assert setup["infer"][system]["sentences_per_s"]["median"] > 0
    assert "fixed" in results["setups"]["best"] and "fixed" not in results["setups"]["default"]
    # "fp32" is an ablation only where the best setup is bf16 (machine_ablations)
    assert set(results["ablation"]["train"]) == set(machine_ablations(fast_bf16(CPU)))
    assert set(ABLATIONS) >= {
        "best",
        "manual attention",
        "fp32",
        "random batches",
        "torch's dropout mask",
        "separate Q, K, V matmuls",
        "all tokens in the last layer",
    }
    assert {r["length"] for r in results["sweep"]["rows"]} == {8, 16}
    assert (tmp_path / "sweep.png").stat().st_size > 0
    report = capsys.readouterr().out
    assert "| best | training, real tokens/s |" in report and "6*N*B*T" in report


def test_without_fast_bf16_the_best_setup_and_ablations_are_fp32():
    assert machine_setup("best", bf16_fast=True).bf16
    assert not machine_setup("best", bf16_fast=False).bf16
    assert machine_setup("best", bf16_fast=False).group_lengths
    plain = machine_ablations(bf16_fast=False)
    assert "fp32" not in plain and set(plain) == set(ABLATIONS) - {"fp32"}
    assert not any(v.bf16 for v in plain.values())
    assert plain["manual attention"].attention == "manual"


def test_quick_benchmark_on_a_cpu_without_fast_bf16_times_no_bf16(
    tiny_setup, tmp_path, monkeypatch, restore_threads, caplog
):
    caplog.set_level("INFO", logger="minbert.bench")
    # On an AVX2-only CPU bf16 matmuls run hundreds of times slower: the "best" setup in bf16
    # (and its bf16 matmul peak) made `minbert bench --quick` run for over 15 minutes there.
    monkeypatch.setattr(compare, "fast_bf16", lambda device: False)
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench", "--quick", "--device", "cpu", "--threads", "1",
            "--model", str(tiny_setup / "model"), "--data-dir", str(tiny_setup / "data"),
            "--fixed-batch", "4x16", "--matmul-size", "64", "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    results = json.loads(out.read_text())
    assert {name: s["dtype"] for name, s in results["setups"].items()} == {
        "default": "fp32",
        "best": "fp32",
    }
    assert set(results["matmul_peak_flops"]) == {"fp32"}
    assert results["setups"]["best"]["batches"] == "length-grouped"
    # each phase says how long its timed runs will take before they start
    log = caplog.text
    assert re.search(r"best train: about \d+ s for 3 repetitions \(from the warm-up\)", log)


def test_the_benchmark_script_wraps_the_cli():
    namespace = runpy.run_path(str(ROOT / "benchmarks/throughput.py"), run_name="not_main")
    assert namespace["main"] is main
