//! Models: text encoders (CLIP-L, OpenCLIP-bigG, T5-XXL) and their tokenizers, the ContentV
//! 3D MMDiT transformer, the Wan2.1 VAE decoder, the flow-matching scheduler, the pipeline.
pub mod cache;
pub mod clip;
pub mod int8;
pub mod interfaces;
pub mod inventory;
pub mod memory;
pub mod mmdit;
pub mod pipeline;
pub mod roofline;
pub mod scheduler;
pub mod spm;
pub mod t5;
pub mod text;
pub mod tokenizer;
pub mod vae;
