//! Input and output: safetensors checkpoints and video files.
pub mod safetensors;
pub mod video;
