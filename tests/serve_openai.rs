//! The official OpenAI Python SDK against `contentv serve` (tiny model, CPU, loopback):
//! `client.videos.create` (multipart/form-data), `retrieve`, `list`, `download_content`,
//! `delete`. The SDK is installed from PyPI into target/openai-venv (pinned, [`OPENAI`]); the
//! test says SKIP when pip cannot reach the registry, unless CONTENTV_REQUIRE_OPENAI=1
//! (scripts/test.sh: CI reaches PyPI, so there it must run).
#[path = "common/http.rs"]
mod http;

use std::path::PathBuf;
use std::process::Command;

use http::*;

const OPENAI: &str = "openai==3.63.0";

fn venv_python() -> Option<PathBuf> {
    let v = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/openai-venv");
    let py = v.join("bin/python");
    let ok = |py: &PathBuf| {
        Command::new(py)
            .args(["-c", "import openai; print(openai.__version__)"])
            .output()
            .is_ok_and(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == &OPENAI[8..]
            })
    };
    if ok(&py) {
        return Some(py);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&v)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(v.join("bin/pip"))
            .args([
                "install",
                "-q",
                "--disable-pip-version-check",
                "--timeout",
                "30",
                OPENAI,
            ])
            .status()
            .is_ok_and(|s| s.success());
    (made && ok(&py)).then_some(py)
}

const SCRIPT: &str = r#"
import sys, openai
base, out = sys.argv[1], sys.argv[2]
c = openai.OpenAI(base_url=base + "/v1", api_key="sdk-key", max_retries=0, timeout=60)
v = c.videos.create(model="contentv", prompt="a red ball", seconds="1", size="32x32")
assert v.id.startswith("video_"), v
for _ in range(600):
    v = c.videos.retrieve(v.id)
    if v.status in ("completed", "failed"):
        break
    import time; time.sleep(0.1)
assert v.status == "completed", v
ids = [x.id for x in c.videos.list(limit=10).data]
assert v.id in ids, ids
content = c.videos.download_content(v.id)
content.write_to_file(out)
d = c.videos.delete(v.id)
assert d.deleted, d
try:
    c.videos.create(prompt="x", seconds="1", size="32x32", input_reference=("a.png", b"\x89PNG", "image/png"))
    raise SystemExit("input_reference was accepted")
except openai.BadRequestError as e:
    assert "input_reference" in str(e), e
print("sdk ok", v.id)
"#;

#[test]
fn official_openai_python_sdk() {
    if cpu_tests_done() {
        return;
    }
    let Some(py) = venv_python() else {
        if std::env::var("CONTENTV_REQUIRE_OPENAI").is_ok_and(|v| v == "1") {
            panic!("CONTENTV_REQUIRE_OPENAI=1 but {OPENAI} could not be installed from PyPI into target/openai-venv");
        }
        println!("SKIP: pip could not install {OPENAI}: the OpenAI SDK test did not run");
        return;
    };
    let d = scratch("openai-sdk");
    let srv = Server::start(&d, &["--api-key", "sdk-key"]);
    let out_file = d.join("download.bin");
    let o = Command::new(py)
        .args(["-c", SCRIPT, &format!("http://{}", srv.addr)])
        .arg(&out_file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}\n{}", srv.log.lock().unwrap());
    assert!(text.contains("sdk ok"), "{text}");
    let n = std::fs::metadata(&out_file).unwrap().len();
    assert!(n > 0, "downloaded nothing");
}
