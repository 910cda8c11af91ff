//! What the pipeline asks of the models, in one module both use: the prompt encoder
//! ([`PromptEncoding`]), the transformer ([`Denoiser`]) and the VAE ([`FrameDecoder`]), and the
//! shapes they exchange. The models implement these next to their code (model/text.rs,
//! model/mmdit.rs, model/vae.rs); the pipeline (model/pipeline) only sees the traits, so its
//! loop can be tested with stand-ins.
use crate::error::Result;
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

/// The VAE: DiT-space latents [1, C, T, h, w] (de-normalised inside) to video [1, 3, F, H, W] in [-1, 1].
pub trait FrameDecoder {
    fn decode(&self, latents: &Tensor) -> Result<Tensor>;
    /// A decode that needs less memory (spatial tiles), tried after an out-of-memory error.
    fn decode_low_memory(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode(latents)
    }
}
