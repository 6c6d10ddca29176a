"""Frames from the model: prompts, the model and its CUDA graphs, Mimi, streams, end of speech, conversations."""
