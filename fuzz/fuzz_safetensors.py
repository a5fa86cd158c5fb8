"""Fuzz target: safetensors (vggtl's own layout and torchvision's keys), read by
vggtl.load_weights.

Contract: see fuzz/_weights.py (the weights arrays, or a WeightsError naming the file).
Seeds: `python fuzz/seeds.py CORPUS safetensors`.

    python fuzz/fuzz_safetensors.py -max_total_time=600 -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 CORPUS/safetensors
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402
import _weights  # noqa: E402

one_input = _weights.target("weights.safetensors")

if __name__ == "__main__":
    _harness.main(one_input)
