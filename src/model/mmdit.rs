//! The ContentV 3D MMDiT (`SD3Transformer3DModel`, docs/spec.md §5): per-frame 2x2 patch embedding
//! plus a fixed 3D sin-cos table, timestep + pooled-text conditioning, N joint blocks over
//! [video; text] tokens (the last one context_pre_only), final adaLN and projection, 3D
//! unpatchify. Device-agnostic: every step is an op (CPU f32 reference or CUDA kernel), and
//! every weight is asked from the weight store by its checkpoint key, layer by layer, through
//! the residency layer (resident, streamed or INT8: the code here does not change).
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::io::config::ConfigJson;
use crate::model::interfaces::{BlockState, Denoiser, StepInput};
use crate::ops::attention::{attention_segs, AttnOpts};
use crate::ops::elementwise::{add, add_bcast, gated_residual};
use crate::ops::gemm::{linear, linear_act, Act};
use crate::ops::{act, norm};
use crate::runtime::planner::{plan_layers, LayerPlan};
use crate::runtime::residency::{LeftOut, MemoryOptions, Residency};
use crate::runtime::weights::{LinearTags, WeightSource};
use crate::runtime::{DType, Device, Prefix, Tensor, WeightStore};
use crate::shape_err;

/// The linears of a joint block run as one GEMM each ([`WeightSource::fused_tagged`]); output
/// columns in this order. Video q, k, v:
const QKV: &[&str] = &["attn.to_q", "attn.to_k", "attn.to_v"];
/// Text q, k, v:
const ADD_QKV: &[&str] = &["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"];
/// Text k, v of the last block (context_pre_only: its text queries would be discarded, and its
/// `add_q_proj`, present in the checkpoint, is not read).
const ADD_KV: &[&str] = &["attn.add_k_proj", "attn.add_v_proj"];

const LN_EPS: f32 = 1e-6;
const QK_EPS: f32 = 1e-6;
/// Timestep embedding width (sinusoidal features).
pub const TIME_FEATURES: usize = 256;

/// Architecture of the transformer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransformerConfig {
    pub layers: usize,
    pub heads: usize,
    /// `attention_head_dim`: width of one attention head (64 for ContentV-8B); the q/k RMS
    /// norms run over it and the attention scale is 1/sqrt(head_dim).
    pub head_dim: usize,
    /// hidden width D = heads * head_dim
    pub dim: usize,
    pub patch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// text token width (T5 d_model; CLIP features are zero-padded to it)
    pub joint_attention_dim: usize,
    pub pooled_dim: usize,
    pub ff_dim: usize,
}

impl TransformerConfig {
    /// Whether block `i` is the last one, which is context_pre_only (the reference's
    /// `context_pre_only=i == num_layers - 1`): its text stream is only read (keys and values),
    /// not updated, so it has no `attn.to_add_out`, no `ff_context` and a 2D context modulation.
    /// The one definition of "last block": the loaders, and so the description, use it.
    pub fn is_last_block(&self, i: usize) -> bool {
        i + 1 == self.layers
    }

    /// ContentV-8B: 38 joint blocks, 38 heads x 64, hidden 2432, patch 1x2x2, 16 channels.
    pub fn contentv_8b() -> TransformerConfig {
        TransformerConfig {
            layers: 38,
            heads: 38,
            head_dim: 64,
            dim: 2432,
            patch: 2,
            in_channels: 16,
            out_channels: 16,
            joint_attention_dim: 4096,
            pooled_dim: 2048,
            ff_dim: 4 * 2432,
        }
    }

    /// Reads the architecture from the weights' shapes (the head dim from
    /// `transformer_blocks.0.attn.norm_q.weight` [head_dim]) and, when the store's folder has a
    /// `config.json`, checks it against that file's `SD3Transformer3DModel` arguments
    /// ([`TransformerConfig::check_config_json`]).
    pub fn from_weights(p: &Prefix) -> Result<TransformerConfig> {
        let dir = p.store().dir().to_path_buf();
        let shape = |k: &str| {
            p.shape_of(k).ok_or_else(|| {
                Error::Weights(format!(
                    "{}: no tensor {k}: not a ContentV transformer checkpoint",
                    dir.display()
                ))
            })
        };
        let bad = |msg: String| Error::Weights(format!("{}: {msg}", dir.display()));
        let pe = shape("pos_embed.proj.weight")?;
        if pe.len() != 4 || pe[2] != pe[3] || pe[2] == 0 {
            return Err(bad(format!(
                "pos_embed.proj.weight has shape {pe:?}, expected [D, C, p, p]"
            )));
        }
        let (dim, in_channels, patch) = (pe[0], pe[1], pe[2]);
        let ctx = shape("context_embedder.weight")?;
        let pooled = shape("time_text_embed.text_embedder.linear_1.weight")?;
        let proj = shape("proj_out.weight")?;
        let ff = shape("transformer_blocks.0.ff.net.0.proj.weight")?;
        let nq = shape("transformer_blocks.0.attn.norm_q.weight")?;
        let head_dim = match nq[..] {
            [hd] if hd > 0 => hd,
            _ => {
                return Err(bad(format!(
                    "transformer_blocks.0.attn.norm_q.weight has shape {nq:?}, expected [head_dim] \
                     (qk_norm rms_norm)"
                )))
            }
        };
        if dim % head_dim != 0 {
            return Err(bad(format!(
                "hidden width {dim} (pos_embed.proj.weight) is not a multiple of the head dim \
                 {head_dim} (attn.norm_q.weight)"
            )));
        }
        // The reference's get_3d_sincos_pos_embed splits D into D/4 temporal and 3D/8 + 3D/8
        // spatial dims, each an even sin/cos pair: it rejects any D that is not a multiple of 16.
        if dim % 16 != 0 {
            return Err(bad(format!(
                "hidden width {dim} is not a multiple of 16, which the 3D sin-cos position \
                 embedding needs (D/4 temporal + 2 x 3D/8 spatial, each even)"
            )));
        }
        if proj.len() != 2 || proj[0] % (patch * patch) != 0 || proj[0] == 0 {
            return Err(bad(format!(
                "proj_out.weight has shape {proj:?}, expected [p*p*C_out, D] with p = {patch}"
            )));
        }
        let mut layers = 0;
        while p.contains(&format!("transformer_blocks.{layers}.attn.to_q.weight")) {
            layers += 1;
        }
        if layers == 0 {
            return Err(bad("no transformer_blocks.N in the checkpoint".into()));
        }
        let c = TransformerConfig {
            layers,
            heads: dim / head_dim,
            head_dim,
            dim,
            patch,
            in_channels,
            out_channels: proj[0] / (patch * patch),
            joint_attention_dim: ctx[1],
            pooled_dim: pooled[1],
            ff_dim: ff[0],
        };
        let cfg = dir.join("config.json");
        if cfg.is_file() {
            c.check_config_json(&cfg)?;
        }
        Ok(c)
    }

