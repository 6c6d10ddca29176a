"""From the hub or a folder to a loaded model: repository layouts, weights, config, voices, quantization."""
