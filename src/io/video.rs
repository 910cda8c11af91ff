//! Writing generated videos.
//!
//! * With the `ffmpeg` cargo feature (default): an MP4 with one H.264 stream (libx264, yuv420p,
//!   constant rate factor `crf`), every frame lasting exactly `1/fps` (the packet duration is set,
//!   so the last frame is not dropped and the duration is `frames / fps`).
//! * Without it: one PNG per frame (`frame_00000.png`, ...) plus `video.json` (fps, size, count)
//!   in a folder named like the requested file without its extension. The PNG encoder is the
//!   minimal one below (zlib *stored* blocks, no compression, CRC-32 + Adler-32): no dependency.
//!
//! Either way the video is written under a temporary name in the destination folder and renamed
//! into place once complete, so a failure (or a crash) never leaves a partial file under the
//! requested name; the temporary file is removed on failure, on SIGINT/SIGTERM/SIGHUP when the
//! command line installed [`fsutil::install_interrupt_cleanup`], and otherwise (SIGKILL, power
//! loss) by the next run that writes the same output ([`fsutil::clean_stale_partials`]).
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::fsutil;
use crate::error::{Error, Result};

/// Output settings.
#[derive(Clone, Copy, Debug)]
pub struct VideoOptions {
    /// Frames per second (1..=240).
    pub fps: u32,
    /// x264 constant rate factor, 0 (lossless) ..= 51 (worst). Ignored for PNG output.
    pub crf: u8,
}

impl Default for VideoOptions {
    fn default() -> Self {
        VideoOptions { fps: 24, crf: 18 }
    }
}

/// Frames to write: `frames` RGB images of `height x width`, `data` is [F, H, W, 3] u8.
#[derive(Clone, Copy, Debug)]
pub struct FramesRef<'a> {
    pub data: &'a [u8],
    pub frames: usize,
    pub height: usize,
    pub width: usize,
}

impl FramesRef<'_> {
    fn check(&self) -> Result<()> {
        if self.frames == 0 || self.height == 0 || self.width == 0 {
            return Err(Error::Input(format!(
                "cannot write an empty video ({} frames of {}x{})",
                self.frames, self.width, self.height
            )));
        }
        if self.data.len() != self.frames * self.height * self.width * 3 {
            return Err(Error::Shape(format!(
                "video data holds {} bytes, {} RGB frames of {}x{} need {}",
                self.data.len(),
                self.frames,
                self.width,
                self.height,
                self.frames * self.height * self.width * 3
            )));
        }
        Ok(())
    }
    fn frame(&self, i: usize) -> &[u8] {
        let n = self.height * self.width * 3;
        &self.data[i * n..(i + 1) * n]
    }
}

/// Whether this build writes MP4 (true) or PNG folders (false).
pub const fn writes_mp4() -> bool {
    cfg!(feature = "ffmpeg")
}

/// The path a request for `requested` actually produces: the file itself with the `ffmpeg`
/// feature, else the PNG folder (the path without its extension).
pub fn artifact_path(requested: &Path) -> PathBuf {
    if writes_mp4() {
        requested.to_path_buf()
    } else {
        requested.with_extension("")
    }
}

/// x264's thread count (see the encoder setup).
#[cfg(feature = "ffmpeg")]
const X264_THREADS: &str = "8";

/// The largest frame rate and x264 quality value accepted.
pub const MAX_FPS: u32 = 240;
pub const MAX_CRF: u8 = 51;

/// Checks that `fps` and `crf` are in range.
pub fn check_options(o: &VideoOptions) -> Result<()> {
    if o.fps == 0 || o.fps > MAX_FPS {
        return Err(Error::Input(format!(
            "--fps must be between 1 and {MAX_FPS}, got {}",
            o.fps
        )));
    }
    if o.crf > MAX_CRF {
        return Err(Error::Input(format!(
            "--crf must be between 0 and {MAX_CRF}, got {}",
            o.crf
        )));
    }
    Ok(())
}

