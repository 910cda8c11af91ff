//! The server's shared state: the jobs, the queue, the counters, and their files under the data
//! folder (`jobs/<id>.json`, written atomically; videos in `videos/<id>.mp4`, or the PNG folder
//! `videos/<id>/` in builds without FFmpeg). Everything is behind one mutex; the worker thread
//! waits on a condition variable for queued jobs; events go to the HTTP side through a
//! broadcast channel.
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde_json::Value;

use super::job::{valid_id, Job, JobError, Status};
use crate::io::fsutil;
use crate::io::video;

/// One event of a job, for its event stream.
#[derive(Clone, Debug)]
pub struct JobEvent {
    pub id: String,
    /// The SSE event name: queue, started, step, preview, decode, completed, failed, cancelled.
    pub kind: &'static str,
    pub data: Value,
}

#[derive(Default)]
pub struct Counters {
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub rejected_full: u64,
    pub steps: u64,
    pub step_seconds: f64,
}

pub struct Inner {
    pub jobs: HashMap<String, Job>,
    pub queue: VecDeque<String>,
    pub running: Option<(String, Arc<AtomicBool>)>,
    pub next_seq: u64,
    pub counters: Counters,
    /// "loading", "ready", or the load error.
    pub model_state: String,
    pub shutting_down: bool,
}

pub struct State {
    pub inner: Mutex<Inner>,
    pub wake: Condvar,
    pub events: tokio::sync::broadcast::Sender<JobEvent>,
    pub data_dir: PathBuf,
    /// `--keep-jobs` and `--keep-days` (0: no limit).
    pub keep_jobs: usize,
    pub keep_days: u64,
}

impl State {
    pub fn jobs_dir(&self) -> PathBuf {
        self.data_dir.join("jobs")
    }
    pub fn videos_dir(&self) -> PathBuf {
        self.data_dir.join("videos")
    }
    /// The file a job's video is written to (its name is the id, nothing a client sent).
    pub fn video_request_path(&self, id: &str) -> PathBuf {
        self.videos_dir().join(format!("{id}.mp4"))
    }
    /// What [`State::video_request_path`] produces: the MP4, or the PNG folder.
    pub fn video_path(&self, id: &str) -> PathBuf {
        video::artifact_path(&self.video_request_path(id))
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every change is one
        // assignment), so a poisoned lock is still used.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn emit(&self, id: &str, kind: &'static str, data: Value) {
        // No receiver is not an error.
        let _ = self.events.send(JobEvent {
            id: id.to_string(),
            kind,
            data,
        });
    }

    /// Saves a job's record (atomically: a temporary file renamed into place).
    pub fn save(&self, job: &Job) -> std::io::Result<()> {
        let p = self.jobs_dir().join(format!("{}.json", job.id));
        let text = serde_json::to_string_pretty(job).map_err(std::io::Error::other)?;
        fsutil::write_file_atomically(&p, text.as_bytes())
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
    }

    /// Removes a job's record and its video.
    pub fn remove_files(&self, id: &str) {
        let v = self.video_path(id);
        if v.is_dir() {
            let _ = std::fs::remove_dir_all(&v);
        } else {
            let _ = std::fs::remove_file(&v);
        }
        let _ = std::fs::remove_file(self.jobs_dir().join(format!("{id}.json")));
    }

    /// Saves a record, trying again (up to `tries` times, a second apart) while the disk
    /// refuses (full, no descriptors): the status the API reports is the one on disk.
    pub fn save_retrying(&self, job: &Job, tries: u32) -> std::io::Result<()> {
        let mut last = None;
        for i in 0..tries.max(1) {
            match self.save(job) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    eprintln!(
                        "warning: cannot save job {} (try {} of {tries}): {e}",
                        job.id,
                        i + 1
                    );
                    last = Some(e);
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
        }
        Err(last.expect("at least one try"))
    }

    /// Deletes the finished jobs beyond `--keep-jobs` (the oldest first) and those finished
    /// more than `--keep-days` ago, each record with its video. Returns how many.
    pub fn prune(&self) -> usize {
        let now = crate::cli::request::unix_time();
        let victims: Vec<String> = {
            let mut g = self.lock();
            let mut done: Vec<&Job> = g.jobs.values().filter(|j| j.status.finished()).collect();
            done.sort_by_key(|j| std::cmp::Reverse(j.seq));
            let v: Vec<String> = done
                .iter()
                .enumerate()
                .filter(|(i, j)| {
                    let age = now.saturating_sub(j.completed_at.unwrap_or(j.created_at));
                    (self.keep_jobs > 0 && *i >= self.keep_jobs)
                        || (self.keep_days > 0 && age > self.keep_days * 86_400)
                })
                .map(|(_, j)| j.id.clone())
                .collect();
            for id in &v {
                g.jobs.remove(id);
                // removed under the lock: no DELETE or save of the same job runs in between
                self.remove_files(id);
            }
            v
        };
        victims.len()
    }

