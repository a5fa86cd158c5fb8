"""Fuzz target: torchvision .pth in torch.save's zip format, read by vggtl.load_weights.

Contract: see fuzz/_weights.py (the weights arrays, or a WeightsError naming the file).
Seeds: `python fuzz/seeds.py CORPUS pth_zip`.

    python fuzz/fuzz_pth_zip.py -max_total_time=600 -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 CORPUS/pth_zip
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402
import _weights  # noqa: E402

one_input = _weights.target("weights.pth")

if __name__ == "__main__":
    _harness.main(one_input)
