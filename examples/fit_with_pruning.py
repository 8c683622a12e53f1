"""Fine-Pruning inside an ordinary `model.fit`: prune with `PruningCallback`, then fine-tune.

Usage:
    python examples/fit_with_pruning.py [--epochs 8] [--lr 1e-2]

Uses the built-in face benchmark (generated and cached on first use) as B and its data.
The callback ranks pool_3's channels on the clean validation data, prunes them least
active first until accuracy falls X points (X = 2, 4, 10), keeps each pruned-only B', and
leaves the model masked at `fine_tune_at` so that the epochs of this same `fit` fine-tune
it with the mask frozen. The script prints the clean accuracy and attack success rate of
B, of B'_4 and of the fine-tuned network.
"""

import argparse

import keras

from keras_prune_guard import (
    PruneConfig,
    PruningCallback,
    evaluate,
    insert_channel_mask,
    load_network,
)
from keras_prune_guard.benchmark import ensure_benchmark
from keras_prune_guard.data.files import load_lab_h5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args()

    bench = ensure_benchmark()
    bad = load_network(bench.model)
    x_valid, y_valid = load_lab_h5(bench.valid)
    test, poisoned = load_lab_h5(bench.test), load_lab_h5(bench.bd_test)

    model = insert_channel_mask(bad, after="pool_3")
    steps = args.epochs * -(-len(x_valid) // 32)  # batches of 32, every epoch
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=steps)
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    pruning = PruningCallback((x_valid, y_valid), PruneConfig(thresholds=[2, 4, 10]),
                              fine_tune_at=4)
    model.fit(x_valid, y_valid, epochs=args.epochs, batch_size=32, verbose=2,
              callbacks=[pruning])

    for name, network in (("B", bad), ("B' (X=4, pruned only)", pruning.snapshots[4.0]),
                          ("B'' (X=4, fine-tuned)", model)):
        scores = evaluate(network, test, poisoned)
        print(f"{name:<24} clean accuracy {scores.test_accuracy:6.2f}%   "
              f"attack success {scores.attack_success:6.2f}%")


if __name__ == "__main__":
    main()
