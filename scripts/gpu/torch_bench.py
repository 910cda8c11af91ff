#!/usr/bin/env python3
"""PyTorch side-by-side for the GPU benches: the same shapes as benches/*.rs, on the same GPU, in
the same run, so docs/perf.md can put the engine's numbers next to what the Python stack does.

Sections (argv picks them; default all that import):
  ceilings  device-to-device copy, host-to-device from pinned memory, 8192^3 bf16 matmul
  sdpa      F.scaled_dot_product_attention, B = 1 and 2, 38 heads, S = 41,472 + 333, d = 64,
            per backend (flash, cuDNN, memory-efficient)
  conv      F.conv3d (cuDNN) at the shapes of bench-gpu_ops' conv3d rows (f32, TF32, bf16)
  block     diffusers JointTransformerBlock (dim 2432, 38 heads, rms q/k norm) in bf16 at the
            default size with CFG batch 2, plus the context_pre_only last block
  vae       diffusers AutoencoderKLWan decode, latents [1, 16, T, 54, 96] (125 frames of
            432x768 for T = 32), f32 and bf16: time and peak memory
  t5        transformers T5EncoderModel, T5-XXL shapes (24 layers, d 4096, 64 heads, ff 10240),
            random weights in bf16, 2 x 256 tokens

`block` and `vae` need diffusers 0.33.1 (the reference's version), which the GPU machine lacks:
scripts/gpu-check.sh carries its wheel (and huggingface_hub 0.30.2) and .gpu-check/run.sh puts
them first on PYTHONPATH for those sections only.

--quick: small shapes (a smoke test, also on CPU with --device cpu). Prints one line per
measurement; --md FILE also writes them as a markdown table.
"""

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ROWS = []


def report(what, ms, extra=""):
    line = f"{what:<62} {ms:>10.3f} ms  {extra}"
    print(line, flush=True)
    ROWS.append((what, f"{ms:.3f}", extra))


def timed(fn, iters, device):
    """Median ms of `iters` calls after one warm-up (CUDA events on the current stream)."""
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
        v = []
        for _ in range(max(1, iters)):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            v.append(a.elapsed_time(b))
        return statistics.median(v)
    v = []
    for _ in range(max(1, iters)):
        t = time.perf_counter()
        fn()
        v.append((time.perf_counter() - t) * 1e3)
    return statistics.median(v)


def ceilings(a):
    dev = a.device
    n = (64 << 20) if a.quick else (512 << 20)
    x = torch.randn(n, device=dev, dtype=torch.bfloat16)
    y = torch.empty_like(x)
    ms = timed(lambda: y.copy_(x), a.iters, dev)
    report("CEILING device-to-device copy (torch)", ms, f"{2 * x.nbytes / ms / 1e6:.1f} GB/s read+write")
    if dev == "cuda":
        h = torch.empty(x.nbytes, dtype=torch.uint8, pin_memory=True)
        yb = y.view(torch.uint8)
        ms = timed(lambda: yb.copy_(h, non_blocking=True), a.iters, dev)
        report("CEILING host-to-device from pinned memory (torch)", ms, f"{h.nbytes / ms / 1e6:.1f} GB/s")
    del x, y
    m = 1024 if a.quick else 8192
    p = torch.randn(m, m, device=dev, dtype=torch.bfloat16)
    q = torch.randn(m, m, device=dev, dtype=torch.bfloat16)
    ms = timed(lambda: p @ q, a.iters, dev)
    report(f"CEILING bf16 matmul {m}^3 (torch)", ms, f"{2 * m**3 / ms / 1e9:.4g} TFLOP/s")


