//! Decoded frames: the video tensor as RGB bytes (diffusers' postprocess + export).
use crate::error::Result;
use crate::runtime::Tensor;
use crate::shape_err;

/// Decoded frames of one video, [F, H, W, 3] u8 row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VideoFrames {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<u8>,
}

impl VideoFrames {
    /// Frame `i` as H*W*3 bytes (RGB).
    pub fn frame(&self, i: usize) -> &[u8] {
        let n = self.height * self.width * 3;
        &self.data[i * n..(i + 1) * n]
    }
}

/// `uint8(clamp(v*0.5 + 0.5, 0, 1) * 255)` (truncation, as diffusers' postprocess + export) for
/// video `batch` of a [B, 3, F, H, W] tensor, as frames [F, H, W, 3].
pub fn to_uint8_frames(video: &Tensor, batch: usize) -> Result<VideoFrames> {
    let s = video.shape();
    if s.len() != 5 || s[1] != 3 || batch >= s[0] {
        return Err(shape_err!(
            "to_uint8_frames: video must be [B, 3, F, H, W] with batch {batch} < B, got {s:?}"
        ));
    }
    let (f, h, w) = (s[2], s[3], s[4]);
    let v = video.narrow(0, batch, 1)?.to_vec_f32()?;
    let plane = h * w;
    let mut data = vec![0u8; f * plane * 3];
    for c in 0..3 {
        for fi in 0..f {
            let src = &v[(c * f + fi) * plane..(c * f + fi + 1) * plane];
            let dst = &mut data[fi * plane * 3..(fi + 1) * plane * 3];
            for (p, &x) in src.iter().enumerate() {
                dst[p * 3 + c] = to_u8(x);
            }
        }
    }
    Ok(VideoFrames {
        frames: f,
        height: h,
        width: w,
        data,
    })
}

/// One value: `(clamp(x*0.5+0.5, 0, 1) * 255) as u8` (NaN maps to 0).
pub fn to_u8(x: f32) -> u8 {
    let v = (x * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0;
    if v.is_nan() {
        0
    } else {
        v as u8
    }
}
