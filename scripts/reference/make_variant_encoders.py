#!/usr/bin/env python3
"""Writes tests/fixtures/variants/{vae_*,clip_*,t5_*}/: tiny Wan VAEs, CLIP text encoders and T5 encoders of other
architectures than assets/tiny-model, plus f32 reference outputs.

    .venv-ref/bin/python scripts/reference/make_variant_encoders.py

The engine's loaders must read every architecture parameter from config.json (or the weight shapes), not only the ones
the tiny model happens to use. Each variant changes several of them at once (see VARIANTS below):

* VAE (`AutoencoderKLWan`): base_dim, z_dim, dim_mult (length 2, 3 and 4, non-doubling ladders), num_res_blocks 1-3,
  temperal_downsample patterns ([T, F], [T, F, T], [F]: 2d and 3d upsamplers anywhere, none at all), attn_scales
  (encoder-only in diffusers), latents_mean / latents_std.
* CLIP (`CLIPTextModelWithProjection`): hidden size, heads (head dims 8 and 5), 1 or 3 layers (with 1 layer the
  penultimate hidden state is the embedding output), intermediate size, hidden_act gelu_new / relu, layer_norm_eps,
  projection_dim, max_position_embeddings, vocab size, and the two pooled-token rules: eos_token_id 2 (legacy:
  argmax of the ids) and a real eos id (first occurrence; position 0 when absent).
* T5 (`T5EncoderModel`): d_model, d_kv with heads * d_kv != d_model, d_ff, layers, heads, relative attention buckets /
  max distance (16 / 20 and 40 / 60), feed_forward_proj "relu" (non-gated, `wi`) and "gated-silu", layer_norm_epsilon,
  vocab size; sequences longer than max_distance so that the logarithmic buckets are used.

Weights are random and re-initialised like make_fixtures.py does (`reinit_`), so that every parameter matters. Each
variant is saved in diffusers / transformers layout (config.json + safetensors, f32 or bf16 on disk), loaded back
with `from_pretrained(torch_dtype=float32)`, and run in f32:

    tests/fixtures/variants/<name>/{vae,text_encoder,text_encoder_3}/   the checkpoint
    tests/fixtures/variants/<name>/reference.safetensors               inputs and f32 outputs
    tests/fixtures/variants/<name>/info.json                           config, tensor docs, sizes

CPU only, one thread, fixed seeds: two runs give byte-identical files. This script writes only the directories of
VARIANTS (names starting with vae_, clip_, t5_); make_variant_fixtures.py owns the transformer variants.
Tested by tests/parity_variants_encoders.rs.
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
import transformers  # noqa: E402
from diffusers import AutoencoderKLWan  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel  # noqa: E402
from transformers.models.t5.modeling_t5 import T5Attention  # noqa: E402

from make_fixtures import FORMAT_VERSION, ROOT, gen, reinit_  # noqa: E402

OUT = ROOT / "tests/fixtures/variants"

# name -> dict(kind, config, disk dtype, inputs, seed offset)
VARIANTS = {
    # 3 levels (spatial x4); up block 0 upsample2d, up block 1 upsample3d (reversed [T, F]); one resnet + 1 per
    # block; attn_scales only adds encoder attention. Output frames 1 + 2 (T - 1).
    "vae_b8_z4_m122_r1_tTF": dict(
        kind="vae", off=500, dtype=torch.float32,
        config=dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[0.5],
                    temperal_downsample=[True, False], dropout=0.0,
                    latents_mean=[0.3, -0.5, 0.1, 0.8], latents_std=[1.7, 0.6, 2.2, 1.1]),
        latents=[(1, 4, 5, 6)]),  # [B, T, h, w]
    # 4 levels (x8) with a non-doubling ladder [1, 1, 2, 4]; 3d, 2d, 3d upsamplers (reversed [T, F, T]); 3 resnets
    # per level + 1. Output frames 1 + 4 (T - 1). Batch 2.
    "vae_b4_z6_m1124_r3_tTFT": dict(
        kind="vae", off=510, dtype=torch.float32,
        config=dict(base_dim=4, z_dim=6, dim_mult=[1, 1, 2, 4], num_res_blocks=3, attn_scales=[],
                    temperal_downsample=[True, False, True], dropout=0.0,
                    latents_mean=[-0.2, 0.4, 0.0, 1.3, -0.9, 0.25], latents_std=[0.8, 1.9, 1.2, 0.5, 2.4, 1.0]),
        latents=[(2, 3, 3, 4)]),
    # 2 levels (x2), odd channel counts (18 -> upsampler 9 -> 12), no temporal upsampling: output frames = T.
    "vae_b6_z3_m23_r2_tF": dict(
        kind="vae", off=520, dtype=torch.float32,
        config=dict(base_dim=6, z_dim=3, dim_mult=[2, 3], num_res_blocks=2, attn_scales=[],
                    temperal_downsample=[False], dropout=0.0,
                    latents_mean=[0.5, -1.0, 0.2], latents_std=[1.5, 0.7, 2.0]),
        latents=[(1, 3, 5, 4)]),
    # legacy eos_token_id 2: the pooled token is the first position of the highest id
    "clip_h24_a3_l3_gelunew_eos2": dict(
        kind="clip", off=530, dtype=torch.bfloat16,
        config=dict(vocab_size=512, hidden_size=24, num_attention_heads=3, num_hidden_layers=3, intermediate_size=40,
                    hidden_act="gelu_new", layer_norm_eps=1e-3, projection_dim=12, max_position_embeddings=16,
                    attention_dropout=0.0, initializer_range=0.02, initializer_factor=1.0, pad_token_id=1,
                    bos_token_id=0, eos_token_id=2),
        seq=[16, 9]),  # batches of 4 rows each, of these lengths
    # one layer (penultimate = embeddings), 4 heads of 5, relu, real eos id 257 (first occurrence, 0 if absent)
    "clip_h20_a4_l1_relu_eos257": dict(
        kind="clip", off=540, dtype=torch.float32,
        config=dict(vocab_size=300, hidden_size=20, num_attention_heads=4, num_hidden_layers=1, intermediate_size=36,
                    hidden_act="relu", layer_norm_eps=1e-2, projection_dim=7, max_position_embeddings=77,
                    attention_dropout=0.0, initializer_range=0.02, initializer_factor=1.0, pad_token_id=1,
                    bos_token_id=256, eos_token_id=257),
        seq=[77, 12]),
    # T5 v1.0 style: non-gated relu FFN (wi, wo); 3 heads x 10 = 30 != d_model 48; 16 buckets up to distance 20
    "t5_d48_kv10_h3_relu_b16": dict(
        kind="t5", off=550, dtype=torch.float32,
        config=dict(vocab_size=100, d_model=48, d_kv=10, num_heads=3, d_ff=40, num_layers=3, num_decoder_layers=3,
                    relative_attention_num_buckets=16, relative_attention_max_distance=20, dropout_rate=0.1,
                    layer_norm_epsilon=1e-5, feed_forward_proj="relu", is_encoder_decoder=True, use_cache=True,
                    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False,
                    classifier_dropout=0.0, initializer_factor=1.0),
        seq=[40, 7]),
    # gated silu; 6 heads x 8 = 48 > d_model 32; 40 buckets up to 60 (not a power of two)
    "t5_d32_kv8_h6_gsilu_b40": dict(
        kind="t5", off=560, dtype=torch.bfloat16,
        config=dict(vocab_size=64, d_model=32, d_kv=8, num_heads=6, d_ff=24, num_layers=2, num_decoder_layers=2,
                    relative_attention_num_buckets=40, relative_attention_max_distance=60, dropout_rate=0.1,
                    layer_norm_epsilon=1e-6, feed_forward_proj="gated-silu", is_encoder_decoder=True, use_cache=True,
                    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False,
                    classifier_dropout=0.0, initializer_factor=1.0),
        seq=[90, 5]),
}

BUCKET_RANGE = 300  # T5 bucket tables for relative positions -300..300


class Ref:
    def __init__(self):
        self.tensors, self.docs = {}, {}

    def add(self, k, t, doc, dtype=torch.float32):
        assert k not in self.tensors, k
        self.tensors[k] = t.detach().to(dtype).contiguous()
        self.docs[k] = doc

    def save(self, path: Path) -> dict:
        # one metadata key only: safetensors writes several in no fixed order (the files would not be reproducible)
        save_file(self.tensors, str(path), metadata={"format_version": str(FORMAT_VERSION)})
        return {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape), "doc": self.docs[k]}
                for k, v in sorted(self.tensors.items())}


# ----------------------------------------------------------------------------------------------------------------
def vae_variant(name: str, v: dict, ref: Ref):
    d = OUT / name / "vae"
    m = AutoencoderKLWan(**v["config"]).eval()
    reinit_(m, gen(v["off"]), gains={"decoder.conv_out": 0.5})
    m.to(v["dtype"]).save_pretrained(d, safe_serialization=True)
    m = AutoencoderKLWan.from_pretrained(d, torch_dtype=torch.float32).eval()
    cfg = m.config
    z_dim = cfg.z_dim
    mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, z_dim, 1, 1, 1)
    std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, z_dim, 1, 1, 1)
    n_up = len(cfg.dim_mult) - 1
    t_up = sum(bool(b) for b in cfg.temperal_downsample[::-1][:n_up])
    for i, (b, t, h, w) in enumerate(v["latents"]):
        x = torch.randn(b, z_dim, t, h, w, generator=gen(v["off"] + 1 + i))
        # the pipeline's de-normalisation: latents / (1 / std) + mean
        z = x / (1.0 / std) + mean
        y = m.decode(z, return_dict=False)[0]
        frames = 1 + 2**t_up * (t - 1)
        assert y.shape == (b, 3, frames, h * 2**n_up, w * 2**n_up), (y.shape, frames)
        ref.add(f"l{i}.latent", x, f"DiT-space latent [{b}, {z_dim}, {t}, {h}, {w}] (N(0, 1))")
        ref.add(f"l{i}.latent_denorm", z, "latent / (1 / latents_std) + latents_mean: the input of vae.decode")
        ref.add(f"f32.l{i}.video", y, f"vae.decode output {list(y.shape)} (clamped), f32; frames 1 + {2**t_up}(T-1)")


def clip_rows(v: dict, s: int, g: torch.Generator) -> torch.Tensor:
    """4 rows of length s: BOS + random ids + EOS + padding in various forms, so that both pooled-token rules are
    exercised (EOS at different positions, repeated, absent; a random id larger than the EOS id)."""
    c = v["config"]
    vocab, bos, eos, pad = c["vocab_size"], c["bos_token_id"], c["eos_token_id"], c["pad_token_id"]
    rows = []
    for r in range(4):
        ids = torch.randint(3, vocab, (s,), generator=g)
        if eos != 2:
            ids[ids == eos] = 3  # only the EOS we place below
        ids[0] = bos
        n = [s - 1, max(2, s // 2), max(1, s // 3), s - 2][r]  # position of the (first) EOS
        if r == 3 and eos != 2:
            ids[1:] = torch.where(ids[1:] == eos, torch.tensor(3), ids[1:])  # row without any EOS
        else:
            ids[n] = eos
            ids[n + 1:] = pad if r != 1 else eos  # row 1: padded with EOS (repeated EOS)
        rows.append(ids)
    return torch.stack(rows)


def pooled_position(ids: torch.Tensor, eos: int) -> torch.Tensor:
    # transformers CLIPTextTransformer.forward
    if eos == 2:
        return ids.to(torch.int).argmax(dim=-1)
    return (ids.to(torch.int) == eos).int().argmax(dim=-1)


def clip_variant(name: str, v: dict, ref: Ref):
    d = OUT / name / "text_encoder"
    config = CLIPTextConfig(**v["config"])
    config.architectures = ["CLIPTextModelWithProjection"]
    m = CLIPTextModelWithProjection(config).eval()
    reinit_(m, gen(v["off"]), emb_std=0.5)
    m.to(v["dtype"]).save_pretrained(d, safe_serialization=True)
    m = CLIPTextModelWithProjection.from_pretrained(d, torch_dtype=torch.float32).eval()
    for i, s in enumerate(v["seq"]):
        ids = clip_rows(v, s, gen(v["off"] + 1 + i))
        # batch 1 per row, like StableDiffusion3Pipeline._get_clip_prompt_embeds
        outs = [m(ids[j : j + 1], output_hidden_states=True) for j in range(ids.shape[0])]
        ref.add(f"s{i}.input_ids", ids, f"token ids [4, {s}]", dtype=torch.int64)
        ref.add(f"s{i}.pooled_index", pooled_position(ids, config.eos_token_id),
                "[4] position of the pooled token (transformers' rule for this eos_token_id)", dtype=torch.int64)
        ref.add(f"f32.s{i}.hidden_penultimate", torch.cat([o.hidden_states[-2] for o in outs]),
                f"hidden_states[-2] (SD3's prompt embeds; no final LN) [4, {s}, {config.hidden_size}]")
        ref.add(f"f32.s{i}.text_embeds", torch.cat([o.text_embeds for o in outs]),
                f"text_embeds (final LN at the pooled token @ text_projection) [4, {config.projection_dim}]")


def t5_variant(name: str, v: dict, ref: Ref):
    d = OUT / name / "text_encoder_3"
    config = T5Config(**v["config"])
    config.architectures = ["T5EncoderModel"]
    m = T5EncoderModel(config).eval()
    # as make_fixtures.py: q/k gain 0.5 (T5 scores are not scaled by 1/sqrt(d)), relative attention bias ~ N(0, 0.5)
    reinit_(m, gen(v["off"]), emb_std=1.0, gains={"SelfAttention.q": 0.5, "SelfAttention.k": 0.5})
    with torch.no_grad():
        rab = m.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
        rab.copy_(0.5 * torch.randn(rab.shape, generator=gen(v["off"] + 9)))
    m.to(v["dtype"]).save_pretrained(d, safe_serialization=True)
    m = T5EncoderModel.from_pretrained(d, torch_dtype=torch.float32).eval()
    assert not m.training
    for i, s in enumerate(v["seq"]):
        ids = torch.randint(2, config.vocab_size, (2, s), generator=gen(v["off"] + 1 + i))
        ids[:, -1] = config.eos_token_id
        ids[1, s // 2 + 1:] = config.pad_token_id  # second row: EOS in the middle, then padding (attended, no mask)
        ids[1, s // 2] = config.eos_token_id
        hid = torch.cat([m(ids[j : j + 1]).last_hidden_state for j in range(2)])
        ref.add(f"s{i}.input_ids", ids, f"token ids [2, {s}]", dtype=torch.int64)
        ref.add(f"f32.s{i}.last_hidden_state", hid, f"last_hidden_state (after the final RMSNorm) [2, {s}, d_model]")
    rel = torch.arange(-BUCKET_RANGE, BUCKET_RANGE + 1)
    buckets = T5Attention._relative_position_bucket(rel, bidirectional=True,
                                                    num_buckets=config.relative_attention_num_buckets,
                                                    max_distance=config.relative_attention_max_distance)
    ref.add("buckets", buckets, f"bidirectional relative position bucket of rel = key - query for rel = "
            f"-{BUCKET_RANGE}..{BUCKET_RANGE}", dtype=torch.int64)


@torch.no_grad()
def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    diffusers.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    OUT.mkdir(parents=True, exist_ok=True)
    build = {"vae": vae_variant, "clip": clip_variant, "t5": t5_variant}
    digest = hashlib.sha256()
    total = 0
    for name, v in VARIANTS.items():
        assert name.split("_")[0] == v["kind"], name
        if (OUT / name).exists():
            shutil.rmtree(OUT / name)
        (OUT / name).mkdir(parents=True)
        ref = Ref()
        build[v["kind"]](name, v, ref)
        docs = ref.save(OUT / name / "reference.safetensors")
        files = sorted(p for p in (OUT / name).rglob("*") if p.is_file())
        sizes = {str(p.relative_to(OUT / name)): p.stat().st_size for p in files}
        info = {"format_version": FORMAT_VERSION, "generator": "scripts/reference/make_variant_encoders.py",
                "kind": v["kind"], "config": v["config"], "disk_dtype": str(v["dtype"]).replace("torch.", ""),
                "bytes": sizes, "tensors": docs}
        (OUT / name / "info.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        for p in sorted((OUT / name).rglob("*")):
            if p.is_file():
                digest.update(str(p.relative_to(OUT)).encode() + p.read_bytes())
                total += p.stat().st_size
        print(f"  {name}: " + ", ".join(f"{k} {b / 1e3:.1f} kB" for k, b in sizes.items()))
    print(f"encoder variants: {total / 1e6:.2f} MB, sha256 {digest.hexdigest()}")


if __name__ == "__main__":
    main()
