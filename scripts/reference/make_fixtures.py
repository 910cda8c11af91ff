#!/usr/bin/env python3
"""Regenerates assets/tiny-model/ and tests/fixtures/ from scratch, deterministically.

    scripts/reference/setup.sh && .venv-ref/bin/python scripts/reference/make_fixtures.py

1. Builds a randomly initialised TINY ContentV model with exactly the classes, folder layout, file names and
   state-dict key names of the real ByteDance/ContentV-8B checkpoint (assets/tiny-model/).
2. Loads it back from disk the way the real pipeline does and writes reference tensors (tests/fixtures/*.safetensors)
   plus tests/fixtures/manifest.json that describes every tensor.

Everything runs on the CPU with fixed seeds and one thread. See scripts/reference/README.md.
"""

import argparse
import gzip
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.dont_write_bytecode = True  # no __pycache__ next to contentv_ref.py in the work tree
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import diffusers  # noqa: E402
import safetensors  # noqa: E402
import sentencepiece as spm  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPTokenizerFast,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from contentv_ref import (  # noqa: E402
    AutoencoderKLWan,
    ContentVPipeline,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer3DModel,
    frames_to_uint8,
)

FORMAT_VERSION = 1
SEED = 20250607  # base seed; every component derives its own generator from it
NOISE_SEED = 42  # like demo.py: torch.Generator().manual_seed(42) on the CPU

# ----------------------------------------------------------------------------------------------------------------
# Tiny configuration. Fixed by ContentV's transformer class: joint_attention_dim 4096 (so T5 d_model = 4096) and
# pooled_projection_dim 2048 (so the two CLIP projection dims add up to 2048).
# ----------------------------------------------------------------------------------------------------------------
# Sizes are bounded by the 25 MB budget for assets/tiny-model + tests/fixtures: the 49408-token CLIP embeddings and
# everything that is 4096 wide (T5) dominate, so those widths are small.
CLIP_L = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=1, projection_dim=1024,
              hidden_act="quick_gelu")
CLIP_G = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, projection_dim=1024,
              hidden_act="gelu")
T5_VOCAB = 128  # sentencepiece unigram model trained below (T5 ids: pad 0, eos 1, unk 2)
T5 = dict(d_model=4096, d_kv=16, d_ff=16, num_layers=2, num_heads=2)
DIT = dict(in_channels=16, out_channels=16, patch_size=2, num_layers=2, num_attention_heads=2, attention_head_dim=64)
VAE = dict(base_dim=6, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
           temperal_downsample=[False, True, True], dropout=0.0)
SAVE_CLIP_TOKENIZER_JSON = False  # the real SD3.5/ContentV tokenizer/ and tokenizer_2/ folders have no tokenizer.json

# Prompts for the tokenizer fixture (index = tensor name suffix)
DEMO_PROMPT = ("A young musician sits on a rustic wooden stool in a cozy, dimly lit room, strumming an acoustic guitar "
               "with a worn, sunburst finish.")
DEMO_NEGATIVE = ("overexposed, low quality, deformation, a poor composition, bad hands, bad teeth, bad eyes, bad limbs, "
                 "distortion")
LONG_PROMPT = " ".join([DEMO_PROMPT] * 4 + [
    "The camera slowly pans from left to right, revealing shelves of old vinyl records, a flickering candle, "
    "and rain streaking down a tall window while distant thunder rolls over the quiet, sleeping city."] * 2)
PROMPTS = [
    "",
    "a photo of a cat, 2 dogs!",
    DEMO_PROMPT,
    LONG_PROMPT,
    "Café déjà vu: naïve façade, Ærø & Straße — 東京の夜景 🌃🎸 ÜBER-cool résumé",
    "  Hello,\tworld!!  It's   a test...\n(new line) [brackets] {braces} \"quotes\" 'single' ~!@#$%^&*()_+ ",
    DEMO_NEGATIVE,
    "wow!!! ok! <|endoftext|> A.B.C. 3.14159 e-mail@example.com",
]
# Prompts for the text-encoder and pipeline fixtures: (positive, negative). "" = the default negative prompt.
ENC_PROMPTS = [DEMO_PROMPT, ""]

# Pipeline fixture: 32x48 pixels, 9 frames -> latent [1, 16, 3, 4, 6]
PIPE = dict(height=32, width=48, num_frames=9, steps=3, guidance_scale=6.0, max_sequence_length=256)

MANIFEST: dict = {"files": {}}