def sdpa(a):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = a.device
    h, d = (4, 64) if a.quick else (38, 64)
    s = 1024 + 77 if a.quick else 41_472 + 333
    backends = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                ("mem-efficient", SDPBackend.EFFICIENT_ATTENTION)]
    if dev == "cpu":
        backends = [("math", SDPBackend.MATH)]
    for b in (1, 2):
        q, k, v = (torch.randn(b, h, s, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
        flops = 4.0 * b * h * s * s * d
        for name, be in backends:
            try:
                with sdpa_kernel([be]):
                    ms = timed(lambda: F.scaled_dot_product_attention(q, k, v), a.iters, dev)
                report(f"sdpa {name} B={b} H={h} S={s} d={d} bf16", ms, f"{flops / ms / 1e9:.4g} TFLOP/s")
            except Exception as e:  # a backend that does not support the shape or GPU
                print(f"sdpa {name} B={b}: not available ({str(e).splitlines()[0][:120]})", flush=True)
        del q, k, v


def conv(a):
    dev = a.device
    shapes = [(384, 384, 54, 96), (96, 96, 432, 768)]
    if a.quick:
        shapes = [(32, 32, 16, 24)]
    for ci, co, hh, ww in shapes:
        for name, dt, tf32 in [("f32", torch.float32, False), ("tf32", torch.float32, True),
                               ("bf16", torch.bfloat16, False)]:
            if dev == "cpu" and tf32:
                continue
            torch.backends.cudnn.allow_tf32 = tf32
            # 4 output frames after 2 frames of causal context, as the engine's conv3d row.
            x = torch.full((1, ci, 6, hh, ww), 0.1, device=dev, dtype=dt)
            w = torch.full((co, ci, 3, 3, 3), 0.01, device=dev, dtype=dt)
            ms = timed(lambda: F.conv3d(x, w, padding=(0, 1, 1)), a.iters, dev)
            flops = 2.0 * co * ci * 27 * 4 * hh * ww
            report(f"F.conv3d {ci}->{co} k3 {hh}x{ww} x4 frames {name}", ms, f"{flops / ms / 1e9:.4g} TFLOP/s")
            del x, w
    torch.backends.cudnn.allow_tf32 = True


def block(a):
    from diffusers.models.attention import JointTransformerBlock

    dev = a.device
    heads, hd = (4, 64) if a.quick else (38, 64)
    dim = heads * hd
    nv, nt, b = (256, 77, 2) if a.quick else (41_472, 333, 2)
    x = torch.randn(b, nv, dim, device=dev, dtype=torch.bfloat16)
    c = torch.randn(b, nt, dim, device=dev, dtype=torch.bfloat16)
    temb = torch.randn(b, dim, device=dev, dtype=torch.bfloat16)
    s = nv + nt
    for last in (False, True):
        blk = JointTransformerBlock(dim, heads, hd, context_pre_only=last, qk_norm="rms_norm")
        blk = blk.to(dev, torch.bfloat16).eval()
        # Linear FLOPs: video 24 D^2 per token (qkv 3, out 1, ff 8, x2), text the same unless last
        # (then only its qkv and modulation), attention 4 S^2 D (last: video query rows only).
        lin = 24.0 * nv * dim * dim + (24.0 if not last else 6.0) * nt * dim * dim
        att = 4.0 * (nv if last else s) * s * dim
        flops = b * (lin + att)
        with torch.no_grad():
            ms = timed(lambda: blk(x, c, temb), a.iters, dev)
        # diffusers computes the text query rows of the last block too: TFLOP/s here is of the
        # useful work (the engine's count), so both sides are rated on the same FLOPs.
        name = "last (context_pre_only)" if last else "joint"
        report(f"diffusers JointTransformerBlock {name} B={b} S={nv}+{nt} D={dim} bf16", ms,
               f"{flops / ms / 1e9:.4g} TFLOP/s, {flops / 1e12:.2f} TFLOP")
        del blk
        if dev == "cuda":
            torch.cuda.empty_cache()


def vae(a):
    from diffusers import AutoencoderKLWan

    dev = a.device
    t, h, w = (2, 8, 12) if a.quick else (a.vae_frames, 54, 96)
    z = torch.randn(1, 16, t, h, w, device=dev, dtype=torch.float32)
    # bf16 convolutions on a CPU take minutes even at the quick size: f32 only there.
    for dt in (torch.float32, torch.bfloat16) if dev == "cuda" else (torch.float32,):
        torch.manual_seed(0)
        m = AutoencoderKLWan().to(dev, dt).eval()
        if dev == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            m.decode(z[:, :, :1].to(dt))  # warm-up
            if dev == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            out = m.decode(z.to(dt)).sample
            if dev == "cuda":
                torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1e3
        peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else float("nan")
        report(f"diffusers AutoencoderKLWan.decode [1,16,{t},{h},{w}] -> {tuple(out.shape[2:])} {str(dt)[6:]}",
               ms, f"peak allocated {peak:.2f} GiB")
        del m, out


def t5(a):
    from transformers import T5Config, T5EncoderModel

    dev = a.device
    if a.quick:
        cfg = T5Config(d_model=256, d_kv=64, d_ff=512, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu")
    else:
        cfg = T5Config(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                       feed_forward_proj="gated-gelu", vocab_size=32128)
    with torch.device(dev):
        m = T5EncoderModel(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 256), device=dev)
    with torch.no_grad():
        ms = timed(lambda: m(input_ids=ids).last_hidden_state, a.iters, dev)
    report(f"transformers T5EncoderModel {cfg.num_layers} layers d={cfg.d_model} 2x256 tokens bf16", ms)


SECTIONS = {"ceilings": ceilings, "sdpa": sdpa, "conv": conv, "block": block, "vae": vae, "t5": t5}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sections", nargs="*", default=list(SECTIONS), help=" ".join(SECTIONS))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--vae-frames", type=int, default=32)
    p.add_argument("--md", help="also write the rows as a markdown table here")
    a = p.parse_args()
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {name}", flush=True)
    failed = []
    for s in a.sections:
        if s not in SECTIONS:
            sys.exit(f"unknown section {s!r}; one of {', '.join(SECTIONS)}")
        try:
            SECTIONS[s](a)
        except ImportError as e:
            print(f"SKIP {s}: {e}", flush=True)
        except Exception as e:
            print(f"FAILED {s}: {type(e).__name__}: {e}", flush=True)
            failed.append(s)
        if a.device == "cuda":
            torch.cuda.empty_cache()
    if a.md:
        with open(a.md, "a") as f:
            f.write(f"\n| what ({name}, torch {torch.__version__}) | ms | |\n|---|---|---|\n")
            for r in ROWS:
                f.write(f"| {r[0]} | {r[1]} | {r[2]} |\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