/// Checks, before expensive work, that the video for `requested` can be written: its folder
/// exists (it is created if needed) and is writable (a probe file is created and removed
/// there), and what is already at the path is a file that may be replaced (not a folder, not
/// read-only). Replacing an existing finished video is allowed: the new one is written under a
/// temporary name and renamed over it only when complete.
pub fn check_writable(requested: &Path) -> Result<()> {
    // Most file systems allow 255 bytes per name; the temporary name adds about 40.
    if let Some(n) = requested.file_name() {
        if n.len() > MAX_NAME_BYTES {
            return Err(Error::Input(format!(
                "the file name of {} is {} bytes long; keep it under {MAX_NAME_BYTES} bytes",
                requested.display(),
                n.len()
            )));
        }
    }
    let dir = parent_dir(requested);
    if dir.exists() && !dir.is_dir() {
        return Err(Error::Input(format!(
            "cannot write {}: {} is a file, not a folder",
            requested.display(),
            dir.display()
        )));
    }
    fs::create_dir_all(&dir).map_err(|e| {
        Error::Input(format!(
            "cannot create the output folder {}: {e}",
            dir.display()
        ))
    })?;
    let probe = dir.join(format!(
        ".contentv-write-test-{}-{}",
        std::process::id(),
        unique()
    ));
    match fs::File::create(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
        }
        Err(e) => {
            return Err(Error::Input(format!(
                "the output folder {} is not writable: {e}",
                dir.display()
            )))
        }
    }
    check_replaceable(requested)
}

/// What a run writes, for the rule that a path a run writes may only replace a previous output
/// of the same kind: never a model file, a batch file, an init-noise file or a user's file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// A video (an MP4/MOV/MKV file, or the PNG-frame folder of builds without FFmpeg).
    Video,
    /// A latents file of `generate --save-latents` (safetensors, metadata format
    /// "contentv-latents").
    Latents,
}

/// Ok if nothing is at `p`, or what is there is a previous output of `kind`; otherwise an error
/// naming `flag` and the path. Reads at most the file's header.
pub fn check_previous_output(p: &Path, kind: OutputKind, flag: &str) -> Result<()> {
    let m = match fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::Input(format!("{flag} {}: {e}", p.display()))),
    };
    let (ours, what) = match kind {
        OutputKind::Video if m.is_dir() => (p.join("video.json").is_file(), "PNG-frame folder"),
        OutputKind::Video => (is_video_container(p), "video (MP4, MOV or MKV)"),
        OutputKind::Latents => (
            m.is_file()
                && crate::io::safetensors::SafeTensorsFile::open(p).is_ok_and(|f| {
                    f.metadata().get("format").map(String::as_str) == Some("contentv-latents")
                }),
            "latents file written by contentv",
        ),
    };
    if ours {
        return Ok(());
    }
    Err(Error::Input(format!(
        "{flag} {} exists and is not a {what}; contentv only replaces its own previous outputs \
         (this may be an input of the run or your own file): remove it or choose another name",
        p.display()
    )))
}

/// Whether the file starts like an ISO media file (MP4, MOV: a box whose type is `ftyp`,
/// `moov`, `mdat`, `free`, `skip` or `wide`) or a Matroska/WebM file (the EBML magic).
fn is_video_container(p: &Path) -> bool {
    use std::io::Read;
    let mut b = [0u8; 12];
    let n = fs::File::open(p)
        .and_then(|mut f| f.read(&mut b))
        .unwrap_or(0);
    if n < 8 {
        return false;
    }
    let boxes: [&[u8; 4]; 6] = [b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide"];
    boxes.iter().any(|t| &b[4..8] == *t) || b[..4] == [0x1A, 0x45, 0xDF, 0xA3]
}

/// Longest output file name accepted (bytes).
pub const MAX_NAME_BYTES: usize = 200;

/// What is at `p` (if anything) may be replaced by a new file: not a folder, not read-only.
pub fn check_replaceable(p: &Path) -> Result<()> {
    let m = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::Input(format!(
                "cannot use the output path {}: {e}",
                p.display()
            )))
        }
    };
    if m.is_dir() {
        return Err(Error::Input(format!(
            "{} is a folder; give a file name (e.g. {})",
            p.display(),
            p.join("video.mp4").display()
        )));
    }
    if m.is_file() && m.permissions().readonly() {
        return Err(Error::Input(format!(
            "{} exists and is read-only, so it is not replaced: remove it, make it writable or choose another name",
            p.display()
        )));
    }
    Ok(())
}

