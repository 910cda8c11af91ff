//! The raw HTTP/1.1 client of the server's tests (tests/serve*.rs): a running `contentv serve`
//! on the tiny model ([`Server`]), requests, answers ([`Resp`]) and event streams ([`Sse`]).
//! Include with `#[path = "common/http.rs"] mod http;`.
#![allow(dead_code)]
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_contentv");

pub fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("serve-tests")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A running server; killed (SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub log: Arc<Mutex<String>>,
    pub key: Option<String>,
}

impl Server {
    pub fn start(data: &Path, extra: &[&str]) -> Server {
        Server::start_limited(data, extra, None)
    }

    /// [`Server::start`] under a file-descriptor limit (`ulimit -n`, through bash's exec: the
    /// child is the server itself).
    pub fn start_limited(data: &Path, extra: &[&str], nofile: Option<u64>) -> Server {
        Server::start_env(data, extra, nofile, &[])
    }

    /// [`Server::start_limited`] with extra environment variables.
    pub fn start_env(
        data: &Path,
        extra: &[&str],
        nofile: Option<u64>,
        env: &[(&str, &Path)],
    ) -> Server {
        let mut cmd = match nofile {
            None => Command::new(BIN),
            Some(n) => {
                let mut c = Command::new("bash");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), BIN]);
                c
            }
        };
        cmd.args(["serve", "--device", "cpu", "--port", "0", "--data-dir"])
            .arg(data)
            .args(extra)
            .env("CONTENTV_FORCE_CPU", "1")
            .env_remove("CONTENTV_API_KEY")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cannot start contentv serve");
        let err = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap().to_string());
                }
                let mut g = l2.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not start:\n{}", log.lock().unwrap());
            }
        };
        let key = extra
            .iter()
            .position(|a| *a == "--api-key")
            .map(|i| extra[i + 1].to_string());
        Server {
            child,
            addr,
            log,
            key,
        }
    }

    pub fn req(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        let mut h = vec![];
        let auth;
        if let Some(k) = &self.key {
            auth = format!("Bearer {k}");
            h.push(("Authorization", auth.as_str()));
        }
        let b = body.map(|v| v.to_string().into_bytes());
        request(&self.addr, method, path, &h, b.as_deref())
    }

    pub fn get(&self, path: &str) -> Resp {
        self.req("GET", path, None)
    }

    pub fn create(&self, body: Value) -> Value {
        let r = self.req("POST", "/v1/videos", Some(&body));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    pub fn job(&self, id: &str) -> Value {
        let r = self.get(&format!("/v1/videos/{id}"));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// Polls until the job is finished (or `timeout`).
    pub fn wait(&self, id: &str, timeout: Duration) -> Value {
        let t = Instant::now();
        loop {
            let j = self.job(id);
            if ["completed", "failed", "cancelled"].contains(&j["status"].as_str().unwrap()) {
                return j;
            }
            assert!(
                t.elapsed() < timeout,
                "job {id} did not finish: {j}\n{}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_status(&self, id: &str, status: &str) -> Value {
        let t = Instant::now();
        loop {
            let j = self.job(id);
            if j["status"] == status {
                return j;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{id} never {status}: {j}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        format!("{} {}", self.status, String::from_utf8_lossy(&self.body))
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers.get(&k.to_lowercase()).map(String::as_str)
    }
    /// The error object of an error answer, checked for OpenAI's shape.
    pub fn error(&self) -> Value {
        let e = self.json()["error"].clone();
        for k in ["message", "type", "param", "code"] {
            assert!(e.get(k).is_some(), "error without {k}: {}", self.text());
        }
        e
    }
}

pub fn read_head(r: &mut BufReader<TcpStream>) -> (u16, HashMap<String, String>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
        .parse()
        .unwrap();
    let mut headers = HashMap::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.insert(k.trim().to_lowercase(), v.trim().to_string());
    }
    (status, headers)
}

pub fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    if let Some(b) = body {
        head += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        );
    }
    head += "\r\n";
    s.write_all(head.as_bytes()).unwrap();
    if let Some(b) = body {
        // the server may answer (413) and close before reading it all
        let _ = s.write_all(b);
    }
    s
}

pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let s = send(addr, method, path, headers, body);
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            let n = usize::from_str_radix(l.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            let mut c = vec![0; n + 2];
            r.read_exact(&mut c).unwrap();
            body.extend_from_slice(&c[..n]);
        }
    } else if let Some(n) = headers.get("content-length") {
        body.resize(n.parse().unwrap(), 0);
        r.read_exact(&mut body).unwrap();
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    Resp {
        status,
        headers,
        body,
    }
}

/// An event stream: (event name, data) pairs, read as they come.
pub struct Sse {
    pub r: BufReader<TcpStream>,
    pub chunked: bool,
    pub buf: String,
}

impl Sse {
    pub fn open(srv: &Server, id: &str) -> Sse {
        let auth = srv.key.as_ref().map(|k| format!("Bearer {k}"));
        let h: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let s = send(
            &srv.addr,
            "GET",
            &format!("/v1/videos/{id}/events"),
            &h,
            None,
        );
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r);
        assert_eq!(status, 200);
        assert!(headers["content-type"].starts_with("text/event-stream"));
        Sse {
            r,
            chunked: headers
                .get("transfer-encoding")
                .is_some_and(|t| t == "chunked"),
            buf: String::new(),
        }
    }

    pub fn more(&mut self) -> bool {
        if self.chunked {
            let mut l = String::new();
            if self.r.read_line(&mut l).unwrap_or(0) == 0 {
                return false;
            }
            let Ok(n) = usize::from_str_radix(l.trim(), 16) else {
                return false;
            };
            if n == 0 {
                return false;
            }
            let mut c = vec![0; n + 2];
            self.r.read_exact(&mut c).unwrap();
            self.buf += &String::from_utf8_lossy(&c[..n]);
        } else {
            let mut l = String::new();
            if self.r.read_line(&mut l).unwrap_or(0) == 0 {
                return false;
            }
            self.buf += &l;
        }
        true
    }

    /// The next event, or None at the end of the stream.
    pub fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for l in block.lines() {
                    if let Some(v) = l.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = l.strip_prefix("data:") {
                        data += v.trim_start();
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                return Some((name, serde_json::from_str(&data).unwrap()));
            }
            if !self.more() {
                return None;
            }
        }
    }

    /// Every event up to the end of the stream.
    pub fn all(mut self) -> Vec<(String, Value)> {
        let mut v = Vec::new();
        while let Some(e) = self.next() {
            v.push(e);
        }
        v
    }
}