def gen(offset: int) -> torch.Generator:
    return torch.Generator().manual_seed(SEED + offset)


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
class Fixture:
    """Collects tensors for one safetensors file plus their descriptions for the manifest."""

    def __init__(self, name: str, description: str):
        self.name = name
        self.description = description
        self.tensors: dict = {}
        self.docs: dict = {}

    def add(self, key: str, t, doc: str, dtype=None):
        if isinstance(t, np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(t))
        t = t.detach().cpu()
        if dtype is not None:
            t = t.to(dtype)
        if key in self.tensors:
            raise KeyError(key)
        self.tensors[key] = t.contiguous()
        self.docs[key] = doc

    def save(self, out_dir: Path):
        path = out_dir / f"{self.name}.safetensors"
        save_file(self.tensors, str(path), metadata={"format_version": str(FORMAT_VERSION)})
        MANIFEST["files"][path.name] = {
            "description": self.description,
            "bytes": path.stat().st_size,
            "tensors": {
                k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape), "doc": self.docs[k]}
                for k, v in sorted(self.tensors.items())
            },
        }
        print(f"  wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1e6:.2f} MB, {len(self.tensors)} tensors)")


def err_stats(ref: torch.Tensor, got: torch.Tensor) -> dict:
    r = ref.double().flatten()
    g = got.double().flatten()
    d = (g - r).abs()
    cos = torch.nn.functional.cosine_similarity(r, g, dim=0).item()
    return {"max_abs": d.max().item(), "mean_abs": d.mean().item(), "ref_max_abs": r.abs().max().item(),
            "ref_rms": r.pow(2).mean().sqrt().item(), "cosine": cos}


def reinit_(model: torch.nn.Module, g: torch.Generator, emb_std: float = 0.5, gain: float = 1.0,
            bias_std: float = 0.05, norm_std: float = 0.1, gains: dict = None):
    """Re-initialises EVERY parameter with non-degenerate random values, so that every weight matters:
    matrices/convs N(0, gain/sqrt(fan_in)), embeddings N(0, emb_std), norm weights 1 + N(0, norm_std),
    biases N(0, bias_std). `gains` maps a substring of the parameter name to a gain override."""
    gains = gains or {}
    done = set()
    with torch.no_grad():
        for mname, mod in model.named_modules():
            cls = type(mod).__name__.lower()
            for pname, p in mod.named_parameters(recurse=False):
                if id(p) in done:
                    continue
                done.add(id(p))
                full = f"{mname}.{pname}" if mname else pname
                if "norm" in cls or pname == "gamma" or "layernorm" in cls:
                    if pname in ("weight", "gamma"):
                        v = 1.0 + norm_std * torch.randn(p.shape, generator=g)
                    else:
                        v = bias_std * torch.randn(p.shape, generator=g)
                elif isinstance(mod, torch.nn.Embedding):
                    v = emb_std * torch.randn(p.shape, generator=g)
                elif p.ndim >= 2:
                    fan_in = int(np.prod(p.shape[1:]))
                    gn = gain
                    for k, val in gains.items():
                        if k in full:
                            gn = val
                    v = gn / np.sqrt(fan_in) * torch.randn(p.shape, generator=g)
                else:
                    v = bias_std * torch.randn(p.shape, generator=g)
                p.copy_(v.to(p.dtype))
    n_all = len({id(p) for p in model.parameters()})
    assert len(done) == n_all, (len(done), n_all)


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(n) for n in cs]))


def find_input(env: str, default: Path) -> Path:
    p = Path(os.environ.get(env, default))
    if not p.is_file():
        sys.exit(f"missing {p}: run scripts/reference/setup.sh first (or set {env})")
    return p


