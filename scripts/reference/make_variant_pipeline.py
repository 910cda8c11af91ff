#!/usr/bin/env python3
"""Writes tests/fixtures/pipeline_variants/*: whole-pipeline references for ContentV checkpoints whose transformer
and VAE configs differ from the tiny model's (another latent channel count, another patch size and head dim, another
temporal/spatial VAE factor, another scheduler shift).

    .venv-ref/bin/python scripts/reference/make_variant_pipeline.py

Each variant folder holds only what differs from assets/tiny-model (transformer/, vae/, scheduler/) plus
reference.safetensors; the test assembles a model folder from it and the tiny model's tokenizers and text encoders,
exactly as this script does before running the reference. Run after make_fixtures.py (it reads assets/tiny-model).
CPU only, one thread, fixed seeds: two runs give identical files.
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import diffusers  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from contentv_ref import (  # noqa: E402
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer3DModel,
    frames_to_uint8,
)
from make_fixtures import ENC_PROMPTS, err_stats, load_pipeline, reinit_  # noqa: E402

TINY = ROOT / "assets/tiny-model"
OUT = ROOT / "tests/fixtures/pipeline_variants"
SHARED = ["tokenizer", "tokenizer_2", "tokenizer_3", "text_encoder", "text_encoder_2", "text_encoder_3"]

VARIANTS = {
    # 8 latent channels, patch 1, 3 heads x 32, VAE 2x in time / 8x in space, shift 5, 2 steps, CFG 4.5.
    "pipeline_a": dict(
        dit=dict(in_channels=8, out_channels=8, patch_size=1, num_layers=2, num_attention_heads=3,
                 attention_head_dim=32),
        vae=dict(base_dim=4, z_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                 temperal_downsample=[False, True, False], dropout=0.0),
        shift=5.0, frames=7, height=24, width=40, steps=2, guidance=4.5, seed=7,
    ),
    # 16 channels, patch 2, 1 head x 16 (3 layers), VAE 4x in time / 16x in space, no CFG (guidance 1).
    "pipeline_b": dict(
        dit=dict(in_channels=16, out_channels=16, patch_size=2, num_layers=3, num_attention_heads=1,
                 attention_head_dim=16),
        vae=dict(base_dim=4, z_dim=16, dim_mult=[1, 1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                 temperal_downsample=[True, False, True, False], dropout=0.0),
        shift=3.0, frames=9, height=32, width=64, steps=2, guidance=1.0, seed=8,
    ),
}


def build(name: str, v: dict, vdir: Path):
    g = torch.Generator().manual_seed(1000 + sum(map(ord, name)))
    dit = SD3Transformer3DModel(**v["dit"]).eval()
    reinit_(dit, g)
    dit.to(torch.bfloat16).save_pretrained(vdir / "transformer", safe_serialization=True)
    z = v["vae"]["z_dim"]
    mean = (0.3 * torch.randn(z, generator=g)).tolist()
    std = (1.0 + 0.5 * torch.rand(z, generator=g)).tolist()
    vae = AutoencoderKLWan(**v["vae"], latents_mean=mean, latents_std=std).eval()
    reinit_(vae, g, gains={"decoder.conv_out": 0.5})
    vae.to(torch.float32).save_pretrained(vdir / "vae", safe_serialization=True)
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=v["shift"]).save_pretrained(vdir / "scheduler")


def assemble(vdir: Path, model: Path):
    for sub in SHARED:
        shutil.copytree(TINY / sub, model / sub)
    for sub in ("transformer", "vae", "scheduler"):
        shutil.copytree(vdir / sub, model / sub)
    shutil.copy(TINY / "model_index.json", model / "model_index.json")


def reference(name: str, v: dict, vdir: Path):
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        assemble(vdir, model)
        pipes = {"f32": load_pipeline(model, torch.float32), "bf16": load_pipeline(model, torch.bfloat16)}
        tf = pipes["f32"].vae_scale_factor_temporal
        sf = pipes["f32"].vae_scale_factor
        shape = (1, v["dit"]["in_channels"], (v["frames"] - 1) // tf + 1, v["height"] // sf, v["width"] // sf)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(v["seed"]), dtype=torch.bfloat16)
        t = {"noise": noise.float()}
        recs = {}
        for tag, pipe in pipes.items():
            dt = torch.float32 if tag == "f32" else torch.bfloat16
            rec = {}
            frames = pipe.generate(ENC_PROMPTS[0], ENC_PROMPTS[1], noise.to(dt), v["steps"], v["guidance"], 256,
                                   record=rec)
            for i in range(v["steps"]):
                t[f"{tag}.step{i}.latents"] = rec[f"step{i}.latents"].float()
                t[f"{tag}.step{i}.v"] = rec[f"step{i}.v"].float()
            t[f"{tag}.video"] = rec["video"].float()
            t[f"{tag}.frames_u8"] = torch.from_numpy(frames_to_uint8(frames)[0].copy())
            recs[tag] = rec
        t["timesteps"] = recs["f32"]["timesteps"].float()
        last = f"step{v['steps'] - 1}.latents"
        meta = {
            "dit": v["dit"], "vae": v["vae"], "shift": v["shift"], "frames": v["frames"], "height": v["height"],
            "width": v["width"], "steps": v["steps"], "guidance": v["guidance"], "prompt": ENC_PROMPTS[0],
            "negative_prompt": ENC_PROMPTS[1], "time_factor": tf, "spatial_factor": sf,
            "bf16_vs_f32": {"latents": err_stats(recs["f32"][last], recs["bf16"][last]),
                            "video": err_stats(recs["f32"]["video"], recs["bf16"]["video"])},
        }
        save_file({k: x.contiguous() for k, x in t.items()}, str(vdir / "reference.safetensors"),
                  metadata={"config": json.dumps(meta)})
        print(f"  {name}: latents {list(shape)}, frames {list(t['f32.frames_u8'].shape)}")


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    diffusers.logging.set_verbosity_error()
    for name, v in VARIANTS.items():
        vdir = OUT / name
        if vdir.exists():
            shutil.rmtree(vdir)
        vdir.mkdir(parents=True)
        build(name, v, vdir)
        reference(name, v, vdir)


if __name__ == "__main__":
    main()