fn parent_dir(p: &Path) -> PathBuf {
    fsutil::parent_dir(p)
}

fn unique() -> usize {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A temporary path next to `final_path` that is removed on drop unless committed, and by the
/// interrupt handler ([`fsutil::install_interrupt_cleanup`]) if the process is interrupted.
struct TempTarget {
    tmp: PathBuf,
    final_path: PathBuf,
    committed: bool,
    _guard: fsutil::InterruptGuard,
}

impl TempTarget {
    fn new(final_path: &Path) -> Result<TempTarget> {
        let tmp = fsutil::partial_name(final_path, unique()).ok_or_else(|| {
            Error::Input(format!(
                "the output path {} has no file name",
                final_path.display()
            ))
        })?;
        let _guard = fsutil::InterruptGuard::new(&tmp);
        Ok(TempTarget {
            tmp,
            final_path: final_path.to_path_buf(),
            committed: false,
            _guard,
        })
    }

    fn commit(mut self) -> Result<PathBuf> {
        if self.final_path.is_dir() && self.tmp.is_dir() {
            fs::remove_dir_all(&self.final_path).map_err(|e| {
                Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("replacing {}: {e}", self.final_path.display()),
                ))
            })?;
        }
        fs::rename(&self.tmp, &self.final_path).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!(
                    "cannot move {} to {}: {e}",
                    self.tmp.display(),
                    self.final_path.display()
                ),
            ))
        })?;
        self.committed = true;
        Ok(self.final_path.clone())
    }
}

impl Drop for TempTarget {
    fn drop(&mut self) {
        if !self.committed {
            if self.tmp.is_dir() {
                let _ = fs::remove_dir_all(&self.tmp);
            } else {
                let _ = fs::remove_file(&self.tmp);
            }
        }
    }
}

/// Writes the video for the request `requested` (see [`artifact_path`]) and returns the path
/// written. Nothing appears under that path unless the whole video was written.
pub fn write_video(requested: &Path, frames: FramesRef, opts: &VideoOptions) -> Result<PathBuf> {
    write_video_tagged(requested, frames, opts, &[])
}

/// [`write_video`] with metadata tags (key, value): in the MP4 container's metadata (the
/// `mov` muxer keeps `title`, `comment`, `description` and the other iTunes-style keys it
/// knows; ffprobe shows them under `format.tags`), or under `"tags"` in a PNG folder's
/// `video.json`.
pub fn write_video_tagged(
    requested: &Path,
    frames: FramesRef,
    opts: &VideoOptions,
    tags: &[(String, String)],
) -> Result<PathBuf> {
    frames.check()?;
    check_options(opts)?;
    let out = artifact_path(requested);
    let dir = parent_dir(&out);
    fs::create_dir_all(&dir).map_err(|e| {
        Error::Input(format!(
            "cannot create the output folder {}: {e}",
            dir.display()
        ))
    })?;
    if writes_mp4() {
        check_replaceable(&out)?;
    }
    // Partial files of this output left by a killed run (same host, process gone).
    for p in fsutil::clean_stale_partials(&out) {
        eprintln!("note: removed {}, left by an interrupted run", p.display());
    }
    let tmp = TempTarget::new(&out)?;
    if writes_mp4() {
        #[cfg(feature = "ffmpeg")]
        mp4::write(&tmp.tmp, frames, opts, tags)?;
    } else {
        write_png_folder(&tmp.tmp, frames, opts)?;
        if !tags.is_empty() {
            let p = tmp.tmp.join("video.json");
            let mut meta: serde_json::Value = serde_json::from_str(&fs::read_to_string(&p)?)
                .map_err(|e| Error::Other(format!("{}: {e}", p.display())))?;
            meta["tags"] = tags
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect::<serde_json::Map<_, _>>()
                .into();
            fs::write(&p, serde_json::to_string_pretty(&meta).unwrap())?;
        }
    }
    tmp.commit()
}