# ----------------------------------------------------------------------------------------------------------------
# 1. tokenizers
# ----------------------------------------------------------------------------------------------------------------
def build_clip_tokenizers(model_dir: Path, tmp: Path):
    """OpenAI's CLIP BPE (49408 tokens) as SD3.5 ships it: tokenizer/ pads with <|endoftext|>, tokenizer_2/ with "!"."""
    bpe = find_input("CLIP_BPE", ROOT / ".venv-ref/open-clip-wheel/bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    encoder = {v: i for i, v in enumerate(vocab)}
    (tmp / "vocab.json").write_text(json.dumps(encoder, ensure_ascii=False))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    for sub, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        tok = CLIPTokenizer(
            vocab_file=str(tmp / "vocab.json"),
            merges_file=str(tmp / "merges.txt"),
            pad_token=pad,
            model_max_length=77,
        )
        tok.save_pretrained(model_dir / sub)
        if SAVE_CLIP_TOKENIZER_JSON:
            CLIPTokenizerFast.from_pretrained(model_dir / sub, from_slow=True).save_pretrained(model_dir / sub)
        for extra in ("added_tokens.json",):
            (model_dir / sub / extra).unlink(missing_ok=True)


def build_t5_tokenizer(model_dir: Path, tmp: Path):
    """T5-style sentencepiece unigram model (pad 0, eos 1, unk 2, no bos, nmt_nfkc) trained on the sentencepiece
    sdist's botchan.txt with a small vocabulary, so the 4096-wide T5 embedding stays small."""
    text = find_input("SPM_BOTCHAN", ROOT / ".venv-ref/spm-sdist/botchan.txt")
    shutil.copy(text, tmp / "botchan.txt")
    prefix = tmp / "spiece"
    cwd = os.getcwd()
    os.chdir(tmp)  # relative paths: the trainer spec stored in the model then does not depend on the temp dir
    try:
        spm.SentencePieceTrainer.train(
            input="botchan.txt", model_prefix="spiece", vocab_size=T5_VOCAB, model_type="unigram",
            character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
            pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", num_threads=1, shuffle_input_sentence=False,
            input_sentence_size=0, normalization_rule_name="nmt_nfkc", minloglevel=2,
        )
    finally:
        os.chdir(cwd)
    tok = T5TokenizerFast(vocab_file=str(prefix) + ".model", extra_ids=0, model_max_length=512,
                          legacy=True, from_slow=True)
    tok.save_pretrained(model_dir / "tokenizer_3")
    (model_dir / "tokenizer_3" / "added_tokens.json").unlink(missing_ok=True)
    return tok


# ----------------------------------------------------------------------------------------------------------------
# 2. models
# ----------------------------------------------------------------------------------------------------------------
def build_models(model_dir: Path):
    torch.manual_seed(SEED)
    common_clip = dict(vocab_size=49408, max_position_embeddings=77, layer_norm_eps=1e-5, attention_dropout=0.0,
                       initializer_range=0.02, initializer_factor=1.0, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    for i, (sub, cfg) in enumerate((("text_encoder", CLIP_L), ("text_encoder_2", CLIP_G))):
        config = CLIPTextConfig(**common_clip, **cfg)
        config.architectures = ["CLIPTextModelWithProjection"]
        m = CLIPTextModelWithProjection(config).eval()
        reinit_(m, gen(10 + i), emb_std=0.5)
        m.to(torch.bfloat16).save_pretrained(model_dir / sub, safe_serialization=True)

    t5cfg = T5Config(vocab_size=T5_VOCAB, **T5, num_decoder_layers=T5["num_layers"],
                     relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
                     layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", is_encoder_decoder=True, use_cache=True,
                     pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False,
                     classifier_dropout=0.0, initializer_factor=1.0)
    t5cfg.architectures = ["T5EncoderModel"]
    t5 = T5EncoderModel(t5cfg).eval()  # eval: dropout 0.1 would otherwise be active (spec pitfall 10)
    # q/k gain 0.5: T5 scores are not scaled by 1/sqrt(d); relative attention bias ~ N(0, 0.5)
    reinit_(t5, gen(12), emb_std=1.0, gains={"SelfAttention.q": 0.5, "SelfAttention.k": 0.5})
    with torch.no_grad():
        rab = t5.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
        rab.copy_(0.5 * torch.randn(rab.shape, generator=gen(13)))
    t5.to(torch.bfloat16).save_pretrained(model_dir / "text_encoder_3", safe_serialization=True)

    dit = SD3Transformer3DModel(**DIT).eval()
    reinit_(dit, gen(14))
    dit.to(torch.bfloat16).save_pretrained(model_dir / "transformer", safe_serialization=True)

    vae = AutoencoderKLWan(**VAE).eval()
    reinit_(vae, gen(15), gains={"decoder.conv_out": 0.5})
    vae.to(torch.float32).save_pretrained(model_dir / "vae", safe_serialization=True)

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sched.save_pretrained(model_dir / "scheduler")

    model_index = {
        "_class_name": "ContentVPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_3": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "tokenizer_3": ["transformers", "T5TokenizerFast"],
        "transformer": ["contentv_transformer", "SD3Transformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    (model_dir / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")
    (model_dir / "README.md").write_text(
        "# Tiny random ContentV model\n\n"
        "Randomly initialised, NOT trained: it produces noise. Same classes, folder layout, file names and weight names\n"
        "as the real ByteDance/ContentV-8B checkpoint, tiny sizes. Generated by scripts/reference/make_fixtures.py\n"
        "(do not edit by hand). Transformer and text encoders are stored in bf16, the VAE in f32, like the real one.\n"
        "tokenizer_3 is a small T5-style sentencepiece model trained on sentencepiece's botchan.txt test text\n"
        "(128 pieces; pad 0, eos 1, unk 2 as in T5), not T5's 32k vocabulary.\n"
    )


def load_pipeline(model_dir: Path, dtype: torch.dtype) -> ContentVPipeline:
    """Loads every component from disk like demo.py: VAE in f32, everything else in `dtype`."""
    kw = dict(torch_dtype=dtype)
    pipe = ContentVPipeline(
        transformer=SD3Transformer3DModel.from_pretrained(model_dir / "transformer", **kw),
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(model_dir / "scheduler"),
        vae=AutoencoderKLWan.from_pretrained(model_dir / "vae", torch_dtype=torch.float32),
        text_encoder=CLIPTextModelWithProjection.from_pretrained(model_dir / "text_encoder", **kw),
        tokenizer=CLIPTokenizer.from_pretrained(model_dir / "tokenizer"),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(model_dir / "text_encoder_2", **kw),
        tokenizer_2=CLIPTokenizer.from_pretrained(model_dir / "tokenizer_2"),
        text_encoder_3=T5EncoderModel.from_pretrained(model_dir / "text_encoder_3", **kw),
        tokenizer_3=T5TokenizerFast.from_pretrained(model_dir / "tokenizer_3"),
    )
    for m in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
        m.eval()
        assert not m.training
    return pipe


# ----------------------------------------------------------------------------------------------------------------
# 3. fixtures
# ----------------------------------------------------------------------------------------------------------------
def fixture_tokens(pipe: ContentVPipeline, model_dir: Path, out: Path):
    fx = Fixture("tokens", "Token ids of the three tokenizers (as the pipeline calls them) for MANIFEST.prompts.")
    toks = {"clip_l": (pipe.tokenizer, 77), "clip_g": (pipe.tokenizer_2, 77), "t5": (pipe.tokenizer_3, 256)}
    notes = {}
    fast = {
        "clip_l": CLIPTokenizerFast.from_pretrained(model_dir / "tokenizer", from_slow=True),
        "clip_g": CLIPTokenizerFast.from_pretrained(model_dir / "tokenizer_2", from_slow=True),
    }
    for i, p in enumerate(PROMPTS):
        for name, (tok, n) in toks.items():
            padded = tok(p, padding="max_length", max_length=n, truncation=True, add_special_tokens=True,
                         return_tensors="pt").input_ids[0]
            raw = tok(p, add_special_tokens=True).input_ids
            fx.add(f"{name}.p{i}.padded", padded.to(torch.int64),
                   f"{name} ids of prompts[{i}], padding='max_length', max_length={n}, truncation=True "
                   "(what encode_prompt feeds the encoder)")
            fx.add(f"{name}.p{i}.raw", torch.tensor(raw, dtype=torch.int64),
                   f"{name} ids of prompts[{i}] with special tokens, no padding, no truncation")
            if name in fast:
                fids = fast[name](p, add_special_tokens=True).input_ids
                if fids != raw:
                    notes.setdefault(name, []).append(
                        {"prompt_index": i, "slow_pipeline_ids": raw, "fast_tokenizer_ids": fids})
    tok3 = pipe.tokenizer_3
    MANIFEST["tokenizers"] = {
        "clip_l": {"pad_id": pipe.tokenizer.pad_token_id, "bos_id": pipe.tokenizer.bos_token_id,
                   "eos_id": pipe.tokenizer.eos_token_id, "class": type(pipe.tokenizer).__name__,
                   "model_max_length": pipe.tokenizer.model_max_length},
        "clip_g": {"pad_id": pipe.tokenizer_2.pad_token_id, "bos_id": pipe.tokenizer_2.bos_token_id,
                   "eos_id": pipe.tokenizer_2.eos_token_id, "class": type(pipe.tokenizer_2).__name__,
                   "model_max_length": pipe.tokenizer_2.model_max_length},
        "t5": {"pad_id": tok3.pad_token_id, "eos_id": tok3.eos_token_id, "unk_id": tok3.unk_token_id,
               "bos_id": tok3.bos_token_id, "vocab_size": len(tok3), "class": type(tok3).__name__},
        "ftfy_installed": importlib.util.find_spec("ftfy") is not None,
        "clip_slow_vs_fast_differences": notes,
    }
    fx.save(out)


def fixture_text_encoders(pipe32: ContentVPipeline, pipe16: ContentVPipeline, out: Path):
    fx = Fixture("text_encoders",
                 "Text conditioning for MANIFEST.encoder_prompts = [prompt, negative_prompt] (index 0 / 1), from the "
                 "tiny encoders loaded in f32 ('f32.*') and in bf16 ('bf16.*').")
    dev = torch.device("cpu")
    for tag, pipe in (("f32", pipe32), ("bf16", pipe16)):
        pe, npe, pooled, npooled = pipe.encode_prompt(
            prompt=ENC_PROMPTS[0], prompt_2=None, prompt_3=None, negative_prompt=ENC_PROMPTS[1],
            do_classifier_free_guidance=True, device=dev, max_sequence_length=256)
        embeds = torch.cat([pe, npe])  # [2, 333, 4096]
        pooled_all = torch.cat([pooled, npooled])  # [2, 2048]
        parts = {}
        for name, tok, enc in (("clip_l", pipe.tokenizer, pipe.text_encoder),
                               ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2)):
            # batch 1 per prompt, like encode_prompt (batched matmuls may round differently)
            ids = tok(ENC_PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            os_ = [enc(ids[j : j + 1], output_hidden_states=True) for j in range(len(ENC_PROMPTS))]
            parts[name] = (ids, torch.cat([o.hidden_states[-2] for o in os_]), torch.cat([o.text_embeds for o in os_]))
        ids3 = pipe.tokenizer_3(ENC_PROMPTS, padding="max_length", max_length=256, truncation=True,
                                add_special_tokens=True, return_tensors="pt").input_ids
        t5h = torch.cat([pipe.text_encoder_3(ids3[j : j + 1])[0] for j in range(len(ENC_PROMPTS))])
        # the assembly of encode_prompt, re-done by hand: must match exactly
        clip = torch.cat([parts["clip_l"][1], parts["clip_g"][1]], dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5h.shape[-1] - clip.shape[-1]))
        assert torch.equal(torch.cat([clip, t5h], dim=-2), embeds), "prompt_embeds assembly differs"
        pooled_parts = torch.cat([parts["clip_l"][2], parts["clip_g"][2]], dim=-1)
        assert torch.equal(pooled_parts, pooled_all), (pooled_parts - pooled_all).abs().max()
        if tag == "f32":
            for name in ("clip_l", "clip_g"):
                ids, hid, pool = parts[name]
                fx.add(f"{name}.input_ids", ids.to(torch.int64), f"{name} input ids [2, 77]")
                fx.add(f"f32.{name}.hidden_penultimate", hid, f"{name} hidden_states[-2] (no final LN) [2, 77, hidden]")
                fx.add(f"f32.{name}.text_embeds", pool, f"{name} text_embeds (final LN at argmax(ids) @ projection)")
            fx.add("t5.input_ids", ids3.to(torch.int64), "T5 input ids [2, 256]")
            # The assembled prompt_embeds [2, 333, 4096] is not stored (size budget): it is exactly
            # cat_seq(zero_pad_to_4096(cat_last(clip_l.hidden_penultimate, clip_g.hidden_penultimate)),
            # t5.last_hidden_state), asserted above bit for bit against StableDiffusion3Pipeline.encode_prompt.
            fx.add("f32.t5.last_hidden_state", t5h, "T5 last_hidden_state (after final RMSNorm) [2, 256, 4096], "
                   "f32 reference stored as f16. prompt_embeds = cat_seq(zero_pad_4096(cat_last(f32.clip_l."
                   "hidden_penultimate, f32.clip_g.hidden_penultimate)), this) = [2, 333, 4096]", dtype=torch.float16)
            fx.add("f32.pooled_prompt_embeds", pooled_all, "[2, 2048] = cat(clip_l.text_embeds, clip_g.text_embeds)")
            ref = {"embeds": embeds, "pooled": pooled_all, "t5": t5h,
                   "clip_l": parts["clip_l"][1], "clip_g": parts["clip_g"][1]}
        else:
            for name in ("clip_l", "clip_g"):
                _, hid, pool = parts[name]
                fx.add(f"bf16.{name}.hidden_penultimate", hid, f"{name} hidden_states[-2], bf16 encoder")
                fx.add(f"bf16.{name}.text_embeds", pool, f"{name} text_embeds, bf16 encoder")
            fx.add("bf16.pooled_prompt_embeds", pooled_all, "[2, 2048] from the bf16 encoders")
            # the bf16 T5 output itself is large: store only its error against the f32 reference
            MANIFEST["text_encoders_bf16_error"] = {
                "prompt_embeds": err_stats(ref["embeds"], embeds),
                "t5_last_hidden_state": err_stats(ref["t5"], t5h),
                "clip_l_hidden_penultimate": err_stats(ref["clip_l"], parts["clip_l"][1]),
                "clip_g_hidden_penultimate": err_stats(ref["clip_g"], parts["clip_g"][1]),
                "pooled_prompt_embeds": err_stats(ref["pooled"], pooled_all),
            }
    fx.save(out)
    # the transformer fixture uses exactly the stored values (T5 part f16-rounded) as its f32 input
    t = fx.tensors
    clip = torch.cat([t["f32.clip_l.hidden_penultimate"], t["f32.clip_g.hidden_penultimate"]], dim=-1).float()
    clip = torch.nn.functional.pad(clip, (0, 4096 - clip.shape[-1]))
    ctx = torch.cat([clip, t["f32.t5.last_hidden_state"].float()], dim=1)
    return ctx, t["f32.pooled_prompt_embeds"].float()


def run_dit_with_taps(dit, x, t, ctx, pooled):
    taps = {}
    hooks = [
        dit.pos_embed.register_forward_hook(lambda m, a, o: taps.__setitem__("patch_embed_out", o)),
        dit.time_text_embed.register_forward_hook(lambda m, a, o: taps.__setitem__("temb", o)),
        dit.context_embedder.register_forward_hook(lambda m, a, o: taps.__setitem__("context_embedder_out", o)),
    ]
    for i, blk in enumerate(dit.transformer_blocks):
        def hook(m, args, kwargs, o, i=i):
            taps[f"block{i}.out_hidden"] = o[1]
            if o[0] is not None:
                taps[f"block{i}.out_encoder_hidden"] = o[0]
        hooks.append(blk.register_forward_hook(hook, with_kwargs=True))
    with torch.no_grad():
        out = dit(hidden_states=x, timestep=t, encoder_hidden_states=ctx, pooled_projections=pooled,
                  return_dict=False)[0]
    for h in hooks:
        h.remove()
    return out, taps


def fixture_transformer(pipe32, pipe16, ctx, pooled, out: Path):
    fx = Fixture("transformer",
                 "SD3Transformer3DModel forwards. Text inputs = the f32 prompt_embeds assembled from text_encoders."
                 "safetensors (see f32.t5.last_hidden_state) and its f32.pooled_prompt_embeds (batch index 0 = cond, "
                 "1 = uncond), used as their exact stored values "
                 "(cast to bf16 for the bf16 run). 'f32.*' = f32 weights (upcast bf16 checkpoint), 'bf16.*' = bf16 run.")
    x = torch.randn(1, 16, 3, 6, 10, generator=gen(20))
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, 6)[:-1])
    t = sched.timesteps[1:2].clone()  # float32, 923.0769...
    fx.add("input.latent", x, "latent [1, 16, T=3, h=6, w=10] f32")
    fx.add("input.timestep", t, "timestep [1] f32 (sigma*1000, shift 3, 5 steps, index 1)")
    x2 = torch.cat([x, x])
    t2 = torch.cat([t, t])
    for tag, pipe, dt in (("f32", pipe32, torch.float32), ("bf16", pipe16, torch.bfloat16)):
        dit = pipe.transformer
        o, taps = run_dit_with_taps(dit, x.to(dt), t, ctx[:1].to(dt), pooled[:1].to(dt))
        store = torch.float32 if tag == "f32" else torch.bfloat16
        fx.add(f"{tag}.output", o, "noise_pred [1, 16, 3, 6, 10], cond (batch 0 text inputs)", dtype=store)
        for k, v in taps.items():
            if tag == "bf16" and v.shape[1] > 100:
                continue  # large text-stream taps: only their error statistics are kept for the bf16 run
            fx.add(f"{tag}.{k}", v, {
                "patch_embed_out": "hidden after Conv2d patch embed + 3D sin-cos PE [1, 45, D] (block 0 input)",
                "temb": "time_text_embed(timestep, pooled) [1, D] (not activated)",
                "context_embedder_out": "context_embedder(prompt_embeds) [1, 333, D] (block 0 encoder input)",
            }.get(k, f"{k} [1, seq, D] (block output; the last block is context_pre_only)"), dtype=store)
        o2, _ = run_dit_with_taps(dit, x2.to(dt), t2, ctx.to(dt), pooled.to(dt))
        fx.add(f"{tag}.cfg_batch2_output", o2, "batch-2 forward: latent repeated, text inputs [cond, uncond], "
               "timestep [t, t] -> [2, 16, 3, 6, 10]", dtype=store)
        if tag == "f32":
            pe = dit.pos_embed.pos_table(3, 3, 5).flatten(0, 1)
            fx.add("pos_embed_table", pe, "fixed 3D sin-cos table [T*H'*W'=45, D] computed in f64, stored f32",
                   dtype=torch.float32)
            ref_o, ref_o2, ref_taps = o, o2, taps
        else:
            MANIFEST["transformer_bf16_error"] = {
                "output": err_stats(ref_o, o), "cfg_batch2_output": err_stats(ref_o2, o2),
                **{k: err_stats(ref_taps[k], v) for k, v in taps.items()},
            }
    fx.save(out)


