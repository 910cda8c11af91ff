//! `contentv._engine`: the extension module under the `contentv` Python package (the
//! diffusers-style API is Python, in python/python/contentv/__init__.py). This file is the
//! PyO3 side only: argument conversion, the GIL (released while the engine works), signals
//! (Ctrl-C stops the run at the next step boundary), errors as Python exceptions, and arrays
//! handed to NumPy without a copy. Everything that calls the engine is in `engine.rs`.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Mutex;
use std::time::Duration;

use pyo3::exceptions::{
    PyFileNotFoundError, PyKeyboardInterrupt, PyMemoryError, PyOSError, PyRuntimeError,
    PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

mod engine;

use contentv::cli::args::CacheArgs;
use contentv::error::Error;

/// The engine's error as a Python exception: bad input is ValueError (FileNotFoundError when
/// a file or folder is missing), a broken checkpoint ValueError, device memory exhausted
/// MemoryError, file system errors OSError, the rest RuntimeError; the message is the engine's.
fn py_err(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Input(m) if m.contains("does not exist") || m.contains("is missing") => {
            PyFileNotFoundError::new_err(msg)
        }
        Error::Input(_) | Error::Weights(_) | Error::Shape(_) => PyValueError::new_err(msg),
        Error::OutOfMemory { .. } => PyMemoryError::new_err(msg),
        Error::Io(_) => PyOSError::new_err(msg),
        Error::Cancelled => PyKeyboardInterrupt::new_err("cancelled"),
        _ => PyRuntimeError::new_err(msg),
    }
}

/// Values handed to NumPy: `numpy.asarray(buffer)` reads `__array_interface__` and keeps the
/// buffer alive as the array's base, so no byte is copied.
enum Data {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

/// An owned block of values with a shape (frames or latents); `numpy.asarray` views it.
#[pyclass(module = "contentv._engine", frozen)]
struct Buffer {
    data: Data,
    shape: Vec<usize>,
}

#[pymethods]
impl Buffer {
    /// NumPy's array interface (version 3): the address, shape and type of the values.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let (ptr, typestr) = match &self.data {
            Data::U8(v) => (v.as_ptr() as usize, "|u1"),
            Data::F32(v) => (
                v.as_ptr() as usize,
                if cfg!(target_endian = "little") {
                    "<f4"
                } else {
                    ">f4"
                },
            ),
        };
        d.set_item("shape", PyTuple::new(py, &self.shape)?)?;
        d.set_item("typestr", typestr)?;
        d.set_item("data", (ptr, false))?;
        d.set_item("version", 3)?;
        Ok(d)
    }

    /// The shape of the values.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.shape)
    }
}

fn f32_buffer(v: Vec<f32>, shape: Vec<usize>) -> Buffer {
    Buffer {
        data: Data::F32(v),
        shape,
    }
}

/// What `Engine.generate` returns: (frames or None, latents, seed, stopped_after, warnings).
type RunResult = (
    Option<Buffer>,
    Buffer,
    u64,
    Option<usize>,
    Vec<String>,
    Option<CacheResult>,
);

/// A cached run's report (`out.cache` in Python is its dict): the settings used, the computed
/// steps and the estimated seconds saved (`contentv generate`'s `step cache` line).
#[derive(IntoPyObject)]
struct CacheResult {
    method: String,
    threshold: f32,
    warmup: usize,
    steps: usize,
    computed: Vec<usize>,
    line: String,
    saved_s: f64,
}

/// A loaded pipeline (its models live on the engine's own thread).
#[pyclass(module = "contentv._engine", frozen)]
struct Engine {
    inner: Mutex<Option<engine::Engine>>,
    busy: AtomicBool,
}

impl Engine {
    /// Marks the pipeline busy for one run (one at a time: another thread's, or a call from
    /// this run's callback, is an error); the guard clears it.
    fn claim(&self) -> PyResult<NotBusy<'_>> {
        if self
            .busy
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(PyRuntimeError::new_err(
                "this pipeline is already generating (in another thread, or this call comes from its callback): \
                 one generation at a time per ContentVPipeline; wait for it to finish, or load a second pipeline",
            ));
        }
        Ok(NotBusy(&self.busy))
    }
}

