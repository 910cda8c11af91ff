#!/usr/bin/env python3
"""Writes tests/fixtures/variants/: tiny ContentV transformers of other shapes, plus reference forwards.

    .venv-ref/bin/python scripts/reference/make_variant_fixtures.py

The tiny model in assets/tiny-model has heads of 64 like ContentV-8B. A checkpoint may set any of the six arguments
`SD3Transformer3DModel` reads from config.json (in/out channels, patch size, layers, heads, head dim; spec 5.1). This
script builds a few variants that differ in exactly those (head dims 32, 16 and 8, patch 1, in 8 / out 4 channels,
a single context_pre_only block), with random weights re-initialised like make_fixtures.py does so that every
parameter matters. Each is saved in diffusers layout (config.json + diffusion_pytorch_model.safetensors, bf16 or
f32 on disk), loaded back with `from_pretrained(torch_dtype=float32)` and run on random inputs:

    tests/fixtures/variants/<name>/transformer/            the checkpoint
    tests/fixtures/variants/<name>/reference.safetensors   inputs, f32 outputs and intermediates, bf16 output
    tests/fixtures/variants/transformers.json              the variants' configs, tensor docs and sizes

The text context [B, 333, 4096] is not stored (5.5 MB per entry): it is uniform in [-2, 2) from a xorshift64
generator that the Rust test re-implements (`ctx_values` below; `input.*.ctx_seed` holds the seeds and
`input.*.ctx_head` the first values, to catch a mismatch). Everything runs on the CPU, one thread, fixed seeds:
two runs give byte-identical files. tests/fixtures/variants/ is shared with make_variant_encoders.py (its vae_*,
clip_* and t5_* folders): this script replaces only its own folders (VARIANTS) and transformers.json.
"""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import diffusers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from contentv_ref import SD3Transformer3DModel  # noqa: E402
from make_fixtures import FORMAT_VERSION, ROOT, err_stats, gen, reinit_, run_dit_with_taps  # noqa: E402

OUT = ROOT / "tests/fixtures/variants"
INDEX = OUT / "transformers.json"
TEXT_LEN = 333  # 77 CLIP + 256 T5 tokens, as the pipeline builds prompt_embeds

# name -> (constructor arguments, on-disk dtype, batch-1 latent [T, h, w], batch-2 latent [T, h, w], seed offset)
VARIANTS = {
    # one block only: it is the context_pre_only block; D = 96 (PE: 24 temporal, 2 x 36 spatial)
    "l1_h3_d32_bf16": (dict(in_channels=16, out_channels=16, patch_size=2, num_layers=1, num_attention_heads=3,
                            attention_head_dim=32), torch.bfloat16, (3, 6, 10), (1, 4, 8), 100),
    # patch 1, 8 channels in, 4 out; D = 16 (PE: 4 temporal = 2 sin + 2 cos, 2 x 6 spatial = 3 sin + 3 cos)
    "l3_h1_d16_p1_f32": (dict(in_channels=8, out_channels=4, patch_size=1, num_layers=3, num_attention_heads=1,
                              attention_head_dim=16), torch.float32, (5, 3, 7), (3, 4, 2), 200),
    # 4 heads of 8; D = 32 (PE: 8 temporal, 2 x 12 spatial = 6 sin + 6 cos)
    "l2_h4_d8_bf16": (dict(in_channels=16, out_channels=16, patch_size=2, num_layers=2, num_attention_heads=4,
                           attention_head_dim=8), torch.bfloat16, (3, 4, 12), (1, 6, 2), 300),
}


def ctx_values(n: int, seed: int, amp: float = 2.0) -> np.ndarray:
    """`n` f32 values uniform in [-amp, amp) from xorshift64 (13, 7, 17), state = (seed * 0x9E3779B97F4A7C15) | 1.
    Value = ((s >> 40) / 2^24 * 2 - 1) * amp: exact in f32 for amp a power of two. Mirrored in
    tests/parity_variants_transformer.rs."""
    mask = (1 << 64) - 1
    s = ((seed * 0x9E3779B97F4A7C15) & mask) | 1
    out = np.empty(n, dtype=np.uint32)
    for i in range(n):
        s ^= (s << 13) & mask
        s ^= s >> 7
        s ^= (s << 17) & mask
        out[i] = s >> 40
    v = out.astype(np.float32) / np.float32(1 << 24) * np.float32(2.0) - np.float32(1.0)
    return v * np.float32(amp)


def ctx_tensor(seeds) -> torch.Tensor:
    return torch.from_numpy(np.stack([ctx_values(TEXT_LEN * 4096, s).reshape(TEXT_LEN, 4096) for s in seeds]))


def build(name: str, args: dict, disk_dtype: torch.dtype, off: int) -> Path:
    d = OUT / name / "transformer"
    dit = SD3Transformer3DModel(**args).eval()
    reinit_(dit, gen(off))
    dit.to(disk_dtype).save_pretrained(d, safe_serialization=True)
    return d


