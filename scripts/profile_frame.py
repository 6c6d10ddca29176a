"""One eager step of the frame engine (full-size CSM-1B with random weights, bfloat16, one stream: the heads, the
backbone step and Mimi's decode) under torch.profiler, on CUDA: how many kernels a frame launches and where the GPU
time goes, as Markdown on stdout. gpu_check.py runs it."""

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from csm_cli.bench import TEXTS, context_segments, load_random_weights
from csm_cli.generation.engine import Prompt
from csm_cli.loading.config import CSM_1B
from csm_cli.loading.generator import LoadOptions
from csm_cli.progress import LoadProgress

TOP = 15
FRAMES = 8


def main() -> None:
    options = LoadOptions(tokenizer="/no-tokenizer", device="cuda", dtype="bfloat16")
    generator = load_random_weights(CSM_1B, options, LoadProgress(enabled=False))
    engine = generator.engine
    tokens, mask = generator.prompt_rows(TEXTS[0], 0, context_segments(2.0))
    engine.join("profiled", Prompt(tokens, mask, FRAMES, 50, 0.9, 0, stop_at_end=False))
    with torch.inference_mode():
        for _ in range(3):  # the prefill, then warm steps
            engine.step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as trace:
            engine.step()
            torch.cuda.synchronize()
    kernels = [e for e in trace.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_us = sum(e.device_time for e in kernels)
    by_name: dict[str, list[float]] = {}
    for event in kernels:
        by_name.setdefault(event.name, []).append(event.device_time)
    print(f"{len(kernels)} kernels in one eager step (heads with sampling, 31 depth-decoder passes, the backbone "
          f"step, Mimi), {gpu_us / 1000:.2f} ms of GPU time in them.\n")
    print("| kernel | count | total ms | mean us |\n|---|---|---|---|")
    for name, times in sorted(by_name.items(), key=lambda item: -sum(item[1]))[:TOP]:
        print(f"| `{name[:90]}` | {len(times)} | {sum(times) / 1000:.3f} | {np.mean(times):.1f} |")


if __name__ == "__main__":
    main()