/// Waits for the run's events without the GIL: calls `on_step` after each step (its true
/// answer stops the run when `reply_each_step`), looks for Ctrl-C every 50 ms, and returns the
/// engine's output, or the exception raised meanwhile once the engine has stopped.
fn wait_for_run(
    py: Python<'_>,
    handle: engine::RunHandle,
    on_step: Option<&Py<PyAny>>,
    reply_each_step: bool,
) -> PyResult<engine::Output> {
    let engine::RunHandle {
        events,
        replies,
        cancel,
    } = handle;
    // An exception to raise once the engine has stopped (Ctrl-C, or one the callback raised).
    let mut pending: Option<PyErr> = None;
    let mut rx = events;
    let done = loop {
        // Wait without the GIL; every 50 ms look for Ctrl-C (Python runs its signal
        // handlers here, on the calling thread).
        let (back, ev) = py.detach(move || {
            let ev = rx.recv_timeout(Duration::from_millis(50));
            (rx, ev)
        });
        rx = back;
        let ev = match ev {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = py.check_signals() {
                    cancel.store(true, Ordering::SeqCst);
                    pending.get_or_insert(e);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                break Err(Error::Other(
                    "the engine's thread stopped during the run (a bug)".into(),
                ))
            }
        };
        match ev {
            engine::Event::Done(r) => break r,
            engine::Event::Step {
                index,
                steps,
                timestep,
                latents,
            } => {
                let mut stop = false;
                if pending.is_none() {
                    if let Some(cb) = &on_step {
                        let lat = latents.map(|v| {
                            let shape = vec![v.len()];
                            f32_buffer(v, shape)
                        });
                        match cb
                            .call1(py, (index, steps, timestep, lat))
                            .and_then(|v| v.is_truthy(py))
                        {
                            Ok(s) => stop = s,
                            Err(e) => {
                                cancel.store(true, Ordering::SeqCst);
                                pending = Some(e);
                            }
                        }
                    }
                }
                if let Err(e) = py.check_signals() {
                    cancel.store(true, Ordering::SeqCst);
                    pending.get_or_insert(e);
                }
                if reply_each_step {
                    let _ = replies.send(stop && pending.is_none());
                }
            }
        }
    };
    if let Some(e) = pending {
        return Err(e);
    }
    done.map_err(py_err)
}

/// The Python tuple of a finished run.
fn run_result(out: engine::Output, seed: u64, warnings: Vec<String>) -> RunResult {
    let [c0, c1, c2, c3, c4] = out.latent_shape;
    let frames = out.frames.map(|(data, [f, h, w])| Buffer {
        data: Data::U8(data),
        shape: vec![1, f, h, w, 3],
    });
    (
        frames,
        f32_buffer(out.latents, vec![c0, c1, c2, c3, c4]),
        seed,
        out.stopped_after,
        warnings,
        out.cache.map(|(s, r)| CacheResult {
            method: s.method.name().to_string(),
            threshold: s.threshold,
            warmup: s.warmup,
            steps: r.steps,
            computed: r.computed,
            line: r.line,
            saved_s: r.saved_s,
        }),
    )
}

/// Clears the busy flag when a run ends, however it ends.
struct NotBusy<'a>(&'a AtomicBool);
impl Drop for NotBusy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

#[pymethods]
impl Engine {
    /// Loads a pipeline (see `contentv.ContentVPipeline.from_pretrained`).
    #[staticmethod]
    #[pyo3(signature = (model=None, device=None, offload=None, quantize=None, vram_budget_gib=None, vae_tiling=false, vae_precision=None))]
    #[allow(clippy::too_many_arguments)]
    fn load(
        py: Python<'_>,
        model: Option<PathBuf>,
        device: Option<String>,
        offload: Option<String>,
        quantize: Option<String>,
        vram_budget_gib: Option<f64>,
        vae_tiling: bool,
        vae_precision: Option<String>,
    ) -> PyResult<Engine> {
        let o = engine::LoadOptions {
            model,
            device,
            offload,
            quantize,
            vram_budget_gib,
            vae_tiling,
            vae_precision,
        };
        let e = py.detach(move || engine::Engine::load(o)).map_err(py_err)?;
        Ok(Engine {
            inner: Mutex::new(Some(e)),
            busy: AtomicBool::new(false),
        })
    }

