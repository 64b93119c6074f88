"""twml's Keras layers for TensorFlow 2 / Keras 3."""