/// A tiny request: `frames` frames of 48x32, `steps` steps, 12 fps.
pub fn tiny(prompt: &str, frames: usize, steps: usize, seed: u64) -> Value {
    json!({"prompt": prompt, "size": "48x32", "num_frames": frames, "num_inference_steps": steps, "fps": 12, "seed": seed})
}

/// A job that runs long enough to be cancelled while it runs.
pub fn long(prompt: &str) -> Value {
    json!({"prompt": prompt, "size": "32x32", "num_frames": 5, "num_inference_steps": 1000, "seed": 1})
}

/// Sends `raw` as is (a request head the helpers above would not write: another Host, no
/// Host) and reads the answer's status line, headers and body (Content-Length or to the end).
pub fn raw(addr: &str, raw: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(raw).unwrap();
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let mut body = Vec::new();
    if let Some(n) = headers.get("content-length") {
        body.resize(n.parse().unwrap(), 0);
        r.read_exact(&mut body).unwrap();
    } else if !headers.contains_key("transfer-encoding") {
        let _ = r.read_to_end(&mut body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

/// The server's resident memory (VmRSS, kB).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The server tests run the CPU (`--device cpu`): the test command's second pass (the suite on
/// the emulated GPU) has nothing new for them.
pub fn cpu_tests_done() -> bool {
    let done = std::env::var("CONTENTV_CPU_TESTS_DONE").is_ok_and(|v| v == "1");
    if done {
        println!("SKIP: serve: CPU only, already run in the test command's first pass");
    }
    done
}
