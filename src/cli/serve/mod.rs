//! `contentv serve`: a web page and an OpenAI-style video API over one loaded model.
//!
//! * One worker thread ([`worker`]) loads the model and runs the jobs one at a time; the HTTP
//!   side (axum on a small tokio runtime, [`http`]) only touches the shared state ([`state`])
//!   under its mutex, so it answers while the model computes.
//! * Requests are checked by the CLI's own code ([`crate::cli::request`]) through [`job`].
//! * Jobs and videos live under the data folder; the records are written atomically, and a
//!   restart brings the queue and the gallery back.
//! * Safety: loopback by default; any other address needs --api-key (Bearer, compared in
//!   constant time) or an explicit --insecure; bodies are size-limited; ids are 128 random
//!   bits; files are named by id only; no CORS headers.
pub mod conn;
pub mod http;
pub mod job;
pub mod multipart;
pub mod state;
pub mod worker;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};

use super::args::ServeArgs;
use super::load::{check_memory_flags, check_model_dir, model_dir};
use super::request::RequestFields;
use super::Ui;
use crate::error::{Error, Result};
use crate::model::pipeline::LatentLayout;

/// The data folder's lock: an advisory `flock` on `server.lock`, held by the open file for
/// as long as the process lives (the kernel drops it when the process ends, however it ends,
/// so it cannot go stale). One server per folder.
struct DirLock(#[allow(dead_code)] std::fs::File);

impl DirLock {
    fn take(dir: &std::path::Path) -> Result<DirLock> {
        use std::os::unix::io::AsRawFd;
        let p = dir.join("server.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&p)
            .map_err(|e| Error::Input(format!("cannot open the lock file {}: {e}", p.display())))?;
        // SAFETY: flock on a descriptor this function owns (the File lives in the DirLock).
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(Error::Input(
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    format!(
                    "another contentv serve uses the data folder {} (it holds {}): stop it or pass another --data-dir",
                    dir.display(),
                    p.display()
                )
                } else {
                    format!("cannot lock {}: {e}", p.display())
                },
            ));
        }
        // The PID file of older versions is only a hint; the lock above is what counts.
        let _ = std::fs::remove_file(dir.join("server.pid"));
        Ok(DirLock(f))
    }
}

/// The addresses of `--host`/`--port`, and whether they are all loopback.
fn listen_addrs(host: &str, port: u16) -> Result<(Vec<SocketAddr>, bool)> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            Error::Input(format!(
                "--host {host}: not an address of this machine ({e})"
            ))
        })?
        .collect();
    if addrs.is_empty() {
        return Err(Error::Input(format!("--host {host}: no address")));
    }
    let loopback = addrs.iter().all(|a| a.ip().is_loopback());
    Ok((addrs, loopback))
}

/// `--max-frames` and `--max-pixels` without the flags: twice ContentV's 125 frames, 720p.
pub const DEFAULT_MAX_FRAMES: usize = 257;
pub const DEFAULT_MAX_PIXELS: usize = 1280 * 720;

