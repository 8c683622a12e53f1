"""Export (.keras, .h5, SavedModel, ONNX, LiteRT), runtimes, evaluate."""
