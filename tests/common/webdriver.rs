//! A W3C WebDriver client (headless Chromium through chromedriver) over the raw HTTP client
//! of [`super::http`], for the server's browser tests. Include after `http` with
//! `#[path = "common/webdriver.rs"] mod webdriver;`.
#![allow(dead_code)]
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::http::request;

/// Tools found, or None (the caller says SKIP, or fails under CONTENTV_REQUIRE_BROWSER=1).
pub fn tools_or_skip(what: &str) -> Option<(PathBuf, PathBuf)> {
    match Browser::find_tools() {
        Some(t) => Some(t),
        None => {
            if std::env::var("CONTENTV_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
                panic!("CONTENTV_REQUIRE_BROWSER=1 but chromium / chromedriver are not installed (scripts/deps.sh installs them)");
            }
            println!("SKIP: chromium and chromedriver are not installed: {what} did not run");
            None
        }
    }
}

/// A W3C WebDriver session on chromedriver, spoken over the raw HTTP client above.
pub struct Browser {
    pub driver: Child,
    pub addr: String,
    pub session: String,
}

pub const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    pub fn find_tools() -> Option<(PathBuf, PathBuf)> {
        let which = |names: &[&str]| {
            names.iter().find_map(|n| {
                std::env::var_os("PATH").and_then(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join(n))
                        .find(|f| f.is_file())
                })
            })
        };
        Some((
            which(&["chromedriver"])?,
            which(&["chromium", "chromium-browser", "google-chrome"])?,
        ))
    }

    pub fn start(driver: &Path, chrome: &Path) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start chromedriver");
        let addr = format!("127.0.0.1:{port}");
        let t = Instant::now();
        while TcpStream::connect(&addr).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chrome.to_str().unwrap(),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--autoplay-policy=no-user-gesture-required"]}}}});
        let mut b = Browser {
            driver: child,
            addr,
            session: String::new(),
        };
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().expect("no session").to_string();
        b
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let p = if self.session.is_empty() {
            path.to_string()
        } else {
            format!("/session/{}{path}", self.session)
        };
        let b = body.map(|v| v.to_string().into_bytes());
        let r = request(&self.addr, method, &p, &[], b.as_deref());
        assert_eq!(r.status, 200, "WebDriver {method} {p}: {}", r.text());
        r.json()["value"].clone()
    }

    pub fn run(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    pub fn element(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT].as_str().unwrap().to_string()
    }

    pub fn fill(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.call("POST", &format!("/element/{e}/clear"), Some(json!({})));
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        );
    }

    /// Clicks the element; again if the page re-rendered it in between (a stale element).
    pub fn click(&self, css: &str) {
        for _ in 0..50 {
            let e = self.element(css);
            let p = format!("/session/{}/element/{e}/click", self.session);
            let r = request(&self.addr, "POST", &p, &[], Some(b"{}"));
            if r.status == 200 {
                return;
            }
            assert!(
                r.text().contains("stale element"),
                "click {css}: {}",
                r.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{css} stayed stale");
    }

    /// Polls `script` until it returns something truthy.
    pub fn until(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let t = Instant::now();
        loop {
            let v = self.run(script);
            if !(v.is_null() || v == false) {
                return v;
            }
            assert!(t.elapsed() < timeout, "the page never showed {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = request(
                &self.addr,
                "DELETE",
                &format!("/session/{}", self.session),
                &[],
                None,
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let b: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::new();
    for c in b.chunks(4) {
        let mut n = 0u32;
        for (i, &x) in c.iter().enumerate() {
            n |= (val(x) as u32) << (18 - 6 * i);
        }
        for i in 0..c.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}
