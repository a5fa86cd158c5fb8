"""What the tests share, and nothing else: no test module imports another.

REPO is the checkout's root (every test that opens a file of the repository or
runs a process there starts from it). The modules:

- tolerance: the suite's error measure (rel_err) and tolerances (assert_close);
- isas: each instruction set as a pytest parameter, skipped where this CPU lacks it;
- torch_vgg: torchvision's VGG16 layers built from Keras-layout weights (the oracle);
- weight_files: weight files written in each framework's real layout, and crafted ones;
- pickle_files: crafted pickles of the tutorial's X and y, opcode by opcode.

tests/ is on sys.path (pyproject.toml's pytest ``pythonpath``), so a test says
``from support import REPO`` or ``from support.weight_files import ...``.
"""
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
