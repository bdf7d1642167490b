"""Data pipeline: I/O, dataset checks, preprocessing, training, inference, evaluation, converters."""
