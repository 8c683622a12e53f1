"""Score a model with the CSAW-HackML lab's eval.py interface.

Usage:
    python examples/eval.py <clean.h5> <poisoned.h5> <model>
    python examples/eval.py <image.png | folder | file.h5> --model <model>

<model> is a SavedModel folder (a GoodNet from `keras-prune-guard repair`), a `.keras` or
an `.h5` file, or a GoodNet exported by `keras-prune-guard export` as `.onnx` (run by ONNX
Runtime, extra `[onnx]`) or `.tflite` (run by LiteRT, extra `[litert]`). The first form
prints the clean classification accuracy and the attack success rate (share of poisoned
images classified as their file's `label`, the attacker's target). The second prints each
image's class in [0, N]; N means "backdoored input".
"""

import sys

from keras_prune_guard.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) >= 1 and "--model" in args and "--images" not in args:
        args = ["--images", args[0], *args[1:]]
    sys.exit(main(["eval", *args]))