/// PNG frames + `video.json` into the folder `dir` (created).
pub fn write_png_folder(dir: &Path, frames: FramesRef, opts: &VideoOptions) -> Result<()> {
    frames.check()?;
    fs::create_dir_all(dir)?;
    for i in 0..frames.frames {
        let png = encode_png_rgb(frames.frame(i), frames.width, frames.height)?;
        fs::write(dir.join(format!("frame_{i:05}.png")), png)?;
    }
    let meta = serde_json::json!({
        "frames": frames.frames, "width": frames.width, "height": frames.height, "fps": opts.fps,
        "pattern": "frame_%05d.png",
        "note": "built without the `ffmpeg` feature; to make an MP4: ffmpeg -framerate FPS -i frame_%05d.png -c:v libx264 -pix_fmt yuv420p out.mp4",
    });
    fs::write(
        dir.join("video.json"),
        serde_json::to_string_pretty(&meta).unwrap(),
    )?;
    Ok(())
}

// ----- PNG frames (the `png` crate) ---------------------------------------------------------

/// An 8-bit RGB PNG of `rgb` (H*W*3 bytes, rows top to bottom). Fixed settings (fdeflate's
/// fast DEFLATE, adaptive row filters, no time or text chunks): the same frame gives the same
/// bytes on every run with a given `png` version (pinned in Cargo.lock).
pub fn encode_png_rgb(rgb: &[u8], width: usize, height: usize) -> Result<Vec<u8>> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::Input(format!("cannot encode a {width}x{height} PNG frame: {e}"))
    };
    if rgb.len() != width * height * 3 {
        return Err(bad(&format!(
            "{} bytes of pixels, expected {}",
            rgb.len(),
            width * height * 3
        )));
    }
    let (w, h) = (
        u32::try_from(width).map_err(|e| bad(&e))?,
        u32::try_from(height).map_err(|e| bad(&e))?,
    );
    let mut out = Vec::with_capacity(rgb.len() / 2 + 1024);
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_deflate_compression(png::DeflateCompression::FdeflateUltraFast);
    enc.set_filter(png::Filter::Adaptive);
    let mut writer = enc.write_header().map_err(|e| bad(&e))?;
    writer.write_image_data(rgb).map_err(|e| bad(&e))?;
    writer.finish().map_err(|e| bad(&e))?;
    Ok(out)
}

/// Decodes an 8-bit RGB PNG (what [`encode_png_rgb`] writes) to (width, height, rgb). Other
/// colour types and depths are refused; the `png` crate's default limits bound the memory.
pub fn decode_png_rgb(png_bytes: &[u8]) -> Result<(usize, usize, Vec<u8>)> {
    let bad = |e: &dyn std::fmt::Display| Error::Input(format!("not a readable PNG frame: {e}"));
    let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes))
        .read_info()
        .map_err(|e| bad(&e))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad(&"the image is too large"))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| bad(&e))?;
    if info.color_type != png::ColorType::Rgb || info.bit_depth != png::BitDepth::Eight {
        return Err(bad(&format!(
            "{:?} {:?}, expected 8-bit RGB",
            info.color_type, info.bit_depth
        )));
    }
    buf.truncate(info.buffer_size());
    Ok((info.width as usize, info.height as usize, buf))
}

/// A decoded video (for tests and round trips).
#[derive(Clone, Debug)]
pub struct DecodedVideo {
    pub frames: usize,
    pub width: usize,
    pub height: usize,
    /// Average frame rate as stored in the container.
    pub fps: f64,
    /// Container duration in seconds (0 if unknown).
    pub duration_s: f64,
    pub codec: String,
    pub pixel_format: String,
    /// RGB24 [F, H, W, 3].
    pub rgb: Vec<u8>,
    /// Metadata tags (the container's, or `video.json`'s "tags"), sorted by key.
    pub tags: Vec<(String, String)>,
}

