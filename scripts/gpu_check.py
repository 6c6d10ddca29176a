"""`make gpu-check`: the one command a session with a GPU runs first. It installs what the GPU image lacks from the
wheels carried in `.whl/` (`make gpu-wheels` downloads them where pip has a network), then runs the `gpu` tests,
`csm bench --random-weights` (one stream, CUDA graphs against eager) with and without 20 s of context and with 8
and 32 streams in one graphed engine, a torch.profiler trace of one eager step, and writes one Markdown report.
Without a GPU the GPU steps say "no GPU" and the report is still written.

Only the standard library is imported here: the packages it installs are not there yet when it starts.
"""

import argparse
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHES = {
    "bench, no context": ["--frames", "125", "--compare", "eager"],
    "bench, 20 s of context": ["--frames", "125", "--compare", "eager", "--context-seconds", "20"],
    # each beside one stream; issue 14's goal: 32 streams in real time (under 80 ms a frame each) with first audio
    # within 200 ms p95
    "bench, 8 streams in one engine": ["--frames", "25", "--streams", "8"],
    "bench, 32 streams in one engine": ["--frames", "25", "--streams", "32"],
}
STEP_TIMEOUT_S = 240


@dataclass
class Report:
    gpu: str | None = None
    torch: str = ""
    installed: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    sections: list[tuple[str, str]] = field(default_factory=list)

    def add(self, title: str, body: str) -> None:
        self.sections.append((title, body))

    def markdown(self) -> str:
        lines = [f"# csm gpu-check: {self.gpu or 'no GPU'}", "", f"torch {self.torch}", "",
                 "## Install", "",
                 f"- installed from wheels: {', '.join(self.installed) or 'nothing'}",
                 f"- already present: {', '.join(self.present) or 'nothing'}"]
        for title, body in self.sections:
            lines += ["", f"## {title}", "", body]
        return "\n".join(lines) + "\n"


def wheel_distribution(wheel: Path) -> tuple[str, str]:
    """(name, version) from a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        fields = dict(line.split(": ", 1) for line in archive.read(name).decode().splitlines()
                      if ": " in line and line.split(": ", 1)[0] in ("Name", "Version"))
    return fields["Name"], fields["Version"]


def install_missing(wheels: Path, target: Path, report: Report) -> None:
    """Installs, into `target`, each wheel in `wheels` whose distribution is not installed."""
    missing = []
    for wheel in sorted(wheels.glob("*.whl")):
        name, version = wheel_distribution(wheel)
        try:
            report.present.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            missing.append(wheel)
            report.installed.append(f"{name} {version}")
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, missing)], check=True)


def run(command: list[str], env: dict[str, str], timeout_s: float = STEP_TIMEOUT_S) -> tuple[int, str]:
    """The command's exit status and output; a command past `timeout_s` is killed and reported as exit 124."""
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout or b""
        output = output.decode(errors="replace") if isinstance(output, bytes) else output
        return 124, f"{output}\n(killed after {timeout_s:.0f} s)"
    return done.returncode, done.stdout + done.stderr


def fenced(text: str, limit: int = 4000) -> str:
    return "```\n" + text.strip()[-limit:] + "\n```"


def probe(env: dict[str, str], report: Report) -> None:
    code = ("import torch; print(torch.__version__); "
            "print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')")
    status, out = run([sys.executable, "-c", code], env)
    if status != 0:
        raise SystemExit(f"gpu-check: torch does not import:\n{out}")
    lines = out.strip().splitlines()
    report.torch, report.gpu = lines[0], (lines[1] if len(lines) > 1 and lines[1] else None)


def bench_section(args: list[str], env: dict[str, str], timeout_s: float) -> str:
    # the tokenizer is synthetic: random weights make no words, and no hub is asked
    status, out = run([sys.executable, "-m", "csm_cli", "bench", "--random-weights", "--tokenizer", "/no-tokenizer",
                       "--json", "-q", *args], env, timeout_s)
    if status != 0:
        return f"failed (exit {status}):\n\n{fenced(out)}"
    return bench_markdown(json.loads(out[out.index("{"):]), args)