def reference(name: str, args: dict, tdir: Path, lat1, lat2, off: int) -> dict:
    m32 = SD3Transformer3DModel.from_pretrained(tdir, torch_dtype=torch.float32).eval()
    m16 = SD3Transformer3DModel.from_pretrained(tdir, torch_dtype=torch.bfloat16).eval()
    cin, p = args["in_channels"], args["patch_size"]
    tensors, docs = {}, {}

    def add(k, t, doc, dtype=torch.float32):
        tensors[k] = t.detach().to(dtype).contiguous()
        docs[k] = doc

    stats = {}
    for tag, (t_, h, w), b, o in (("b1", lat1, 1, 1), ("b2", lat2, 2, 2)):
        x = torch.randn(b, cin, t_, h, w, generator=gen(off + 10 * o))
        ts = torch.rand(b, generator=gen(off + 10 * o + 1)) * 1000.0
        pooled = torch.randn(b, 2048, generator=gen(off + 10 * o + 2))
        seeds = [off * 100 + 10 * o + i for i in range(b)]
        ctx = ctx_tensor(seeds)
        add(f"input.{tag}.latent", x, f"latent [{b}, {cin}, {t_}, {h}, {w}] f32 (N(0, 1))")
        add(f"input.{tag}.timestep", ts, f"timesteps [{b}] f32, uniform in [0, 1000)")
        add(f"input.{tag}.pooled", pooled, f"pooled projections [{b}, 2048] f32 (N(0, 1))")
        add(f"input.{tag}.ctx_seed", torch.tensor(seeds, dtype=torch.int64),
            f"[{b}] xorshift seeds of the text context [{b}, {TEXT_LEN}, 4096] (uniform [-2, 2), not stored)",
            dtype=torch.int64)
        add(f"input.{tag}.ctx_head", ctx[:, 0, :16], f"[{b}, 16] first values of each context (generator check)")
        out, taps = run_dit_with_taps(m32, x, ts, ctx, pooled)
        assert out.shape == (b, args["out_channels"], t_, h, w), out.shape
        add(f"f32.{tag}.output", out, f"f32 forward [{b}, {args['out_channels']}, {t_}, {h}, {w}]")
        if tag == "b1":
            for k, v in taps.items():
                add(f"f32.{tag}.{k}", v, f"intermediate {k} of the f32 forward (names as in transformer.safetensors)")
            pe = m32.pos_embed.pos_table(t_, h // p, w // p).flatten(0, 1)
            add("pos_embed_table", pe, f"3D sin-cos table [{t_}*{h // p}*{w // p}, D] (f64 in the reference)")
        with torch.no_grad():
            o16 = m16(hidden_states=x.to(torch.bfloat16), timestep=ts, encoder_hidden_states=ctx.to(torch.bfloat16),
                      pooled_projections=pooled.to(torch.bfloat16), return_dict=False)[0]
        add(f"bf16.{tag}.output", o16, "the same forward with bf16 weights and activations", dtype=torch.bfloat16)
        stats[tag] = err_stats(out, o16.float())
        add(f"bf16.{tag}.max_abs_vs_f32", torch.tensor([stats[tag]["max_abs"]]),
            "[1] max |bf16.output - f32.output| of the reference itself (for bf16 tolerances)")
    path = OUT / name / "reference.safetensors"
    # one metadata key only: safetensors writes several in no fixed order (the files would not be reproducible)
    save_file(tensors, str(path), metadata={"format_version": str(FORMAT_VERSION)})
    return {"tensors": {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape), "doc": docs[k]}
                        for k, v in sorted(tensors.items())},
            "bf16_vs_f32": stats}


@torch.no_grad()
def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    diffusers.logging.set_verbosity_error()
    OUT.mkdir(parents=True, exist_ok=True)
    for name in VARIANTS:
        if (OUT / name).exists():
            shutil.rmtree(OUT / name)
    index = {"format_version": FORMAT_VERSION, "generator": "scripts/reference/make_variant_fixtures.py",
             "regenerate": ".venv-ref/bin/python scripts/reference/make_variant_fixtures.py",
             "text_len": TEXT_LEN, "ctx_generator": "xorshift64 uniform [-2, 2), see ctx_values", "variants": {}}
    for name, (args, disk_dtype, lat1, lat2, off) in VARIANTS.items():
        tdir = build(name, args, disk_dtype, off)
        info = reference(name, args, tdir, lat1, lat2, off)
        files = sorted(p for p in (OUT / name).rglob("*") if p.is_file())
        sizes = {str(p.relative_to(OUT / name)): p.stat().st_size for p in files}
        index["variants"][name] = {"config": args, "disk_dtype": str(disk_dtype).replace("torch.", ""),
                                   "bytes": sizes, **info}
        print(f"  {name}: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items())
              + f"; bf16 vs f32 max_abs {info['bf16_vs_f32']['b1']['max_abs']:.3e}")
    INDEX.write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    files = [INDEX] + sorted(p for name in VARIANTS for p in (OUT / name).rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    ckpt = sum(p.stat().st_size for p in files if p.parent.name == "transformer")
    digest = hashlib.sha256()
    for p in files:
        digest.update(str(p.relative_to(OUT)).encode() + p.read_bytes())
    print(f"tests/fixtures/variants (transformer variants): {total / 1e6:.2f} MB ({ckpt / 1e6:.2f} MB checkpoints), "
          f"sha256 {digest.hexdigest()}")


if __name__ == "__main__":
    main()