pub fn run(a: &ServeArgs, ui: &Ui) -> Result<()> {
    let mem = check_memory_flags(&a.model)?;
    let (addrs, loopback) = listen_addrs(&a.host, a.port)?;
    let api_key = check_serve_flags(a, loopback, ui)?;
    let dir = model_dir(&a.model.model, ui);
    check_model_dir(&dir, &[])?;
    let layout = LatentLayout::from_model_dir(&dir)?;
    let mut defaults = RequestFields::default();
    let tiny = a.model.model.is_none();
    if tiny {
        defaults.apply_tiny_defaults();
    }
    let data_dir = a.data_dir.clone().unwrap_or_else(state::default_data_dir);
    let (_lock, state) = open_data_dir(a, &data_dir, ui)?;
    let max_connections = conn::connection_cap(a.max_connections)?;
    let listener = std::net::TcpListener::bind(&addrs[..])
        .map_err(|e| Error::Input(format!("cannot listen on {}:{}: {e}", a.host, a.port)))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;

    let (model_name, names) = model_names(&dir, tiny);
    let facts = super::request::memory::ModelFacts::read(&dir)?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let spec = worker::ModelSpec {
        dir: dir.clone(),
        device: a.model.device,
        mem,
        vae_precision: a.model.vae_precision,
        layout,
    };
    let st = state.clone();
    let worker = std::thread::Builder::new()
        .name("contentv-worker".into())
        .spawn(move || worker::run(st, spec, ready_tx))?;
    let device = ready_rx
        .recv()
        .map_err(|_| Error::Other("the worker thread ended while loading the model".into()))??;
    let checker = job::Checker {
        layout,
        model_names: names,
        defaults,
        max_frames: a.max_frames.unwrap_or(DEFAULT_MAX_FRAMES),
        max_pixels: a.max_pixels.unwrap_or(DEFAULT_MAX_PIXELS),
        facts: Some(facts),
        on_gpu: device != "cpu",
        gpu_bytes: None,
    };
    let server = Arc::new(http::Server {
        state: state.clone(),
        checker,
        api_key,
        model: model_name,
        info: server_info(a, &dir, tiny, &device),
        max_queue: a.max_queue,
        max_body: a.max_body,
        body_timeout: std::time::Duration::from_secs(a.body_timeout),
        guard: host_guard(a),
        streams: Default::default(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("contentv-http")
        .build()?;
    let lim = conn::Limits {
        header_timeout: std::time::Duration::from_secs(a.header_timeout),
        max_connections,
    };
    let res = serve_http(&rt, listener, server, state.clone(), lim, || {
        ui.info(&format!(
            "contentv serve: listening on http://{local} (data in {})",
            data_dir.display()
        ))
    });
    {
        state.lock().shutting_down = true;
        state.wake.notify_all();
    }
    let _ = worker.join();
    res.map_err(Error::Io)
}

/// The serve flags' own checks (the model flags are checked by `check_memory_flags`), in the
/// order their messages come; warns about --insecure off loopback. Returns the API key (None:
/// no key).
fn check_serve_flags(a: &ServeArgs, loopback: bool, ui: &Ui) -> Result<Option<String>> {
    let api_key = a.api_key.clone().filter(|k| !k.is_empty());
    if a.api_key.is_some() && api_key.is_none() {
        return Err(Error::Input("--api-key is empty".into()));
    }
    if let Some(k) = &api_key {
        if k.trim() != k || k.chars().any(|c| c.is_control()) {
            return Err(Error::Input(
                "--api-key has leading or trailing spaces (or control characters): no client could send it; remove them".into(),
            ));
        }
    }
    if a.max_body < 256 {
        return Err(Error::Input(format!(
            "--max-body {}: too small for any request (at least 256 bytes; the default is 65536)",
            a.max_body
        )));
    }
    for (flag, v) in [
        ("--header-timeout", a.header_timeout),
        ("--body-timeout", a.body_timeout),
    ] {
        if v == 0 {
            return Err(Error::Input(format!("{flag} must be at least 1 second")));
        }
    }
    if a.max_frames == Some(0) || a.max_pixels == Some(0) {
        return Err(Error::Input(
            "--max-frames and --max-pixels must be at least 1".into(),
        ));
    }
    if a.max_connections == 0 {
        return Err(Error::Input("--max-connections must be at least 1".into()));
    }
    if !loopback && api_key.is_none() && !a.insecure {
        return Err(Error::Input(format!(
            "--host {} is reachable from other machines: pass --api-key KEY (clients send `Authorization: Bearer KEY`), or --insecure to serve without one",
            a.host
        )));
    }
    if !loopback && api_key.is_none() {
        ui.warn(&format!(
            "serving on {} without an API key (--insecure): anyone who reaches it can use it",
            a.host
        ));
    }
    if a.max_queue == 0 {
        return Err(Error::Input("--max-queue must be at least 1".into()));
    }
    Ok(api_key)
}

/// Creates and locks the data folder, loads its jobs (the notes of that to `ui`) and prunes
/// what --keep-jobs / --keep-days no longer keep.
fn open_data_dir(
    a: &ServeArgs,
    data_dir: &std::path::Path,
    ui: &Ui,
) -> Result<(DirLock, Arc<state::State>)> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        Error::Input(format!(
            "cannot create the data folder {}: {e}",
            data_dir.display()
        ))
    })?;
    let lock = DirLock::take(data_dir)?;
    let (inner, notes) = state::load(data_dir).map_err(|e| {
        Error::Input(format!(
            "cannot read the data folder {}: {e}",
            data_dir.display()
        ))
    })?;
    for n in notes {
        ui.note(&n);
    }
    let (tx, _) = tokio::sync::broadcast::channel(1024);
    let state = Arc::new(state::State {
        inner: Mutex::new(inner),
        wake: Condvar::new(),
        events: tx,
        data_dir: data_dir.to_path_buf(),
        keep_jobs: a.keep_jobs,
        keep_days: a.keep_days,
    });
    let pruned = state.prune();
    if pruned > 0 {
        ui.note(&format!(
            "deleted {pruned} finished jobs beyond --keep-jobs {} / --keep-days {}",
            a.keep_jobs, a.keep_days
        ));
    }
    Ok((lock, state))
}