def fixture_scheduler(out: Path):
    fx = Fixture("scheduler", "FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=np.linspace(1, 0, steps+1)[:-1]) "
                 "as ContentV calls it, and one Euler step.")
    for shift in (1.0, 3.0):
        for steps in (1, 2, 5, 50):
            s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
            s.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
            fx.add(f"shift{shift:.1f}.steps{steps}.sigmas", s.sigmas.float(),
                   f"sigmas [steps+1] (last = 0), shift {shift}", dtype=torch.float32)
            fx.add(f"shift{shift:.1f}.steps{steps}.timesteps", s.timesteps.float(),
                   "timesteps [steps] = sigma*1000 (f32), fed to the DiT as is", dtype=torch.float32)
    s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    s.set_timesteps(sigmas=np.linspace(1.0, 0.0, 51)[:-1])
    sample = torch.randn(256, generator=gen(30)).to(torch.bfloat16)
    v = (3.0 * torch.randn(256, generator=gen(31))).to(torch.bfloat16)
    for i in (0, 49):
        s._step_index = i
        prev = s.step(v, s.timesteps[i], sample, return_dict=False)[0]
        fx.add(f"step.i{i}.prev_sample", prev, f"bf16 result of step index {i} (shift 3, 50 steps) from step.sample "
               "and step.model_output: bf16(f32(sample) + (sigma[i+1]-sigma[i]) * v)")
    fx.add("step.sample", sample, "bf16 sample [256]")
    fx.add("step.model_output", v, "bf16 velocity [256]")
    fx.save(out)