def bench_markdown(figures: dict[str, Any], args: list[str]) -> str:
    """The figures of `csm bench --json` as Markdown tables."""
    rows = ["| path | first audio p50 / p95 ms | per frame p50 / p95 ms | Mimi ms | RTF | underruns |",
            "|---|---|---|---|---|---|"]
    compare = figures["compare"] or {}
    for path in (figures, compare.get("eager")):
        if path:
            first, frame = path["time_to_first_audio_ms"], path["steady_ms_per_frame"]
            rows.append(f"| {path['path']} | {first['p50']:.0f} / {first['p95']:.0f} | {frame['p50']:.2f} / "
                        f"{frame['p95']:.2f} | {path['mimi_ms_per_frame']:.2f} | {path['realtime_factor']:.3f} | "
                        f"{path['underruns']} |")
    memory = figures["peak_gpu_memory_mib"]
    rows += ["", f"`csm bench --random-weights {' '.join(args)}`: {figures['device']}, {figures['dtype']}, "
             f"peak GPU memory {memory:,.0f} MiB" if memory else f"`{' '.join(args)}`: {figures['device']}"]
    if compare.get("speedup"):
        rows.append(f"; eager / graphs: first audio {compare['speedup']['time_to_first_audio']:.1f}x, per frame "
                    f"{compare['speedup']['steady_ms_per_frame']:.1f}x")
    if streams := figures.get("streams"):
        first, frame = streams["first_audio_ms"], streams["per_frame_ms"]
        rows += ["", "| streams | first audio p50 / p95 ms | per stream per frame p50 / p95 ms | frames/s, all | "
                 "vs one stream |", "|---|---|---|---|---|",
                 f"| {streams['streams']} | {first['p50']:.0f} / {first['p95']:.0f} | {frame['p50']:.1f} / "
                 f"{frame['p95']:.1f} | {streams['frames_per_second']:.1f} | {streams['ratio']:.2f}x |"]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="folder of wheels to install from")
    parser.add_argument("--target", type=Path, default=Path("/tmp/csm-gpu-check-site"),
                        help="where missing wheels are installed (put on PYTHONPATH for the steps)")
    parser.add_argument("--step-timeout", type=float, default=STEP_TIMEOUT_S,
                        help="seconds after which a step is killed and reported as such")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT),
                        help="folder the report gpu-check.md is written to [default: $OUT, else the repo root]")
    args = parser.parse_args()

    report = Report()
    args.out.mkdir(parents=True, exist_ok=True)
    written = args.out / "gpu-check.md"

    def add(title: str, body: str) -> None:
        """A section, written to the report at once: a run cut short still leaves what it found."""
        report.add(title, body)
        written.write_text(report.markdown())
        print(f"gpu-check: {title}: {body.splitlines()[0] if body else ''}", flush=True)

    install_missing(args.wheels, args.target, report)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(args.target), os.environ.get("PYTHONPATH")]))}
    probe(env, report)
    if report.gpu is None:
        for title in ("GPU tests", *BENCHES, "One frame under torch.profiler"):
            add(title, "skipped: no GPU")
    else:
        status, out = run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                           "tests/generation/test_graphs.py"], env, args.step_timeout)
        add("GPU tests", f"{'passed' if status == 0 else f'FAILED (exit {status})'}\n\n{fenced(out, 12000)}")
        for title, bench_args in BENCHES.items():
            add(title, bench_section(bench_args, env, args.step_timeout))
        status, out = run([sys.executable, str(ROOT / "scripts" / "profile_frame.py")], env, args.step_timeout)
        add("One frame under torch.profiler", out.strip() if status == 0 else f"failed:\n\n{fenced(out)}")
    print(f"gpu-check: wrote {written} ({report.gpu or 'no GPU'})")

if __name__ == "__main__":
    main()
