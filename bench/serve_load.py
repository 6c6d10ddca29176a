"""Load benchmark of `csm serve`: N clients at once on loopback, each streaming speech; prints, per N, the time to
first audio (p50/p95 over all requests) and the real-time factors.

    csm serve --port 8000 &
    python bench/serve_load.py --url http://127.0.0.1:8000 --clients 1,2,4 --requests 2

- first audio: from sending the request to its first byte of audio;
- aggregate RTF: wall time of the round / seconds of audio all clients received (below 1: the server makes more
  audio than real time, all listeners together);
- stream RTF p50: per request, its duration / its seconds of audio (above 1: that listener would hear gaps).
"""

import argparse
import asyncio
import json
import statistics
import time

import httpx

SAMPLE_RATE = 24_000
TEXT = "Speech synthesis turns text into audio, frame by frame, eighty milliseconds at a time."


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one_request(client: httpx.AsyncClient, url: str, text: str, seed: int) -> tuple[float, float, float]:
    """(first audio seconds, duration seconds, audio seconds) of one streamed request."""
    body = {"model": "csm-1b", "voice": "0", "input": text, "response_format": "pcm", "seed": seed}
    started = time.monotonic()
    first = None
    received = 0
    async with client.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
        if response.status_code != 200:
            raise SystemExit(f"serve_load: {response.status_code}: {(await response.aread()).decode()[:200]}")
        async for data in response.aiter_bytes():
            if first is None:
                first = time.monotonic() - started
            received += len(data)
    return first or 0.0, time.monotonic() - started, received / 2 / SAMPLE_RATE


async def client_run(url: str, headers: dict[str, str], text: str, requests: int, seed: int
                     ) -> list[tuple[float, float, float]]:
    async with httpx.AsyncClient(headers=headers, timeout=None) as client:
        return [await one_request(client, url, text, seed + i) for i in range(requests)]


async def round_of(url: str, headers: dict[str, str], text: str, clients: int, requests: int) -> dict[str, float]:
    started = time.monotonic()
    results = await asyncio.gather(*(client_run(url, headers, text, requests, 1000 * c) for c in range(clients)))
    wall = time.monotonic() - started
    runs = [run for client in results for run in client]
    firsts = [first for first, _, _ in runs]
    audio = sum(seconds for _, _, seconds in runs)
    return {
        "clients": clients, "requests": len(runs),
        "first_audio_p50_s": percentile(firsts, 0.5), "first_audio_p95_s": percentile(firsts, 0.95),
        "aggregate_rtf": wall / audio, "stream_rtf_p50": statistics.median(d / s for _, d, s in runs),
        "audio_s": audio, "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", default="1,2,4", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--requests", type=int, default=2, help="requests each client makes, one after another")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--text", default=TEXT, help="what every request says")
    parser.add_argument("--json", action="store_true", help="one JSON object per round instead of a table")
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    asyncio.run(round_of(args.url, headers, args.text, 1, 1))  # warm-up
    if not args.json:
        print(f"{'clients':>7} {'first audio p50':>15} {'p95':>7} {'aggregate RTF':>13} {'stream RTF p50':>14}")
    for clients in (int(n) for n in args.clients.split(",")):
        figures = asyncio.run(round_of(args.url, headers, args.text, clients, args.requests))
        if args.json:
            print(json.dumps(figures))
        else:
            print(f"{clients:>7} {figures['first_audio_p50_s']:>14.2f}s {figures['first_audio_p95_s']:>6.2f}s "
                  f"{figures['aggregate_rtf']:>13.2f} {figures['stream_rtf_p50']:>14.2f}")


if __name__ == "__main__":
    main()