    /// The model folder used (after resolving a Hugging Face cache id or entry).
    #[getter]
    fn model_dir(&self) -> PyResult<PathBuf> {
        self.with(|e| Ok(e.info.model_dir.clone()))
    }

    /// "cpu" or "cuda:0 <name>".
    #[getter]
    fn device(&self) -> PyResult<String> {
        self.with(|e| Ok(e.info.device.clone()))
    }

    /// Whether this is the built-in tiny random model.
    #[getter]
    fn tiny(&self) -> PyResult<bool> {
        self.with(|e| Ok(e.info.tiny))
    }

    /// Notes of the load (the CLI's `note:` lines).
    #[getter]
    fn notes(&self) -> PyResult<Vec<String>> {
        self.with(|e| Ok(e.info.notes.clone()))
    }

    /// Warnings of the load (the CLI's `warning:` lines and the tiny-model notice).
    #[getter]
    fn warnings(&self) -> PyResult<Vec<String>> {
        self.with(|e| Ok(e.info.warnings.clone()))
    }

    /// Checks a request with the CLI's checks; returns (steps, seed, latent shape, warnings).
    #[pyo3(signature = (prompt, negative_prompt=None, frames=None, height=None, width=None, steps=None, guidance=None, shift=None, seed=None, latents=None, latents_shape=None, cache=None, cache_threshold=None, cache_warmup=None, cache_dir=None))]
    #[allow(clippy::too_many_arguments)]
    fn check(
        &self,
        prompt: String,
        negative_prompt: Option<String>,
        frames: Option<usize>,
        height: Option<usize>,
        width: Option<usize>,
        steps: Option<usize>,
        guidance: Option<f32>,
        shift: Option<f32>,
        seed: Option<u64>,
        latents: Option<&Bound<'_, PyBytes>>,
        latents_shape: Option<Vec<usize>>,
        cache: Option<String>,
        cache_threshold: Option<f32>,
        cache_warmup: Option<usize>,
        cache_dir: Option<PathBuf>,
    ) -> PyResult<(usize, u64, Vec<usize>, Vec<String>)> {
        let r = request(
            prompt,
            negative_prompt,
            [frames, height, width, steps],
            guidance,
            shift,
            seed,
            latents,
            latents_shape,
            CacheArgs {
                cache,
                cache_threshold,
                cache_warmup,
                cache_report: false,
                cache_dir,
            },
        )?;
        self.with(|e| {
            let p = e.prepare(r).map_err(py_err)?;
            Ok((p.steps, p.seed, p.latent_shape.to_vec(), p.warnings))
        })
    }

    /// Runs one generation. `on_step(index, steps, timestep, latents)` is called after each
    /// step (latents: a Buffer when `step_latents`, else None); with `reply_each_step` the
    /// engine waits for it, and a true result stops the run after that step. Returns
    /// (frames Buffer [1, F, H, W, 3] or None, latents Buffer, seed, stopped_after, warnings).
    #[pyo3(signature = (prompt, negative_prompt=None, frames=None, height=None, width=None, steps=None, guidance=None, shift=None, seed=None, latents=None, latents_shape=None, cache=None, cache_threshold=None, cache_warmup=None, cache_dir=None, decode=true, on_step=None, step_latents=false, reply_each_step=false))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: String,
        negative_prompt: Option<String>,
        frames: Option<usize>,
        height: Option<usize>,
        width: Option<usize>,
        steps: Option<usize>,
        guidance: Option<f32>,
        shift: Option<f32>,
        seed: Option<u64>,
        latents: Option<&Bound<'_, PyBytes>>,
        latents_shape: Option<Vec<usize>>,
        cache: Option<String>,
        cache_threshold: Option<f32>,
        cache_warmup: Option<usize>,
        cache_dir: Option<PathBuf>,
        decode: bool,
        on_step: Option<Py<PyAny>>,
        step_latents: bool,
        reply_each_step: bool,
    ) -> PyResult<RunResult> {
        let _not_busy = self.claim()?;
        let r = request(
            prompt,
            negative_prompt,
            [frames, height, width, steps],
            guidance,
            shift,
            seed,
            latents,
            latents_shape,
            CacheArgs {
                cache,
                cache_threshold,
                cache_warmup,
                cache_report: false,
                cache_dir,
            },
        )?;
        let (handle, seed, warnings) = self.with(|e| {
            let p = e.prepare(r).map_err(py_err)?;
            let (seed, warnings) = (p.seed, p.warnings.clone());
            let h = e
                .submit(
                    p,
                    decode,
                    step_latents,
                    reply_each_step && on_step.is_some(),
                )
                .map_err(py_err)?;
            Ok((h, seed, warnings))
        })?;
        let out = wait_for_run(py, handle, on_step.as_ref(), reply_each_step)?;
        Ok(run_result(out, seed, warnings))
    }

    /// Frees the models and the device memory now (dropping the object does the same).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let e = self
            .inner
            .lock()
            .map_err(|_| PyRuntimeError::new_err("the pipeline's lock is poisoned (a bug)"))?
            .take();
        if let Some(mut e) = e {
            py.detach(move || e.close());
        }
        Ok(())
    }
}

