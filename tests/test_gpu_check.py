"""`make gpu-check` on a machine without a GPU: the wheels it carries installed where missing, the GPU steps
reported as skipped, the report written."""

import base64
import hashlib
import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from test_bench import report_of_every_kind

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, `make gpu-check` itself runs the steps")


def make_wheel(folder: Path, name: str, version: str) -> Path:
    """A real, minimal pure-Python wheel of distribution `name` holding module `name`."""
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                             "Tag: py3-none-any\n",
    }
    record = f"{name}-{version}.dist-info/RECORD"
    lines = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        lines.append(f"{path},sha256={digest},{len(text.encode())}")
    files[record] = "\n".join([*lines, f"{record},,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def test_without_a_gpu_it_installs_the_missing_wheels_and_reports_no_gpu(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "csm_probe_package", "0.1")
    make_wheel(wheels, "numpy", "0.0.1")  # installed already: left alone
    site, out = tmp_path / "site", tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--wheels", str(wheels),
                           "--target", str(site), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (site / "csm_probe_package" / "__init__.py").is_file() and not (site / "numpy").exists()
    report = (out / "gpu-check.md").read_text()
    assert report.startswith("# csm gpu-check: no GPU")
    assert f"torch {torch.__version__}" in report
    assert "installed from wheels: csm_probe_package 0.1" in report and "already present: numpy " in report
    for step in ("GPU tests", "bench, no context", "bench, 20 s of context", "bench, 8 streams in one engine",
                 "bench, 32 streams in one engine", "One frame under torch.profiler"):
        assert f"## {step}\n\nskipped: no GPU" in report


def test_the_report_shows_the_bench_figures_of_every_kind():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    figures = json.loads(json.dumps(report_of_every_kind().to_dict()))
    text = gpu_check.bench_markdown(figures, ["--streams", "4"])
    for expected in ("| cuda-graphs | 40 / 50 | 4.00 / 5.00 |", "| eager | 400 / 500 | 40.00 / 50.00 |",
                     "peak GPU memory 5,000 MiB", "first audio 10.0x, per frame 10.0x",
                     "| 4 | 300 / 520 | 120.0 / 130.0 | 33.3 | 3.33x |"):
        assert expected in text, text