def fixture_pipeline(pipe32, pipe16, out: Path):
    P = PIPE
    fx = Fixture("pipeline",
                 f"ContentVPipeline semantics (spec 2) on the tiny model: prompt/negative = MANIFEST.encoder_prompts, "
                 f"{P['height']}x{P['width']}, {P['num_frames']} frames, {P['steps']} steps, CFG {P['guidance_scale']}, "
                 "shift 3, from the given noise. 'bf16.*' = reference precision (encoders, DiT and latents bf16, VAE "
                 "f32); 'f32.*' = everything f32 (latents f32 between steps).")
    shape = (1, 16, (P["num_frames"] - 1) // 4 + 1, P["height"] // 8, P["width"] // 8)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(NOISE_SEED), dtype=torch.bfloat16)
    fx.add("noise", noise, f"initial latents {list(shape)}, bf16 (torch.randn with CPU generator seed {NOISE_SEED} "
           "in bf16, as prepare_latents does)")
    results = {}
    for tag, pipe, dt in (("bf16", pipe16, torch.bfloat16), ("f32", pipe32, torch.float32)):
        rec = {}
        frames = pipe.generate(ENC_PROMPTS[0], ENC_PROMPTS[1], noise.to(dt), P["steps"], P["guidance_scale"],
                               P["max_sequence_length"], record=rec)
        u8 = frames_to_uint8(frames)[0]  # [F, H, W, 3]
        store = torch.float32 if tag == "f32" else torch.bfloat16
        if tag == "bf16":
            fx.add("timesteps", rec["timesteps"], "timesteps of the 3-step schedule (f32)", dtype=torch.float32)
            fx.add("sigmas", rec["sigmas"], "sigmas incl. final 0 (f32)", dtype=torch.float32)
        for i in range(P["steps"]):
            fx.add(f"{tag}.step{i}.v_cond", rec[f"step{i}.v_cond"], f"cond velocity at step {i}", dtype=store)
            fx.add(f"{tag}.step{i}.v_uncond", rec[f"step{i}.v_uncond"], f"uncond velocity at step {i}", dtype=store)
            fx.add(f"{tag}.step{i}.v", rec[f"step{i}.v"], f"guided velocity v_u + 6 (v_c - v_u) at step {i}",
                   dtype=store)
            fx.add(f"{tag}.step{i}.latents", rec[f"step{i}.latents"], f"latents after step {i}", dtype=store)
        fx.add(f"{tag}.vae_input", rec["vae_input"], "de-normalised latents: f32(x) / (1/std) + mean (f32)")
        fx.add(f"{tag}.video", rec["video"], "VAE decode output (f32 VAE), clamped to [-1, 1], [1, 3, F, H, W]"
               + ("" if tag == "f32" else ", stored f16"), dtype=torch.float32 if tag == "f32" else torch.float16)
        fx.add(f"{tag}.frames_u8", torch.from_numpy(u8), "uint8 frames [F, H, W, 3] = "
               "uint8(clamp(video*0.5+0.5, 0, 1)*255) (truncation), as postprocess_video + export_to_video")
        results[tag] = rec
    MANIFEST["pipeline_bf16_vs_f32"] = {
        f"step{i}.latents": err_stats(results["f32"][f"step{i}.latents"], results["bf16"][f"step{i}.latents"])
        for i in range(P["steps"])
    }
    MANIFEST["pipeline_bf16_vs_f32"]["video"] = err_stats(results["f32"]["video"], results["bf16"]["video"])
    fx.save(out)


def fixture_vae(pipe32: ContentVPipeline, out: Path):
    fx = Fixture("vae", "AutoencoderKLWan.decode of random de-normalised latents (1 + 4(T-1) output frames), "
                 "f32 ('f32.*') and bf16 ('bf16.*') runs; decoder intermediates concatenated over chunks (f32).")
    vae = pipe32.vae
    cfg = vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, 16, 1, 1, 1)
    vae16 = AutoencoderKLWan.from_pretrained(ROOT / "assets/tiny-model/vae", torch_dtype=torch.bfloat16).eval()
    stats = {}
    for T, (h, w) in ((3, (6, 10)), (4, (4, 6))):
        z = torch.randn(1, 16, T, h, w, generator=gen(40 + T)) * std + mean
        key = f"t{T}"
        fx.add(f"{key}.latent", z, f"de-normalised latent [1, 16, {T}, {h}, {w}] (VAE input)")
        taps = {}
        hooks = []
        names = {"post_quant_conv": vae.post_quant_conv, "decoder.conv_in": vae.decoder.conv_in,
                 "decoder.mid_block": vae.decoder.mid_block, "decoder.up_blocks.0": vae.decoder.up_blocks[0]}
        if T == 3:
            for n, m in names.items():
                hooks.append(m.register_forward_hook(lambda mod, a, o, n=n: taps.setdefault(n, []).append(o.clone())))
        with torch.no_grad():
            y = vae.decode(z, return_dict=False)[0]
            y16 = vae16.decode(z.to(torch.bfloat16), return_dict=False)[0]
        for hk in hooks:
            hk.remove()
        assert y.shape == (1, 3, 1 + 4 * (T - 1), 8 * h, 8 * w), y.shape
        fx.add(f"f32.{key}.video", y, f"decode output [1, 3, {1 + 4 * (T - 1)}, {8 * h}, {8 * w}], clamped (f32)")
        fx.add(f"bf16.{key}.video", y16, "decode output of the VAE run in bf16 (weights and latent cast)")
        for n, lst in taps.items():
            fx.add(f"f32.{key}.{n}", torch.cat(lst, dim=2), f"output of {n}, chunks concatenated in time")
        stats[key] = {"bf16_vs_f32": err_stats(y, y16), "share_clamped": (y.abs() >= 1.0).float().mean().item()}
    MANIFEST["vae_stats"] = stats
    fx.save(out)


# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=ROOT / "assets/tiny-model")
    ap.add_argument("--fixtures-dir", type=Path, default=ROOT / "tests/fixtures")
    args = ap.parse_args()
    assert importlib.util.find_spec("ftfy") is None, (
        "ftfy is installed: CLIPTokenizer would use it instead of BasicTokenizer; ContentV's environment has no ftfy")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    diffusers.logging.set_verbosity_error()

    model_dir, fix_dir = args.model_dir, args.fixtures_dir
    for d in (model_dir, fix_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    print("building tiny model ...")
    with tempfile.TemporaryDirectory() as tmp:
        build_clip_tokenizers(model_dir, Path(tmp))
        build_t5_tokenizer(model_dir, Path(tmp))
    build_models(model_dir)

    print("loading it back and writing fixtures ...")
    pipe32 = load_pipeline(model_dir, torch.float32)
    pipe16 = load_pipeline(model_dir, torch.bfloat16)
    fixture_tokens(pipe32, model_dir, fix_dir)
    ctx, pooled = fixture_text_encoders(pipe32, pipe16, fix_dir)
    fixture_transformer(pipe32, pipe16, ctx, pooled, fix_dir)
    fixture_scheduler(fix_dir)
    fixture_pipeline(pipe32, pipe16, fix_dir)
    fixture_vae(pipe32, fix_dir)

    MANIFEST.update({
        "format_version": FORMAT_VERSION,
        "generator": "scripts/reference/make_fixtures.py",
        "regenerate": "scripts/reference/setup.sh && .venv-ref/bin/python scripts/reference/make_fixtures.py",
        "seeds": {"base": SEED, "pipeline_noise": NOISE_SEED},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "sentencepiece": spm.__version__,
                     "safetensors": safetensors.__version__, "numpy": np.__version__},
        "tiny_model": {"dir": "assets/tiny-model", "clip_l": CLIP_L, "clip_g": CLIP_G, "t5": {**T5, "vocab": T5_VOCAB},
                       "transformer": DIT, "vae": VAE, "scheduler_shift": 3.0},
        "prompts": PROMPTS,
        "encoder_prompts": ENC_PROMPTS,
        "pipeline": PIPE,
    })
    order = ["format_version", "generator", "regenerate", "seeds", "versions", "tiny_model", "prompts",
             "encoder_prompts", "pipeline", "tokenizers", "files"]
    manifest = {k: MANIFEST[k] for k in order}
    manifest.update({k: v for k, v in MANIFEST.items() if k not in manifest})
    (fix_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print("done")


if __name__ == "__main__":
    main()