impl Engine {
    fn with<T>(&self, f: impl FnOnce(&engine::Engine) -> PyResult<T>) -> PyResult<T> {
        let g = self
            .inner
            .lock()
            .map_err(|_| PyRuntimeError::new_err("the pipeline's lock is poisoned (a bug)"))?;
        match g.as_ref() {
            Some(e) => f(e),
            None => Err(PyRuntimeError::new_err(
                "this pipeline was closed: load it again with ContentVPipeline.from_pretrained",
            )),
        }
    }
}

/// The engine's request from the Python arguments.
#[allow(clippy::too_many_arguments)]
fn request(
    prompt: String,
    negative_prompt: Option<String>,
    [frames, height, width, steps]: [Option<usize>; 4],
    guidance: Option<f32>,
    shift: Option<f32>,
    seed: Option<u64>,
    latents: Option<&Bound<'_, PyBytes>>,
    latents_shape: Option<Vec<usize>>,
    cache: CacheArgs,
) -> PyResult<engine::Request> {
    let latents = match (latents, latents_shape) {
        (None, _) => None,
        (Some(b), Some(s)) => {
            let bytes = b.as_bytes();
            if bytes.len() % 4 != 0 || bytes.len() / 4 != s.iter().product::<usize>() {
                return Err(PyValueError::new_err(format!(
                    "latents: {} bytes do not hold float32 values of shape {s:?}",
                    bytes.len()
                )));
            }
            let v: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Some((v, s))
        }
        (Some(_), None) => {
            return Err(PyValueError::new_err(
                "latents_shape is required with latents",
            ))
        }
    };
    Ok(engine::Request {
        prompt,
        negative_prompt,
        frames,
        height,
        width,
        steps,
        guidance,
        shift,
        seed,
        latents,
        cache,
    })
}

/// Writes RGB frames `data` ([F, H, W, 3] uint8 bytes) as a video with the engine's writer
/// (the CLI's checks; atomic; never replaces a file that is not a video). Returns the path.
#[pyfunction]
#[pyo3(signature = (data, frames, height, width, path, fps=engine::DEFAULT_FPS, crf=engine::DEFAULT_CRF))]
#[allow(clippy::too_many_arguments)]
fn export_video(
    py: Python<'_>,
    data: &Bound<'_, PyBytes>,
    frames: usize,
    height: usize,
    width: usize,
    path: PathBuf,
    fps: u32,
    crf: u8,
) -> PyResult<PathBuf> {
    // The bytes object is immutable and held by the caller: read it without the GIL.
    let bytes: &[u8] = data.as_bytes();
    py.detach(move || engine::export_video(bytes, frames, height, width, &path, fps, crf))
        .map_err(py_err)
}

/// The device pool of GPU 0 as (bytes in use, bytes cached), or None without a GPU in use.
#[pyfunction]
fn device_memory(py: Python<'_>) -> Option<(usize, usize)> {
    py.detach(engine::device_memory)
}

#[pymodule]
fn _engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add_class::<Buffer>()?;
    m.add_function(wrap_pyfunction!(export_video, m)?)?;
    m.add_function(wrap_pyfunction!(device_memory, m)?)?;
    m.add("DEFAULT_FPS", engine::DEFAULT_FPS)?;
    m.add("DEFAULT_CRF", engine::DEFAULT_CRF)?;
    m.add(
        "DEFAULT_NEGATIVE_PROMPT",
        contentv::cli::args::DEFAULT_NEGATIVE_PROMPT,
    )?;
    m.add("VERSION", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
