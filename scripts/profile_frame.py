"""One eager frame of full-size CSM-1B (random weights, bfloat16) and Mimi's decode of it under torch.profiler, on
CUDA: how many kernels a frame launches and where the GPU time goes, as Markdown on stdout. gpu_check.py runs it."""

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from csm_cli.bench import TEXTS, context_segments, load_random_weights
from csm_cli.generation.prompt import frame_row
from csm_cli.loading.config import CSM_1B
from csm_cli.progress import LoadProgress

TOP = 15


def main() -> None:
    generator = load_random_weights(CSM_1B, "/no-tokenizer", "cuda", "bfloat16", LoadProgress(enabled=False))
    model = generator.model
    tokens, mask = generator.prompt_rows(TEXTS[0], 0, context_segments(2.0))
    rng = torch.Generator(device=generator.device).manual_seed(0)
    with torch.inference_mode(), generator.codec.streaming():
        last_h = model.prefill(tokens, mask)
        position = len(tokens)

        def frame() -> None:
            nonlocal last_h, position
            codes = model.sample_frame(last_h, 50, 0.9, rng)
            generator.codec.decode_chunk(codes.clamp(max=2047).T)
            last_h = model.backbone_step(*frame_row(codes), model.backbone_positions[position : position + 1])
            position += 1

        for _ in range(3):
            frame()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as trace:
            frame()
            torch.cuda.synchronize()
    kernels = [e for e in trace.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_us = sum(e.device_time for e in kernels)
    by_name: dict[str, list[float]] = {}
    for event in kernels:
        by_name.setdefault(event.name, []).append(event.device_time)
    print(f"{len(kernels)} kernels in one eager frame (backbone step, heads, 31 depth-decoder passes, Mimi), "
          f"{gpu_us / 1000:.2f} ms of GPU time in them.\n")
    print("| kernel | count | total ms | mean us |\n|---|---|---|---|")
    for name, times in sorted(by_name.items(), key=lambda item: -sum(item[1]))[:TOP]:
        print(f"| `{name[:90]}` | {len(times)} | {sum(times) / 1000:.3f} | {np.mean(times):.1f} |")


if __name__ == "__main__":
    main()