    /// The 1-based queue position of a queued job.
    pub fn queue_position(inner: &Inner, id: &str) -> Option<usize> {
        inner.queue.iter().position(|q| q == id).map(|i| i + 1)
    }
}

/// Opens (creates) the data folder and reads the jobs back: queued jobs are queued again in
/// their order; a job that was running when the server stopped is queued again (once; a job
/// that was already restarted fails with the reason); a completed job whose video is gone
/// fails with the reason. Returns the state's contents and notes for the log.
pub fn load(data_dir: &Path) -> std::io::Result<(Inner, Vec<String>)> {
    let jobs_dir = data_dir.join("jobs");
    std::fs::create_dir_all(&jobs_dir)?;
    std::fs::create_dir_all(data_dir.join("videos"))?;
    let mut notes = Vec::new();
    // The folder is locked by this process (mod.rs): every partial file in it is stale (an
    // interrupted write of the video or of a record).
    for d in [jobs_dir.clone(), data_dir.join("videos")] {
        for e in std::fs::read_dir(&d)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".partial-") {
                let p = e.path();
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                match r {
                    Ok(()) => notes.push(format!("{}: an interrupted write, removed", p.display())),
                    Err(e) => notes.push(format!("{}: cannot remove ({e})", p.display())),
                }
            }
        }
    }
    let mut jobs: Vec<Job> = Vec::new();
    for e in std::fs::read_dir(&jobs_dir)? {
        let p = e?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        if !valid_id(id) {
            continue; // temporary files of an interrupted write, or foreign files
        }
        let job = std::fs::read_to_string(&p)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Job>(&t).map_err(|e| e.to_string()));
        match job {
            Ok(j) if j.id == id => jobs.push(j),
            Ok(_) => notes.push(format!("{}: its id is not its name; ignored", p.display())),
            Err(e) => notes.push(format!("{}: cannot be read ({e}); ignored", p.display())),
        }
    }
    jobs.sort_by_key(|j| j.seq);
    let mut inner = Inner {
        jobs: HashMap::new(),
        queue: VecDeque::new(),
        running: None,
        next_seq: jobs.last().map_or(1, |j| j.seq + 1),
        counters: Counters::default(),
        model_state: "loading".into(),
        shutting_down: false,
    };
    for mut j in jobs {
        let mut changed = false;
        match j.status {
            Status::InProgress if j.attempts >= 2 => {
                j.status = Status::Failed;
                j.error = Some(JobError {
                    code: "interrupted".into(),
                    message: format!(
                        "the server stopped while running this job {} times; not retried again",
                        j.attempts
                    ),
                });
                j.completed_at = Some(crate::cli::request::unix_time());
                changed = true;
                notes.push(format!("{}: interrupted twice, marked failed", j.id));
            }
            Status::InProgress => {
                j.status = Status::Queued;
                j.warnings
                    .push("the server stopped while this job ran; it was queued again".into());
                changed = true;
                notes.push(format!("{}: was running, queued again", j.id));
            }
            Status::Completed
                if !video::artifact_path(
                    &data_dir.join("videos").join(format!("{}.mp4", j.id)),
                )
                .exists() =>
            {
                j.status = Status::Failed;
                j.error = Some(JobError {
                    code: "video_missing".into(),
                    message: "the video file of this job is gone from the data folder".into(),
                });
                changed = true;
            }
            _ => {}
        }
        if changed {
            let p = jobs_dir.join(format!("{}.json", j.id));
            let text = serde_json::to_string_pretty(&j).map_err(std::io::Error::other)?;
            fsutil::write_file_atomically(&p, text.as_bytes())?;
        }
        if j.status == Status::Queued {
            inner.queue.push_back(j.id.clone());
        }
        inner.jobs.insert(j.id.clone(), j);
    }
    Ok((inner, notes))
}

/// The default data folder: $XDG_DATA_HOME/contentv, ~/.local/share/contentv, or
/// ./contentv-data.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("contentv");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(h).join(".local/share/contentv");
    }
    PathBuf::from("contentv-data")
}