    /// Checks the `SD3Transformer3DModel` arguments in a `transformer/config.json` (the only six
    /// keys ContentV's class reads, docs/spec.md §5.1: in_channels, out_channels, patch_size, num_layers,
    /// num_attention_heads, attention_head_dim) against this (weight-derived) config. Keys the
    /// file does not have are not checked; every other key is ignored, as diffusers does.
    pub fn check_config_json(&self, path: &Path) -> Result<()> {
        let cfg = ConfigJson::read(path)?;
        crate::model::inventory::transformer_bounds(cfg.origin(), &|k| {
            cfg.positive(k).ok().flatten()
        })?;
        let get = |k: &str| cfg.positive(k);
        let mismatch = |what: String| {
            Error::Weights(format!(
                "{}: {what}; the weights in {} do not match this config",
                path.display(),
                path.parent()
                    .map_or_else(String::new, |d| d.display().to_string())
            ))
        };
        let heads = get("num_attention_heads")?;
        let head_dim = get("attention_head_dim")?;
        if let (Some(h), Some(hd)) = (heads, head_dim) {
            if h.checked_mul(hd) != Some(self.dim) {
                return Err(mismatch(format!(
                    "num_attention_heads {h} x attention_head_dim {hd} = {} but the hidden width \
                     of the weights (pos_embed.proj.weight) is {}",
                    h as u128 * hd as u128,
                    self.dim
                )));
            }
        }
        for (key, got, from) in [
            (
                "attention_head_dim",
                self.head_dim,
                "attn.norm_q.weight has that many entries",
            ),
            (
                "num_attention_heads",
                self.heads,
                "hidden width / attn.norm_q.weight entries",
            ),
            (
                "num_layers",
                self.layers,
                "transformer_blocks.N in the weights",
            ),
            (
                "patch_size",
                self.patch,
                "pos_embed.proj.weight kernel size",
            ),
            (
                "in_channels",
                self.in_channels,
                "pos_embed.proj.weight input channels",
            ),
            (
                "out_channels",
                self.out_channels,
                "proj_out.weight rows / patch_size^2",
            ),
        ] {
            if let Some(want) = get(key)? {
                if want != got {
                    return Err(mismatch(format!(
                        "\"{key}\" is {want} but the weights say {got} ({from})"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Weights of one joint block, asked from the weight source by checkpoint key (the real store,
/// or the recorder that makes the description: the one place the block's layout is written).
struct BlockWeights<S: WeightSource = Prefix> {
    /// to_q, to_k, to_v fused: [3D, D].
    qkv: S::Linear,
    /// add_q_proj, add_k_proj, add_v_proj fused: [3D, D]; in the last block (context_pre_only)
    /// add_k_proj, add_v_proj only: [2D, D].
    add_qkv: S::Linear,
    norm_q: S::Tensor,
    norm_k: S::Tensor,
    norm_added_q: S::Tensor,
    norm_added_k: S::Tensor,
    to_out: S::Linear,
    to_add_out: Option<S::Linear>,
    ff1: S::Linear,
    ff2: S::Linear,
    ff_context: Option<(S::Linear, S::Linear)>,
    /// The last block: context adaLN is (scale, shift), no text update.
    context_pre_only: bool,
}

/// The index of the block prefix `b` (`transformer_blocks.{i}`) and whether it is the last one.
fn block_index<S: WeightSource>(b: &S, c: &TransformerConfig) -> Result<(usize, bool)> {
    let i = b.layer_index().ok_or_else(|| {
        Error::Other("transformer: a block loaded from a prefix without a block index".into())
    })?;
    Ok((i, c.is_last_block(i)))
}

/// The adaLN modulation linears of block `b`: (norm1 [6D], norm1_context [6D or 2D]). Tagged
/// per-run: they depend only on the timestep and the pooled text, so a run computes their
/// outputs once ([`Denoiser::prepare_run`]) and streaming leaves them out of the per-step
/// copies (a third of a block's bytes).
fn modulation_linears<S: WeightSource>(
    b: &S,
    c: &TransformerConfig,
) -> Result<(S::Linear, S::Linear)> {
    let d = c.dim;
    let (_, last) = block_index(b, c)?;
    let ctx_mod = if last { 2 * d } else { 6 * d };
    let once = LinearTags::PER_RUN;
    Ok((
        b.linear_tagged("norm1.linear", d, 6 * d, true, once)?,
        b.linear_tagged("norm1_context.linear", d, ctx_mod, true, once)?,
    ))
}

/// Modulation vectors of a whole denoising run, computed once (spec: they depend only on the
/// timestep and the pooled text): per step s, rows [s*B, (s+1)*B) of each tensor.
struct RunModulation {
    /// The number of steps S.
    steps: usize,
    /// The batch B of each step.
    b: usize,
    /// Per block: (e [S*B, 6D], ec [S*B, 6D or 2D]).
    blocks: Vec<(Tensor, Tensor)>,
    /// norm_out: [S*B, 2D].
    out: Tensor,
}

impl<S: WeightSource> BlockWeights<S> {
    /// The attention and MLP linears are tagged INT8 (`--quantize int8` applies to them; the
    /// norms, the modulation, the embedders and the final layer stay in bf16), q|k|v fused.
    fn load(b: &S, c: &TransformerConfig) -> Result<BlockWeights<S>> {
        let (d, hd) = (c.dim, c.head_dim);
        let (_, context_pre_only) = block_index(b, c)?;
        let q8 = LinearTags::INT8;
        // The last block's text queries are dead work (their output is discarded).
        let add = if context_pre_only { ADD_KV } else { ADD_QKV };
        let mlp = |p: &str| -> Result<(S::Linear, S::Linear)> {
            Ok((
                b.linear_tagged(&format!("{p}.net.0.proj"), d, c.ff_dim, true, q8)?,
                b.linear_tagged(&format!("{p}.net.2"), c.ff_dim, d, true, q8)?,
            ))
        };
        let (ff1, ff2) = mlp("ff")?;
        Ok(BlockWeights {
            qkv: b.fused_tagged(QKV, d, &[d; 3], true, q8)?,
            add_qkv: b.fused_tagged(add, d, &vec![d; add.len()], true, q8)?,
            norm_q: b.tensor("attn.norm_q.weight", &[hd])?,
            norm_k: b.tensor("attn.norm_k.weight", &[hd])?,
            norm_added_q: b.tensor("attn.norm_added_q.weight", &[hd])?,
            norm_added_k: b.tensor("attn.norm_added_k.weight", &[hd])?,
            to_out: b.linear_tagged("attn.to_out.0", d, d, true, q8)?,
            to_add_out: if context_pre_only {
                None
            } else {
                Some(b.linear_tagged("attn.to_add_out", d, d, true, q8)?)
            },
            ff1,
            ff2,
            ff_context: if context_pre_only {
                None
            } else {
                Some(mlp("ff_context")?)
            },
            context_pre_only,
        })
    }
}

/// Weights outside the block loop.
struct Embedders<S: WeightSource = Prefix> {
    patch: S::Linear,
    t1: S::Linear,
    t2: S::Linear,
    p1: S::Linear,
    p2: S::Linear,
    context: S::Linear,
    norm_out: S::Linear,
    proj_out: S::Linear,
}

impl<S: WeightSource> Embedders<S> {
    fn load(r: &S, c: &TransformerConfig) -> Result<Embedders<S>> {
        let d = c.dim;
        let te = r.pp("time_text_embed");
        Ok(Embedders {
            // Conv2d k=s=p as a linear over (c, kh, kw)-ordered patches.
            patch: r.linear_reshaped("pos_embed.proj", &[d, c.in_channels, c.patch, c.patch])?,
            t1: te.linear("timestep_embedder.linear_1", TIME_FEATURES, d, true)?,
            t2: te.linear("timestep_embedder.linear_2", d, d, true)?,
            p1: te.linear("text_embedder.linear_1", c.pooled_dim, d, true)?,
            p2: te.linear("text_embedder.linear_2", d, d, true)?,
            context: r.linear("context_embedder", c.joint_attention_dim, d, true)?,
            norm_out: r.linear("norm_out.linear", d, 2 * d, true)?,
            proj_out: r.linear("proj_out", d, c.patch * c.patch * c.out_channels, true)?,
        })
    }
}

/// The transformer's checkpoint, read through `root`: every weight the forward asks for, in
/// the forward's own loaders. Run against the recorder (`model::inventory::transformer`) it is
/// the transformer's description.
pub fn describe<S: WeightSource>(root: &S, c: &TransformerConfig) -> Result<()> {
    Embedders::load(root, c)?;
    let blocks = root.pp(LAYER_GROUP);
    for i in 0..c.layers {
        let b = blocks.pp(i);
        modulation_linears(&b, c)?;
        BlockWeights::load(&b, c)?;
    }
    Ok(())
}

/// Intermediate tensors a caller may want to see (parity tests): called with a name and the
/// tensor, e.g. `patch_embed_out`, `temb`, `context_embedder_out`, `block{i}.out_hidden`,
/// `block{i}.out_encoder_hidden`.
pub type Taps<'a> = Option<&'a mut dyn FnMut(&str, &Tensor)>;

/// The ContentV transformer.
pub struct Transformer {
    pub config: TransformerConfig,
    store: Arc<WeightStore>,
    residency: Residency,
    device: Device,
    /// Position tables by (T, H', W'), in the compute dtype on the device.
    pe_cache: Mutex<HashMap<(usize, usize, usize), Tensor>>,
    run: Mutex<Option<RunModulation>>,
}

/// The checkpoint prefix of the transformer's layer loop.
pub const LAYER_GROUP: &str = "transformer_blocks";

/// Video tokens of the default request (125 frames at 432x768: 32 latent frames of 27 x 48
/// patches = 41,472), used where no request is known yet.
pub const DEFAULT_VIDEO_TOKENS: usize = 41_472;

/// Estimated peak activation bytes of one forward for `batch` entries of `video_tokens` video
/// tokens (plus the text tokens), bf16: the residual streams, q/k/v, the attention output and
/// the MLP hidden layer (4x width).
pub fn activation_bytes(config: &TransformerConfig, batch: usize, video_tokens: usize) -> u64 {
    let s = video_tokens + crate::model::interfaces::TEXT_TOKENS;
    (batch * s * config.dim * 2 * (2 + 3 + 1 + 4 + 1)) as u64
}

/// Device bytes the first-block step cache holds for a run (`--cache fbcache`): the remaining
/// blocks' residual of the video stream [B, N, D] in bf16. Planned next to the activations.
pub fn step_cache_bytes(config: &TransformerConfig, batch: usize, video_tokens: usize) -> u64 {
    (batch * video_tokens * config.dim * 2) as u64
}

/// With INT8 weights, the bf16 weight a video GEMM dequantises into before cuBLASLt
/// (ops::quant, from the crossover M on): one at a time, the largest linear of a block (the MLP
/// [ff, D] or the fused q|k|v [3D, D]). Planned next to the activations; 0 without INT8.
pub fn int8_scratch_bytes(config: &TransformerConfig, mem: &MemoryOptions) -> u64 {
    if !mem.int8 {
        return 0;
    }
    let largest = (config.ff_dim * config.dim).max(3 * config.dim * config.dim);
    (largest * 2) as u64
}

impl Transformer {
    /// Loads `dir` (the checkpoint's `transformer/` folder) for `device`: bf16 on the GPU, f32 on the CPU.
    pub fn load(dir: &Path, device: &Device) -> Result<Transformer> {
        Self::load_with(dir, device, &MemoryOptions::default())
    }

    /// As [`Transformer::load`], with the run's memory options (streaming, budget, INT8),
    /// planned for the default request (batch 2, [`DEFAULT_VIDEO_TOKENS`]). The CLI plans with
    /// the real request instead: [`Transformer::open`], `runtime::planner::plan_layers`,
    /// [`Transformer::place`].
    pub fn load_with(dir: &Path, device: &Device, mem: &MemoryOptions) -> Result<Transformer> {
        let (store, config) = Self::open(dir, device, mem)?;
        let plan = plan_layers(
            &store,
            LAYER_GROUP,
            config.layers,
            mem,
            activation_bytes(&config, 2, DEFAULT_VIDEO_TOKENS) + int8_scratch_bytes(&config, mem),
        )?;
        Self::place(store, config, &plan)
    }

    /// Opens the checkpoint and reads the architecture: the weight store (with the model's
    /// INT8 policy when `mem.int8`) and the config. Nothing is uploaded yet.
    pub fn open(
        dir: &Path,
        device: &Device,
        mem: &MemoryOptions,
    ) -> Result<(Arc<WeightStore>, TransformerConfig)> {
        let store = WeightStore::open(dir, device, DType::BF16)?;
        let config = TransformerConfig::from_weights(&store.root())?;
        let desc = crate::model::inventory::transformer(&config, &|k| store.contains(k), dir)?;
        desc.check(dir, store.checkpoint())?;
        // The store's policies are the description's tags (the fused groups, the INT8 linears).
        store.set_fusion(Some(desc.fusion_policy()));
        if mem.int8 {
            store.set_int8(Some(desc.int8_policy()));
        }
        // The GPU runs heads of 64 on the flash kernel and any other width on the generic one,
        // which holds a query row in shared memory: say so here rather than at the first step.
        if device.gpu().is_some() && config.head_dim > crate::ops::attention::NAIVE_MAX_D {
            return Err(Error::Weights(format!(
                "{}: attention head dim {} is larger than the CUDA attention kernels support ({}); \
                 run on the CPU (--device cpu)",
                dir.display(),
                config.head_dim,
                crate::ops::attention::NAIVE_MAX_D
            )));
        }
        Ok((store, config))
    }

    /// The transformer with its layers placed as `plan` says (a plan for [`LAYER_GROUP`]).
    pub fn place(
        store: Arc<WeightStore>,
        config: TransformerConfig,
        plan: &LayerPlan,
    ) -> Result<Transformer> {
        if plan.group != LAYER_GROUP || plan.layers != config.layers {
            return Err(Error::Other(format!(
                "transformer: a plan for {} x {} does not fit {LAYER_GROUP} x {}",
                plan.layers, plan.group, config.layers
            )));
        }
        let desc =
            crate::model::inventory::transformer(&config, &|k| store.contains(k), store.dir())?;
        let residency = Residency::from_plan(&store, plan, &LeftOut(desc.per_run_linears()))?;
        let device = store.device().clone();
        Ok(Transformer {
            config,
            store,
            residency,
            device,
            pe_cache: Mutex::new(HashMap::new()),
            run: Mutex::new(None),
        })
    }

    pub fn store(&self) -> &Arc<WeightStore> {
        &self.store
    }

    /// Frees every weight this model holds on the device (model offload).
    pub fn release(&self) {
        self.store.release_all();
    }

    /// The dtype activations run in (bf16 on the GPU, f32 on the CPU).
    pub fn dtype(&self) -> DType {
        self.store.dtype()
    }

    fn pos_table(&self, t: usize, hp: usize, wp: usize) -> Result<Tensor> {
        let key = (t, hp, wp);
        if let Some(pe) = self.pe_cache.lock().unwrap().get(&key) {
            return Ok(pe.clone());
        }
        let v = pos_embed_3d(self.config.dim, t, hp, wp);
        let pe = Tensor::from_f32(v, &[t * hp * wp, self.config.dim], &Device::Cpu)?
            .to_dtype(self.dtype())?
            .to_device(&self.device)?;
        self.pe_cache.lock().unwrap().insert(key, pe.clone());
        Ok(pe)
    }

    /// Velocity for latents `x` [B, C, T, h, w] at `timesteps` (one per batch entry, sigma*1000),
    /// text `ctx` [B, S_txt, joint_dim] and `pooled` [B, pooled_dim] -> [B, C_out, T, h, w].
    /// `step`: the index of this step in the run given to [`Transformer::precompute_modulation`]
    /// (its modulation is read from there); `None` computes the modulation now.
    pub fn forward_taps(
        &self,
        x: &Tensor,
        step: Option<usize>,
        timesteps: &[f32],
        ctx: &Tensor,
        pooled: &Tensor,
        mut taps: Taps,
    ) -> Result<Tensor> {
        // The architecture, top to bottom: embeddings, the joint blocks, the output layer.
        let s = self.embed(x, timesteps, ctx, pooled, &mut taps)?;
        let s = self.blocks_range(step, s, 0..self.config.layers, &mut taps)?;
        self.output(x, step, &s)
    }

    /// Checks the inputs, then the embeddings before block 0: patchified video tokens plus
    /// position table [B, N, D], text tokens [B, S, D] and SiLU(temb) [B, D].
    fn embed(
        &self,
        x: &Tensor,
        timesteps: &[f32],
        ctx: &Tensor,
        pooled: &Tensor,
        taps: &mut Taps,
    ) -> Result<BlockState> {
        let c = &self.config;
        let (b, t, hp, wp) = self.check_inputs(x, timesteps, ctx, pooled)?;
        let (p, n) = (c.patch, t * hp * wp);
        let dt = self.dtype();
        let emb = Embedders::load(&self.store.root(), c)?;

        // Patchify: [B, C, T, h, w] -> [B, C, T, H', p, W', p] -> [B, T, H', W', C, p, p]
        // -> tokens [B, N, C*p*p].
        let x = x.to_dtype(dt)?;
        let patches = x
            .reshape(&[b, c.in_channels, t, hp, p, wp, p])?
            .permute(&[0, 2, 3, 5, 1, 4, 6])?
            .contiguous()?
            .reshape(&[b, n, c.in_channels * p * p])?;
        let mut hidden = linear(&patches, &emb.patch)?; // [B, N, D]
        hidden = add_bcast(&hidden, &self.pos_table(t, hp, wp)?)?; // + PE [N, D]
        tap(taps, "patch_embed_out", &hidden);

        let temb = self.temb(&emb, timesteps, pooled)?; // [B, D]
        tap(taps, "temb", &temb);
        let cond = act::silu(&temb)?; // every adaLN linear reads SiLU(temb)

        let text = linear(&ctx.to_dtype(dt)?, &emb.context)?; // [B, S_txt, D]
        tap(taps, "context_embedder_out", &text);
        Ok(BlockState { hidden, text, cond })
    }

    /// The shape checks of a forward; returns (B, T, H', W').
    fn check_inputs(
        &self,
        x: &Tensor,
        timesteps: &[f32],
        ctx: &Tensor,
        pooled: &Tensor,
    ) -> Result<(usize, usize, usize, usize)> {
        let c = &self.config;
        let xs = x.shape().to_vec();
        if xs.len() != 5 || xs[1] != c.in_channels || xs[3] % c.patch != 0 || xs[4] % c.patch != 0 {
            return Err(shape_err!(
                "transformer: latents {xs:?} must be [B, {}, T, h, w] with h, w multiples of the patch size {}",
                c.in_channels,
                c.patch
            ));
        }
        let b = xs[0];
        if timesteps.len() != b {
            return Err(shape_err!(
                "transformer: {} timesteps for batch {b}",
                timesteps.len()
            ));
        }
        if ctx.rank() != 3 || ctx.dim(0) != b || ctx.dim(2) != c.joint_attention_dim {
            return Err(shape_err!(
                "transformer: text context {:?} must be [{b}, S, {}]",
                ctx.shape(),
                c.joint_attention_dim
            ));
        }
        if pooled.shape() != [b, c.pooled_dim] {
            return Err(shape_err!(
                "transformer: pooled {:?} must be [{b}, {}]",
                pooled.shape(),
                c.pooled_dim
            ));
        }
        Ok((b, xs[2], xs[3] / c.patch, xs[4] / c.patch))
    }

    /// Joint blocks `range` on `s` (video [B, N, D], text [B, S, D]), each layer made
    /// available by the residency layer while it computes.
    fn blocks_range(
        &self,
        step: Option<usize>,
        mut s: BlockState,
        range: std::ops::Range<usize>,
        taps: &mut Taps,
    ) -> Result<BlockState> {
        let c = &self.config;
        if range.end > c.layers || range.start > range.end {
            return Err(Error::Other(format!(
                "transformer: blocks {range:?} of {}",
                c.layers
            )));
        }
        let blocks = self.store.root().pp("transformer_blocks");
        let b = s.hidden.dim(0);
        for i in range {
            let _layer = self.residency.prepare(i)?;
            let bp = blocks.pp(i);
            let (e, ec) = self.block_modulation(step, i, b, &s.cond, &bp)?;
            let w = BlockWeights::load(&bp, c)?;
            let text = if w.context_pre_only {
                TextModulation::LastBlock {
                    scale: ec.narrow(1, 0, c.dim)?,
                    shift: ec.narrow(1, c.dim, c.dim)?,
                }
            } else {
                TextModulation::Full(Modulation::of(&ec, c.dim)?)
            };
            let (hidden, text) = joint_block(
                &s.hidden,
                &s.text,
                &Modulation::of(&e, c.dim)?,
                &text,
                &w,
                c,
            )?;
            s.hidden = hidden;
            if let Some(t) = text {
                s.text = t;
                tap(taps, &format!("block{i}.out_encoder_hidden"), &s.text);
            }
            tap(taps, &format!("block{i}.out_hidden"), &s.hidden);
        }
        Ok(s)
    }

    /// The adaLN linears' outputs of block `i` for batch `b`: (video [B, 6D], text [B, 6D] or
    /// [B, 2D] in the last block), from the prepared run's step `step`, or computed from
    /// `cond` = SiLU(temb) [B, D] when `step` is `None`.
    fn block_modulation(
        &self,
        step: Option<usize>,
        i: usize,
        b: usize,
        cond: &Tensor,
        bp: &Prefix,
    ) -> Result<(Tensor, Tensor)> {
        match step {
            Some(s) => {
                let run = self.run.lock().unwrap();
                let r = prepared_step(run.as_ref(), s, b)?;
                Ok((
                    r.blocks[i].0.narrow(0, s * b, b)?,
                    r.blocks[i].1.narrow(0, s * b, b)?,
                ))
            }
            None => {
                let (m, mc) = modulation_linears(bp, &self.config)?;
                Ok((linear(cond, &m)?, linear(cond, &mc)?))
            }
        }
    }

    /// Final adaLN (scale, shift) and projection of the video stream, then unpatchify:
    /// [B, N, D] -> [B, N, p*p*C_out] -> [B, C_out, T, h, w] (`x`: the latents, for the shape).
    fn output(&self, x: &Tensor, step: Option<usize>, s: &BlockState) -> Result<Tensor> {
        let c = &self.config;
        let (b, t, h, w) = (x.dim(0), x.dim(2), x.dim(3), x.dim(4));
        let (hp, wp, p, d) = (h / c.patch, w / c.patch, c.patch, c.dim);
        let emb = Embedders::load(&self.store.root(), c)?;
        let e = match step {
            Some(st) => {
                let run = self.run.lock().unwrap();
                prepared_step(run.as_ref(), st, b)?
                    .out
                    .narrow(0, st * b, b)?
            }
            None => linear(&s.cond, &emb.norm_out)?, // [B, 2D]
        };
        let hn =
            norm::layer_norm_modulate(&s.hidden, &e.narrow(1, d, d)?, &e.narrow(1, 0, d)?, LN_EPS)?;
        let y = linear(&hn, &emb.proj_out)?; // [B, N, p*p*C_out]
                                             // Unpatchify: [B, T, H', W', p, q, C] -> [B, C, T, H', p, W', q] -> [B, C, T, h, w].
        let co = c.out_channels;
        y.reshape(&[b, t, hp, wp, p, p, co])?
            .permute(&[0, 6, 1, 2, 4, 3, 5])?
            .contiguous()?
            .reshape(&[b, co, t, h, w])
    }
}

/// Calls the tap `name`, if there are taps.
fn tap(taps: &mut Taps, name: &str, t: &Tensor) {
    if let Some(f) = taps.as_mut() {
        f(name, t)
    }
}

/// The prepared run, checked to hold step `s` for batch `b`: a step outside the run is an
/// error (never a silent recompute).
fn prepared_step(run: Option<&RunModulation>, s: usize, b: usize) -> Result<&RunModulation> {
    match run {
        Some(r) if s < r.steps && r.b == b => Ok(r),
        Some(r) => Err(Error::Other(format!(
            "transformer: step {s} with batch {b}, but the prepared run has {} steps of batch {}",
            r.steps, r.b
        ))),
        None => Err(Error::Other(format!(
            "transformer: step {s} asked for, but no run was prepared (Denoiser::prepare_run)"
        ))),
    }
}

impl Transformer {
    /// temb = L2(SiLU(L1(sincos(t)))) + L2'(SiLU(L1'(pooled)))   [B, D]
    fn temb(&self, emb: &Embedders, timesteps: &[f32], pooled: &Tensor) -> Result<Tensor> {
        let dt = self.dtype();
        let b = timesteps.len();
        let tf = Tensor::from_f32(
            timestep_features(timesteps),
            &[b, TIME_FEATURES],
            &Device::Cpu,
        )?
        .to_dtype(dt)?
        .to_device(&self.device)?;
        let te = linear(&linear_act(&tf, &emb.t1, Act::Silu)?, &emb.t2)?;
        let pe = linear(
            &linear_act(&pooled.to_dtype(dt)?, &emb.p1, Act::Silu)?,
            &emb.p2,
        )?;
        add(&te, &pe)
    }

    /// Computes the adaLN modulation of every block for every step of a run at once
    /// (each modulation weight is read once per run instead of once per step).
    pub fn precompute_modulation(&self, timesteps: &[Vec<f32>], pooled: &Tensor) -> Result<()> {
        let c = &self.config;
        let b = pooled.dim(0);
        if timesteps.is_empty() || timesteps.iter().any(|t| t.len() != b) {
            return Err(shape_err!(
                "precompute_modulation: every step needs {b} timesteps"
            ));
        }
        let s = timesteps.len();
        let root = self.store.root();
        let emb = Embedders::load(&root, c)?;
        let flat: Vec<f32> = timesteps.concat();
        let reps: Vec<&Tensor> = (0..s).map(|_| pooled).collect();
        let pooled_all = crate::ops::elementwise::concat(&reps, 0)?; // [S*B, P]
        let st = act::silu(&self.temb(&emb, &flat, &pooled_all)?)?; // [S*B, D]
        let blocks = root.pp("transformer_blocks");
        let mut out = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            // Only the modulation linears are read (streaming leaves them out of the layer
            // copies): load them, use them for every step at once, and let them go again.
            let (m, mc) = modulation_linears(&blocks.pp(i), c)?;
            out.push((linear(&st, &m)?, linear(&st, &mc)?));
            self.residency.evict(i); // a streamed layer's per-run linears go again
        }
        let fin = linear(&st, &emb.norm_out)?;
        *self.run.lock().unwrap() = Some(RunModulation {
            steps: s,
            b,
            blocks: out,
            out: fin,
        });
        Ok(())
    }
}

/// The adaLN-Zero modulation of one stream of a joint block, each [B, D]: shift and scale of
/// the norm before attention and the gate of its residual, then the same for the MLP.
struct Modulation {
    shift_attn: Tensor,
    scale_attn: Tensor,
    gate_attn: Tensor,
    shift_mlp: Tensor,
    scale_mlp: Tensor,
    gate_mlp: Tensor,
}

impl Modulation {
    /// From an adaLN linear's output [B, 6D], chunked in the checkpoint's order
    /// (shift, scale, gate, shift_mlp, scale_mlp, gate_mlp).
    fn of(e: &Tensor, d: usize) -> Result<Modulation> {
        let ch = |k: usize| e.narrow(1, k * d, d);
        Ok(Modulation {
            shift_attn: ch(0)?,
            scale_attn: ch(1)?,
            gate_attn: ch(2)?,
            shift_mlp: ch(3)?,
            scale_mlp: ch(4)?,
            gate_mlp: ch(5)?,
        })
    }
}

/// The text stream's modulation: a full block's, or the last block's (context_pre_only:
/// `AdaLayerNormContinuous`, [B, 2D] chunked as (scale, shift)), which only normalises the text
/// before the attention and does not update it.
// One value per block and step, on the stack; boxing the larger variant would add an allocation.
#[allow(clippy::large_enum_variant)]
enum TextModulation {
    Full(Modulation),
    LastBlock { scale: Tensor, shift: Tensor },
}

/// One joint block: video tokens `x` [B, N, D], text tokens `c` [B, S, D], their modulations.
/// Returns the new video tokens and (except for the last block) the new text tokens.
fn joint_block(
    x: &Tensor,
    c: &Tensor,
    m: &Modulation,
    mc: &TextModulation,
    w: &BlockWeights,
    cfg: &TransformerConfig,
) -> Result<(Tensor, Option<Tensor>)> {
    let (d, heads, hd) = (cfg.dim, cfg.heads, cfg.head_dim);
    let n = x.dim(1);
    let xn = norm::layer_norm_modulate(x, &m.shift_attn, &m.scale_attn, LN_EPS)?;
    let cn = match mc {
        TextModulation::Full(mc) => {
            norm::layer_norm_modulate(c, &mc.shift_attn, &mc.scale_attn, LN_EPS)?
        }
        TextModulation::LastBlock { scale, shift } => {
            norm::layer_norm_modulate(c, shift, scale, LN_EPS)?
        }
    };

    // Joint attention over [video; text] keys and values, video queries first. One GEMM per
    // stream ([B, N, 3D] = q | k | v), the per-head q/k RMS norms in one in-place launch, and
    // q, k, v are views of it (rows at stride 3D).
    fn heads_of(col: usize, gain: &Tensor, heads: usize) -> norm::QkHeads<'_> {
        norm::QkHeads {
            col,
            heads,
            gain: Some(gain),
        }
    }
    let qkv = norm::qk_rms_norm(
        linear(&xn, &w.qkv)?,
        heads_of(0, &w.norm_q, heads),
        heads_of(d, &w.norm_k, heads),
        hd,
        QK_EPS,
    )?;
    let (q, k, v) = (
        qkv.narrow(2, 0, d)?,
        qkv.narrow(2, d, d)?,
        qkv.narrow(2, 2 * d, d)?,
    );
    // Text: q | k | v [B, S, 3D], or k | v [B, S, 2D] in the last block (its text queries
    // would be discarded).
    let has_qc = !w.context_pre_only;
    let kc0 = if has_qc { d } else { 0 };
    let cqkv = norm::qk_rms_norm(
        linear(&cn, &w.add_qkv)?,
        heads_of(0, &w.norm_added_q, if has_qc { heads } else { 0 }),
        heads_of(kc0, &w.norm_added_k, heads),
        hd,
        QK_EPS,
    )?;
    let (kc, vc) = (cqkv.narrow(2, kc0, d)?, cqkv.narrow(2, kc0 + d, d)?);
    let qc = if has_qc {
        Some(cqkv.narrow(2, 0, d)?)
    } else {
        None
    };
    let opts = AttnOpts::new(heads, hd);
    // One contiguous output per query segment ([B, N, D] video, [B, S, D] text): the output
    // projections read them in place (no copy of a batch-strided view).
    let mut o = match &qc {
        Some(qc) => attention_segs(&[&q, qc], &[&k, &kc], &[&v, &vc], &opts)?,
        None => attention_segs(&[&q], &[&k, &kc], &[&v, &vc], &opts)?,
    };

    // Video stream: gated attention residual, then the gated MLP (4x width) residual.
    let ox = o.remove(0);
    debug_assert_eq!(ox.dim(1), n);
    let x = gated_residual(x, &linear(&ox, &w.to_out)?, &m.gate_attn)?;
    let z = norm::layer_norm_modulate(&x, &m.shift_mlp, &m.scale_mlp, LN_EPS)?;
    let x = gated_residual(
        &x,
        &linear(&linear_act(&z, &w.ff1, Act::GeluTanh)?, &w.ff2)?,
        &m.gate_mlp,
    )?;
    let TextModulation::Full(mc) = mc else {
        return Ok((x, None));
    };

    // Text stream, the same with its own weights.
    let oc = o.remove(0);
    let c = gated_residual(
        c,
        &linear(&oc, w.to_add_out.as_ref().unwrap())?,
        &mc.gate_attn,
    )?;
    let z = norm::layer_norm_modulate(&c, &mc.shift_mlp, &mc.scale_mlp, LN_EPS)?;
    let (f1, f2) = w.ff_context.as_ref().unwrap();
    let c = gated_residual(
        &c,
        &linear(&linear_act(&z, f1, Act::GeluTanh)?, f2)?,
        &mc.gate_mlp,
    )?;
    Ok((x, Some(c)))
}

impl Denoiser for Transformer {
    fn forward(
        &self,
        x: &Tensor,
        timesteps: &[f32],
        ctx: &Tensor,
        pooled: &Tensor,
    ) -> Result<Tensor> {
        self.forward_taps(x, None, timesteps, ctx, pooled, None)
    }
    fn forward_step(
        &self,
        step: usize,
        x: &Tensor,
        timesteps: &[f32],
        ctx: &Tensor,
        pooled: &Tensor,
    ) -> Result<Tensor> {
        self.forward_taps(x, Some(step), timesteps, ctx, pooled, None)
    }
    fn blocks(&self) -> usize {
        self.config.layers
    }
    fn begin_blocks(&self, s: &StepInput) -> Result<BlockState> {
        self.embed(s.x, s.timesteps, s.ctx, s.pooled, &mut None)
    }
    fn run_blocks(
        &self,
        s: &StepInput,
        state: BlockState,
        blocks: std::ops::Range<usize>,
    ) -> Result<BlockState> {
        self.blocks_range(Some(s.step), state, blocks, &mut None)
    }
    fn finish_blocks(&self, s: &StepInput, state: &BlockState) -> Result<Tensor> {
        self.output(s.x, Some(s.step), state)
    }
    fn input_dtype(&self) -> DType {
        self.dtype()
    }
    fn release(&self) {
        self.store.release_all();
    }
    fn prepare_run(&self, timesteps: &[Vec<f32>], pooled: &Tensor) -> Result<()> {
        self.precompute_modulation(timesteps, pooled)
    }
    fn end_run(&self) {
        *self.run.lock().unwrap() = None;
    }
}

/// `get_timestep_embedding(t, 256, flip_sin_to_cos=True, shift=0)`: [cos(t f), sin(t f)] with
/// f_k = exp(-ln(1e4) k / 128), f32. Returns [B, 256] row-major.
pub fn timestep_features(ts: &[f32]) -> Vec<f32> {
    let half = TIME_FEATURES / 2;
    let mut out = Vec::with_capacity(ts.len() * TIME_FEATURES);
    for &t in ts {
        let args: Vec<f32> = (0..half)
            .map(|k| t * (-(10000f32.ln()) * k as f32 / half as f32).exp())
            .collect();
        out.extend(args.iter().map(|a| a.cos()));
        out.extend(args.iter().map(|a| a.sin()));
    }
    out
}

/// 1D sin-cos embedding of width `d` at position `pos`: [sin(pos w_k)..., cos(pos w_k)...],
/// w_k = 10000^(-k / (d/2)), computed in f64.
fn sincos_1d(d: usize, pos: f64, out: &mut Vec<f32>) {
    let half = d / 2;
    let omega = |k: usize| 1.0 / 10000f64.powf(k as f64 / half as f64);
    out.extend((0..half).map(|k| (pos * omega(k)).sin() as f32));
    out.extend((0..half).map(|k| (pos * omega(k)).cos() as f32));
}

/// The fixed 3D position table [T*H'*W', D] (docs/spec.md §5.3): temporal part (D/4, position t), then
/// the width part and the height part (3D/8 each, positions doubled: interpolation scale 0.5).
/// The widths are split as diffusers' `get_3d_sincos_pos_embed` does (`D // 4` temporal,
/// `3 * D // 4` spatial, halved for w and h); like it, D must be a multiple of 16 so that every
/// part is an even sin/cos pair ([`TransformerConfig::from_weights`] checks that).
pub fn pos_embed_3d(d: usize, t: usize, hp: usize, wp: usize) -> Vec<f32> {
    assert!(
        d % 16 == 0,
        "pos_embed_3d: width {d} is not a multiple of 16"
    );
    let dt = d / 4;
    let ds = 3 * d / 4 / 2;
    let mut out = Vec::with_capacity(t * hp * wp * d);
    for ti in 0..t {
        for hi in 0..hp {
            for wi in 0..wp {
                sincos_1d(dt, ti as f64, &mut out);
                sincos_1d(ds, wi as f64 / 0.5, &mut out);
                sincos_1d(ds, hi as f64 / 0.5, &mut out);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_scratch_is_the_largest_block_linear() {
        let c = TransformerConfig::contentv_8b();
        let int8 = MemoryOptions {
            int8: true,
            ..Default::default()
        };
        assert_eq!(int8_scratch_bytes(&c, &MemoryOptions::default()), 0);
        // The MLP [9728, 2432] in bf16 (larger than q|k|v [7296, 2432]).
        assert_eq!(int8_scratch_bytes(&c, &int8), 9728 * 2432 * 2);
        let narrow_mlp = TransformerConfig {
            ff_dim: c.dim,
            ..c.clone()
        };
        assert_eq!(int8_scratch_bytes(&narrow_mlp, &int8), 3 * 2432 * 2432 * 2);
    }
}