/// The model's name in the API (`model` of a response) and every name a request may give.
fn model_names(dir: &std::path::Path, tiny: bool) -> (String, Vec<String>) {
    let model_name = if tiny {
        "contentv-tiny".to_string()
    } else {
        dir.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "contentv-8b".into())
    };
    let mut names = vec![
        model_name.to_lowercase(),
        "contentv".into(),
        "contentv-8b".into(),
    ];
    names.dedup();
    (model_name, names)
}

/// The facts `/v1/info` (and the page) show about this server.
fn server_info(
    a: &ServeArgs,
    dir: &std::path::Path,
    tiny: bool,
    device: &str,
) -> serde_json::Value {
    serde_json::json!({
        "model": fsutil_name(dir, tiny),
        "device": device,
        "offload": format!("{:?}", a.model.offload).to_lowercase(),
        "quantize": format!("{:?}", a.model.quantize).to_lowercase(),
        "vae_tiling": a.model.vae_tiling,
        "vae_precision": a.model.vae_precision.map(|p| format!("{p:?}").to_lowercase()),
        "vram_budget_gib": a.model.vram_budget,
        "max_queue": a.max_queue,
        "container": if crate::io::video::writes_mp4() { "mp4" } else { "png-folder" },
        "tiny_model": tiny,
    })
}

/// The Host and Origin headers a request may carry: --host and --allowed-host, --allow-origin.
fn host_guard(a: &ServeArgs) -> http::Guard {
    http::Guard {
        hosts: std::iter::once(a.host.clone())
            .chain(a.allowed_host.iter().cloned())
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .collect(),
        origins: a
            .allow_origin
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .collect(),
    }
}

/// Runs the HTTP side on `rt` until it stops: the connections, and the age-based retention
/// between jobs (every minute). `listening` is called once the socket is served.
fn serve_http(
    rt: &tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    server: Arc<http::Server>,
    prune_state: Arc<state::State>,
    lim: conn::Limits,
    listening: impl FnOnce(),
) -> std::io::Result<()> {
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        listening();
        let st = prune_state;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                let st = st.clone();
                let _ = tokio::task::spawn_blocking(move || st.prune()).await;
            }
        });
        let s2 = server.clone();
        let health = Arc::new(move || http::health_json(&s2).to_string());
        conn::serve(listener, http::router(server), lim, health).await
    })
}

/// The model's name for the page: the folder's name, or "built-in tiny model".
fn fsutil_name(dir: &std::path::Path, tiny: bool) -> String {
    if tiny {
        "built-in tiny model (random weights: noise)".into()
    } else {
        crate::io::fsutil::lossy(dir)
    }
}
