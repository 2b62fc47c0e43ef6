"""The footprint numbers that the structured report and the bench tables are built from."""

from __future__ import annotations

from llm_surgeon.evaluation.footprint import forward_footprint, parameter_count
from tests.conftest import tiny_llama


def test_cpu_forward_peak_holds_weights_and_the_logits():
    model = tiny_llama(vocab_size=4096, max_position_embeddings=256)
    fp = forward_footprint(model, tokens=200, repeats=1)
    logits_mb = 200 * 4096 * 4 / 2**20
    assert fp["parameters"] == parameter_count(model)
    assert fp["weights_mb"] == parameter_count(model) * 4 / 2**20
    # The float32 logits of every position are alive at once at the end of the forward.
    assert fp["forward_peak_mb"] >= fp["weights_mb"] + logits_mb
    # ...and nothing like ten copies of everything.
    assert fp["forward_peak_mb"] < fp["weights_mb"] + 10 * logits_mb


def test_forward_peak_grows_with_the_sequence_length():
    model = tiny_llama(vocab_size=2048, max_position_embeddings=512)
    short = forward_footprint(model, tokens=64, repeats=1)
    long = forward_footprint(model, tokens=512, repeats=1)
    assert long["forward_peak_mb"] - short["forward_peak_mb"] >= (512 - 64) * 2048 * 4 / 2**20
