"""Readers of the pipeline's output: tf.data and PyTorch. Normalisation happens here, at training time."""
