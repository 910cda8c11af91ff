//! Input and output: safetensors checkpoints, component config.json files and video files.
pub mod base64;
pub mod config;
pub mod fsutil;
pub mod safetensors;
pub mod video;
