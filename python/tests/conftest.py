"""Shared fixtures of the Python package's tests (scripts/test.sh runs them after the Rust
suite, on the CPU and on the emulated GPU: LD_LIBRARY_PATH=$(scripts/emu-device.sh))."""
import json
import os
import struct
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

import contentv

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "assets" / "tiny-model"
# The emulated-GPU pass (scripts/test-python.sh: CONTENTV_PY_EMU=1, only the tests marked
# `emu`): the emulator runs the real kernels on the CPU, slowly, so its videos are smaller.
EMU = os.environ.get("CONTENTV_PY_EMU") == "1"
# The same small video everywhere (valid for the tiny model and both fixture layouts).
SMALL = (
    dict(num_frames=1, height=16, width=16, num_inference_steps=2)
    if EMU
    else dict(num_frames=5, height=32, width=64, num_inference_steps=2)
)


def cli_size_args(size=None):
    """SMALL as `contentv generate` flags."""
    s = size or SMALL
    return ["--frames", str(s["num_frames"]), "--height", str(s["height"]), "--width", str(s["width"]),
            "--steps", str(s["num_inference_steps"])]


def cli_bin() -> Path:
    b = Path(os.environ.get("CONTENTV_BIN", ROOT / "target" / "release" / "contentv"))
    if not b.is_file():
        pytest.fail(f"the contentv binary {b} is missing: cargo build --release (or set CONTENTV_BIN)")
    return b


def run_cli(*args: str) -> subprocess.CompletedProcess:
    p = subprocess.run([str(cli_bin()), *args], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"contentv {' '.join(args)} failed ({p.returncode}):\n{p.stderr}"
    return p


def read_safetensors(path: Path) -> dict:
    """{name: array} of a safetensors file (F32 / U8 tensors), read without the engine."""
    b = path.read_bytes()
    (n,) = struct.unpack("<Q", b[:8])
    header = json.loads(b[8 : 8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        dt = {"F32": np.float32, "U8": np.uint8}[v["dtype"]]
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(b[8 + n + s : 8 + n + e], dtype=dt).reshape(v["shape"])
    return out


def fixture_model(tmp: Path, name: str = "pipeline_a") -> Path:
    """A model folder of the fixture layout (tests/parity_variants_pipeline.rs does the same):
    the tiny model's tokenizers and text encoders plus the variant's transformer, VAE and
    scheduler (other latent channels, patch size, VAE factors and shift)."""
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    var = ROOT / "tests" / "fixtures" / "pipeline_variants" / name
    for sub in ["tokenizer", "tokenizer_2", "tokenizer_3", "text_encoder", "text_encoder_2", "text_encoder_3", "model_index.json"]:
        if not (d / sub).exists():
            (d / sub).symlink_to(TINY / sub)
    for sub in ["transformer", "vae", "scheduler"]:
        if not (d / sub).exists():
            (d / sub).symlink_to(var / sub)
    return d


@pytest.fixture(scope="session")
def tiny_pipe():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = contentv.ContentVPipeline.from_pretrained()
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory):
    return fixture_model(tmp_path_factory.mktemp("fixture-model"))


@pytest.fixture(scope="session")
def fixture_pipe(fixture_dir):
    p = contentv.ContentVPipeline.from_pretrained(str(fixture_dir))
    p.set_progress_bar_config(disable=True)
    return p
