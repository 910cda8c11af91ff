//! What the pipeline asks of the models, in one module both use: the prompt encoder
//! ([`PromptEncoding`]), the transformer ([`Denoiser`]) and the VAE ([`FrameDecoder`]), and the
//! shapes they exchange. The models implement these next to their code (model/text.rs,
//! model/mmdit.rs, model/vae/); the pipeline (model/pipeline) only sees the traits, so its
//! loop can be tested with stand-ins.
use std::ops::Range;

use crate::error::{Error, Result};
use crate::runtime::{DType, Tensor};

/// Text tokens per prompt (77 CLIP + 256 T5) and their width.
pub const TEXT_TOKENS: usize = 333;
pub const TEXT_DIM: usize = 4096;
pub const POOLED_DIM: usize = 2048;

/// Prompt embeddings: `ctx` [333, 4096] (or [1, 333, 4096]) and `pooled` [2048] (or [1, 2048]).
#[derive(Clone, Debug)]
pub struct PromptEmbeds {
    pub ctx: Tensor,
    pub pooled: Tensor,
}

/// Text side: one prompt to its embeddings.
pub trait PromptEncoding {
    fn encode(&self, prompt: &str) -> Result<PromptEmbeds>;
    /// [`Self::encode`] of the text called `which` in messages ("negative prompt").
    fn encode_as(&self, prompt: &str, which: &str) -> Result<PromptEmbeds> {
        let _ = which;
        self.encode(prompt)
    }
    /// The truncation warnings [`Self::encode_as`] prints for this text (one line per tokenizer
    /// that dropped tokens), for callers that report them elsewhere (the server's job).
    fn truncation_warnings(&self, prompt: &str, which: &str) -> Result<Vec<String>> {
        let _ = (prompt, which);
        Ok(Vec::new())
    }
}

/// The transformer: velocity for latents `x` [B, C, T, h, w] (C latent channels), one timestep per batch entry,
/// context [B, 333, 4096], pooled [B, 2048]. Returns [B, C, T, h, w].
pub trait Denoiser {
    fn forward(
        &self,
        x: &Tensor,
        timesteps: &[f32],
        ctx: &Tensor,
        pooled: &Tensor,
    ) -> Result<Tensor>;
    /// Step `step` of the run announced by [`Self::prepare_run`] (`timesteps` are that step's):
    /// a model may use what it precomputed for the step. The default is [`Self::forward`].
    fn forward_step(
        &self,
        step: usize,
        x: &Tensor,
        timesteps: &[f32],
        ctx: &Tensor,
        pooled: &Tensor,
    ) -> Result<Tensor> {
        let _ = step;
        self.forward(x, timesteps, ctx, pooled)
    }
    /// The number of blocks a forward can be split into ([`Self::begin_blocks`],
    /// [`Self::run_blocks`], [`Self::finish_blocks`]); 0: this model cannot be split (the
    /// first-block cache then refuses to run).
    fn blocks(&self) -> usize {
        0
    }
    /// The first part of a split forward of step `step`: the embeddings, before block 0.
    fn begin_blocks(&self, step: &StepInput) -> Result<BlockState> {
        let _ = step;
        Err(Error::Other(
            "this transformer cannot run its blocks separately".into(),
        ))
    }
    /// Blocks `blocks` of a split forward, from `state` (after the blocks before them).
    fn run_blocks(
        &self,
        step: &StepInput,
        state: BlockState,
        blocks: Range<usize>,
    ) -> Result<BlockState> {
        let _ = (step, state, blocks);
        Err(Error::Other(
            "this transformer cannot run its blocks separately".into(),
        ))
    }
    /// The end of a split forward: the output layer on the video stream of `state` (after
    /// every block) -> the velocity [B, C, T, h, w].
    fn finish_blocks(&self, step: &StepInput, state: &BlockState) -> Result<Tensor> {
        let _ = (step, state);
        Err(Error::Other(
            "this transformer cannot run its blocks separately".into(),
        ))
    }
    /// The dtype the latents are fed in (f32 on the CPU reference path, bf16 on the GPU).
    fn input_dtype(&self) -> DType {
        DType::F32
    }
    /// Frees the device memory of the weights (they are loaded again on the next forward).
    fn release(&self) {}
    /// Called before a denoising run with every step's timesteps and the pooled text
    /// [B, pooled]: a model may precompute what depends on them alone (the adaLN modulation).
    fn prepare_run(&self, _timesteps: &[Vec<f32>], _pooled: &Tensor) -> Result<()> {
        Ok(())
    }
    /// Called after the run: drop what `prepare_run` computed.
    fn end_run(&self) {}
}

/// The inputs of one denoising step, for a forward split into blocks.
pub struct StepInput<'a> {
    /// The step's index in the run given to [`Denoiser::prepare_run`].
    pub step: usize,
    /// Latents [B, C, T, h, w].
    pub x: &'a Tensor,
    /// One timestep per batch entry.
    pub timesteps: &'a [f32],
    /// Text context [B, 333, 4096] and pooled text [B, 2048].
    pub ctx: &'a Tensor,
    pub pooled: &'a Tensor,
}

/// The streams of a forward between blocks: video tokens `hidden` [B, N, D], text tokens
/// `text` [B, S, D] and what every block's modulation reads (`cond`, SiLU of the timestep
/// embedding [B, D]). After the last block `text` is that block's input (the last block does
/// not update it) and only `hidden` feeds the output layer.
pub struct BlockState {
    pub hidden: Tensor,
    pub text: Tensor,
    pub cond: Tensor,
}

/// The VAE: DiT-space latents [1, C, T, h, w] (de-normalised inside) to video [1, 3, F, H, W] in [-1, 1].
pub trait FrameDecoder {
    fn decode(&self, latents: &Tensor) -> Result<Tensor>;
    /// A decode that needs less memory (spatial tiles), tried after an out-of-memory error.
    fn decode_low_memory(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode(latents)
    }
}
