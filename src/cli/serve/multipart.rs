//! `multipart/form-data` bodies of `POST /v1/videos` (what the official OpenAI SDKs send):
//! the form fields become the JSON object the JSON path checks. Fields are text; numbers are
//! read from it where the API field is a number (`seconds` and `size` stay strings). A file
//! part `input_reference` is refused: ContentV makes videos from text only.
use serde_json::{Map, Value};

use super::job::{BadRequest, API_FIELDS};

/// The API fields whose values are numbers.
const NUMBER_FIELDS: [&str; 6] = [
    "num_frames",
    "fps",
    "num_inference_steps",
    "guidance_scale",
    "shift",
    "seed",
];

fn bad(message: impl Into<String>, param: Option<&str>) -> BadRequest {
    BadRequest {
        message: message.into(),
        param: param.map(str::to_string),
        code: "invalid_value",
    }
}

/// The `boundary` parameter of a Content-Type value.
fn boundary(ctype: &str) -> Option<String> {
    ctype.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    (from..=hay.len() - needle.len()).find(|&i| &hay[i..i + needle.len()] == needle)
}

/// A part's `name` and `filename` from its Content-Disposition header.
fn disposition(head: &str) -> (Option<String>, Option<String>) {
    let mut name = None;
    let mut file = None;
    for line in head.split("\r\n") {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if !k.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        for p in v.split(';').skip(1) {
            if let Some((pk, pv)) = p.split_once('=') {
                let pv = pv.trim().trim_matches('"').to_string();
                match pk.trim().to_ascii_lowercase().as_str() {
                    "name" => name = Some(pv),
                    "filename" => file = Some(pv),
                    _ => {}
                }
            }
        }
    }
    (name, file)
}

/// The JSON body (bytes) equal to a multipart body.
pub fn to_json(ctype: &str, body: &[u8]) -> Result<Vec<u8>, BadRequest> {
    let b = boundary(ctype).ok_or_else(|| {
        bad(
            "multipart/form-data without a boundary parameter in Content-Type",
            None,
        )
    })?;
    let delim = format!("--{b}");
    let mut obj = Map::new();
    let mut at = find(body, delim.as_bytes(), 0)
        .ok_or_else(|| bad("the multipart body has no part", None))?
        + delim.len();
    loop {
        if body[at..].starts_with(b"--") {
            break; // the closing delimiter
        }
        let head_start = at + 2; // CRLF after the delimiter
        let head_end = find(body, b"\r\n\r\n", head_start)
            .ok_or_else(|| bad("a multipart part has no end of headers", None))?;
        let head = String::from_utf8_lossy(&body[head_start.min(head_end)..head_end]);
        let data_start = head_end + 4;
        let next = find(body, format!("\r\n{delim}").as_bytes(), data_start)
            .ok_or_else(|| bad("the multipart body ends inside a part", None))?;
        let data = &body[data_start..next];
        at = next + 2 + delim.len();
        let (name, file) = disposition(&head);
        let Some(name) = name else {
            return Err(bad("a multipart part has no name", None));
        };
        if name == "input_reference" || file.is_some() {
            return Err(bad(
                format!("field \"{name}\": a file was sent, but ContentV makes videos from text only (leave out input_reference)"),
                Some(&name),
            ));
        }
        if !API_FIELDS.contains(&name.as_str()) {
            return Err(BadRequest {
                message: format!(
                    "unknown field \"{name}\"; the fields are: {}",
                    API_FIELDS.join(", ")
                ),
                param: Some(name),
                code: "unknown_parameter",
            });
        }
        let text = std::str::from_utf8(data)
            .map_err(|_| bad(format!("field \"{name}\" is not UTF-8 text"), Some(&name)))?;
        let v = if NUMBER_FIELDS.contains(&name.as_str()) {
            serde_json::from_str::<serde_json::Number>(text.trim())
                .map(Value::Number)
                .unwrap_or_else(|_| Value::String(text.to_string()))
        } else {
            Value::String(text.to_string())
        };
        if obj.insert(name.clone(), v).is_some() {
            return Err(bad(
                format!("field \"{name}\" is given more than once; keep one"),
                Some(&name),
            ));
        }
    }
    Ok(Value::Object(obj).to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_fields_become_the_json_fields() {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na cat\r\n--XyZ\r\nContent-Disposition: form-data; name=\"seconds\"\r\n\r\n4\r\n--XyZ\r\nContent-Disposition: form-data; name=\"num_inference_steps\"\r\n\r\n3\r\n--XyZ--\r\n";
        let j = super::to_json("multipart/form-data; boundary=XyZ", body.as_bytes()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&j).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"prompt": "a cat", "seconds": "4", "num_inference_steps": 3})
        );
        let file = "--b\r\nContent-Disposition: form-data; name=\"input_reference\"; filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n\x01\x02\r\n--b--\r\n";
        let e = super::to_json("multipart/form-data; boundary=b", file.as_bytes()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input_reference"));
        assert!(super::to_json("multipart/form-data", b"").is_err());
        assert!(super::to_json(
            "multipart/form-data; boundary=b",
            b"--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nno end"
        )
        .is_err());
    }
}