/// Reads a video written by [`write_video`]: an MP4 (ffmpeg feature) or a PNG folder.
pub fn read_video(path: &Path) -> Result<DecodedVideo> {
    if path.is_dir() {
        let meta: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(path.join("video.json"))?)
                .map_err(|e| Error::Input(format!("{}/video.json: {e}", path.display())))?;
        let n = meta["frames"].as_u64().unwrap_or(0) as usize;
        let fps = meta["fps"].as_f64().unwrap_or(0.0);
        let (mut w, mut h, mut rgb) = (0, 0, Vec::new());
        for i in 0..n {
            let frame = path.join(format!("frame_{i:05}.png"));
            let (fw, fh, d) = decode_png_rgb(&fs::read(&frame)?)
                .map_err(|e| Error::Input(format!("{}: {e}", frame.display())))?;
            (w, h) = (fw, fh);
            rgb.extend_from_slice(&d);
        }
        return Ok(DecodedVideo {
            frames: n,
            width: w,
            height: h,
            fps,
            duration_s: if fps > 0.0 { n as f64 / fps } else { 0.0 },
            codec: "png".into(),
            pixel_format: "rgb24".into(),
            rgb,
            tags: meta["tags"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    #[cfg(feature = "ffmpeg")]
    {
        mp4::read(path)
    }
    #[cfg(not(feature = "ffmpeg"))]
    {
        Err(Error::Input(format!(
            "{}: reading video files needs the `ffmpeg` feature",
            path.display()
        )))
    }
}

#[cfg(feature = "ffmpeg")]
mod mp4 {
    use std::path::Path;

    use ff::{
        codec, encoder, format, software::scaling, util::frame::video::Video as VFrame, Dictionary,
        Packet, Rational,
    };
    use ffmpeg_next as ff;

    use super::{DecodedVideo, FramesRef, VideoOptions};
    use crate::error::{Error, Result};

    fn fe(what: &str) -> impl Fn(ff::Error) -> Error + '_ {
        move |e| Error::Other(format!("video encoding ({what}): {e}"))
    }

    fn init() -> Result<()> {
        static INIT: std::sync::OnceLock<std::result::Result<(), String>> =
            std::sync::OnceLock::new();
        INIT.get_or_init(|| {
            ff::init().map_err(|e| e.to_string())?;
            ff::log::set_level(ff::log::Level::Error);
            Ok(())
        })
        .clone()
        .map_err(|e| Error::Other(format!("cannot initialise FFmpeg: {e}")))
    }

    pub fn write(
        path: &Path,
        frames: FramesRef,
        opts: &VideoOptions,
        tags: &[(String, String)],
    ) -> Result<()> {
        init()?;
        let (w, h) = (frames.width as u32, frames.height as u32);
        if w % 2 != 0 || h % 2 != 0 {
            return Err(Error::Input(format!(
                "H.264 yuv420p needs an even width and height, got {w}x{h}"
            )));
        }
        let mut octx = format::output(&path).map_err(fe("opening the output"))?;
        if !tags.is_empty() {
            let mut md = Dictionary::new();
            for (k, v) in tags {
                md.set(k, v);
            }
            octx.set_metadata(md);
        }
        let global_header = octx.format().flags().contains(format::Flags::GLOBAL_HEADER);
        let codec = encoder::find_by_name("libx264")
            .or_else(|| encoder::find(codec::Id::H264))
            .ok_or_else(|| Error::Other("this FFmpeg has no H.264 encoder (libx264); rebuild without the `ffmpeg` feature for PNG frames".into()))?;
        let fps = Rational::new(opts.fps as i32, 1);
        let tb = Rational::new(1, opts.fps as i32);
        let mut ost = octx.add_stream(codec).map_err(fe("adding the stream"))?;
        let ost_index = ost.index();
        let mut enc = codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(fe("encoder context"))?;
        enc.set_width(w);
        enc.set_height(h);
        enc.set_format(format::Pixel::YUV420P);
        enc.set_time_base(tb);
        enc.set_frame_rate(Some(fps));
        if global_header {
            enc.set_flags(codec::Flags::GLOBAL_HEADER);
        }
        let mut dict = Dictionary::new();
        dict.set("crf", &opts.crf.to_string());
        dict.set("preset", "medium");
        // A fixed thread count: x264's output depends on it (frame threads change what rate
        // control sees), and "auto" follows the core count, so the same run on another machine
        // would give other bytes. 8 frame threads keep encoding far from the step's cost.
        dict.set("threads", super::X264_THREADS);
        let mut enc = enc.open_with(dict).map_err(fe("opening libx264"))?;
        ost.set_parameters(&enc);
        ost.set_time_base(tb);
        ost.set_avg_frame_rate(fps);
        ost.set_rate(fps);
        octx.write_header().map_err(fe("writing the header"))?;
        // The muxer may have changed the stream time base: read it after write_header.
        let ost_tb = octx.stream(ost_index).unwrap().time_base();

        let mut sws = scaling::Context::get(
            format::Pixel::RGB24,
            w,
            h,
            format::Pixel::YUV420P,
            w,
            h,
            scaling::Flags::BILINEAR,
        )
        .map_err(fe("colour conversion"))?;
        let mut rgb = VFrame::new(format::Pixel::RGB24, w, h);
        let mut yuv = VFrame::empty();
        let drain = |enc: &mut encoder::Video, octx: &mut format::context::Output| -> Result<()> {
            let mut pkt = Packet::empty();
            while enc.receive_packet(&mut pkt).is_ok() {
                pkt.set_stream(ost_index);
                pkt.set_duration(1); // one frame, in encoder ticks; without it the last frame has no duration
                pkt.rescale_ts(tb, ost_tb);
                pkt.write_interleaved(octx)
                    .map_err(fe("writing a packet"))?;
            }
            Ok(())
        };
        let row = frames.width * 3;
        for i in 0..frames.frames {
            let src = frames.frame(i);
            let stride = rgb.stride(0);
            let dst = rgb.data_mut(0);
            for y in 0..frames.height {
                dst[y * stride..y * stride + row].copy_from_slice(&src[y * row..(y + 1) * row]);
            }
            sws.run(&rgb, &mut yuv).map_err(fe("colour conversion"))?;
            yuv.set_pts(Some(i as i64));
            enc.send_frame(&yuv).map_err(fe("encoding a frame"))?;
            drain(&mut enc, &mut octx)?;
        }
        enc.send_eof().map_err(fe("flushing the encoder"))?;
        drain(&mut enc, &mut octx)?;
        octx.write_trailer().map_err(fe("writing the trailer"))?;
        Ok(())
    }

    pub fn read(path: &Path) -> Result<DecodedVideo> {
        init()?;
        let re =
            |e: ff::Error| Error::Input(format!("cannot read the video {}: {e}", path.display()));
        let mut ictx = format::input(&path).map_err(re)?;
        let ist = ictx
            .streams()
            .best(ff::media::Type::Video)
            .ok_or_else(|| Error::Input(format!("{}: no video stream", path.display())))?;
        let idx = ist.index();
        let fr = ist.avg_frame_rate();
        let fps = if fr.denominator() != 0 {
            fr.numerator() as f64 / fr.denominator() as f64
        } else {
            0.0
        };
        let dur = ictx.duration();
        let duration_s = if dur > 0 {
            dur as f64 / ff::ffi::AV_TIME_BASE as f64
        } else {
            0.0
        };
        let mut dec = codec::context::Context::from_parameters(ist.parameters())
            .map_err(re)?
            .decoder()
            .video()
            .map_err(re)?;
        let codec_name = dec
            .codec()
            .map(|c| c.name().to_string())
            .unwrap_or_default();
        let (w, h) = (dec.width(), dec.height());
        let pixel_format = format!("{:?}", dec.format()).to_lowercase();
        let mut sws = scaling::Context::get(
            dec.format(),
            w,
            h,
            format::Pixel::RGB24,
            w,
            h,
            scaling::Flags::BILINEAR,
        )
        .map_err(re)?;
        let mut out = Vec::new();
        let mut n = 0usize;
        let mut take =
            |dec: &mut ff::decoder::Video, out: &mut Vec<u8>, n: &mut usize| -> Result<()> {
                let mut f = VFrame::empty();
                while dec.receive_frame(&mut f).is_ok() {
                    let mut rgb = VFrame::empty();
                    sws.run(&f, &mut rgb).map_err(re)?;
                    let s = rgb.stride(0);
                    for y in 0..h as usize {
                        out.extend_from_slice(&rgb.data(0)[y * s..y * s + w as usize * 3]);
                    }
                    *n += 1;
                }
                Ok(())
            };
        for (s, pkt) in ictx.packets() {
            if s.index() == idx {
                dec.send_packet(&pkt).map_err(re)?;
                take(&mut dec, &mut out, &mut n)?;
            }
        }
        dec.send_eof().map_err(re)?;
        take(&mut dec, &mut out, &mut n)?;
        Ok(DecodedVideo {
            frames: n,
            width: w as usize,
            height: h as usize,
            fps,
            duration_s,
            codec: codec_name,
            pixel_format,
            rgb: out,
            tags: {
                let mut t: Vec<(String, String)> = ictx
                    .metadata()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                t.sort();
                t
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames written through [`write_video`] decode back, with the `png` crate, to the same
    /// pixels; the bytes are the same on a second write (fixed settings); nothing but the final
    /// folder is left in the destination.
    #[test]
    fn png_frames_round_trip_and_are_reproducible() {
        let d = std::env::temp_dir().join(format!("contentv-png-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        // > 64 KiB per frame, a smooth ramp and noise (filters and DEFLATE both matter)
        let (f, w, h) = (3usize, 300usize, 250usize);
        let rgb: Vec<u8> = (0..f * w * h * 3)
            .map(|i| {
                if i % 7 == 0 {
                    (i.wrapping_mul(2654435761) >> 13) as u8
                } else {
                    (i / 3 % w) as u8
                }
            })
            .collect();
        let frames = FramesRef {
            data: &rgb,
            frames: f,
            height: h,
            width: w,
        };
        let opts = VideoOptions::default();
        let one = write_png_folder_bytes(&d.join("a"), frames, &opts);
        let two = write_png_folder_bytes(&d.join("b"), frames, &opts);
        assert_eq!(one, two, "the same frames give the same bytes");
        for (i, bytes) in one.iter().enumerate() {
            let mut dec = png::Decoder::new(std::io::Cursor::new(bytes.as_slice()))
                .read_info()
                .unwrap();
            let mut buf = vec![0u8; dec.output_buffer_size().unwrap()];
            let info = dec.next_frame(&mut buf).unwrap();
            assert_eq!((info.width, info.height), (w as u32, h as u32));
            assert_eq!(info.color_type, png::ColorType::Rgb);
            assert_eq!(&buf[..info.buffer_size()], frames.frame(i), "frame {i}");
            assert!(bytes.len() < w * h * 3, "frame {i} is compressed");
        }
        if !writes_mp4() {
            let out = write_video(&d.join("v.mp4"), frames, &opts).unwrap();
            assert_eq!(out, d.join("v"));
            let v = read_video(&out).unwrap();
            assert_eq!((v.frames, v.width, v.height), (f, w, h));
            assert_eq!(v.rgb, rgb);
            let mut names: Vec<String> = fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, ["a", "b", "v"], "no partial folder left");
        }
        // a frame that is not what it claims to be is an error, not a panic
        assert!(encode_png_rgb(&rgb[..10], w, h).is_err());
        assert!(decode_png_rgb(&one[0][..one[0].len() / 2]).is_err());
        assert!(decode_png_rgb(b"not a png").is_err());
        let _ = fs::remove_dir_all(&d);
    }

    fn write_png_folder_bytes(dir: &Path, frames: FramesRef, opts: &VideoOptions) -> Vec<Vec<u8>> {
        write_png_folder(dir, frames, opts).unwrap();
        (0..frames.frames)
            .map(|i| fs::read(dir.join(format!("frame_{i:05}.png"))).unwrap())
            .collect()
    }

    #[test]
    fn temp_names_keep_extension() {
        let t = TempTarget::new(Path::new("/tmp/x/y.mp4")).unwrap();
        let n = t.tmp.file_name().unwrap().to_string_lossy().to_string();
        assert!(n.starts_with(".y.partial-") && n.ends_with(".mp4"), "{n}");
        assert_eq!(t.tmp.parent().unwrap(), Path::new("/tmp/x"));
    }
}
