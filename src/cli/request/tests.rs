//! Tests of the request module.
use super::*;
use crate::model::pipeline::LatentLayout;

fn out(_: u64) -> PathBuf {
    PathBuf::from("/tmp/x.mp4")
}

#[test]
fn merge_and_validate() {
    let d = RequestFields {
        prompt: Some("a".into()),
        steps: Some(3),
        ..Default::default()
    };
    let l =
        RequestFields::from_json_line(r#"{"prompt": "b", "frames": 10, "negative-prompt": "n"}"#)
            .unwrap()
            .or(&d);
    let r = resolve(l, LatentLayout::CONTENTV, &out).unwrap();
    assert_eq!(
        (
            r.video.prompt.as_str(),
            r.video.frames,
            r.video.steps,
            r.video.negative_prompt.as_str()
        ),
        ("b", 9, 3, "n")
    );
    assert_eq!(r.warnings.len(), 1);
    assert!(
        RequestFields::from_json_line(r#"{"prompt": "b", "model": "x"}"#)
            .unwrap_err()
            .to_string()
            .contains("--model")
    );
    assert!(RequestFields::from_json_line(r#"{"promt": "b"}"#)
        .unwrap_err()
        .to_string()
        .contains("promt"));
    assert!(RequestFields::from_json_line(r#"[1]"#).is_err());
    assert!(RequestFields::from_json_line(r#"{"prompt": 3}"#).is_err());
    // Range errors come from the line reader (with the field's bounds) or, for what
    // depends on the model (multiples of 16), from `resolve`.
    let bad = |j: &str| {
        RequestFields::from_json_line(j)
            .and_then(|f| resolve(f, LatentLayout::CONTENTV, &out))
            .unwrap_err()
            .to_string()
    };
    assert!(bad(r#"{"prompt":"a","frames":0}"#).contains("frames"));
    assert!(bad(r#"{"prompt":"a","width":100}"#).contains("multiple of 16"));
    assert!(bad(r#"{"prompt":"a","steps":0}"#).contains("steps"));
    assert!(bad(r#"{"prompt":"a","guidance":-1}"#).contains("guidance"));
    assert!(bad(r#"{"frames":5}"#).contains("prompt"));
    assert_eq!(parse_shard("1/4").unwrap(), (1, 4));
    assert!(
        parse_shard("4/4").is_err() && parse_shard("x").is_err() && parse_shard("0/0").is_err()
    );
}

fn line_err(j: &str) -> String {
    RequestFields::from_json_line(j).unwrap_err().to_string()
}

#[test]
fn line_errors_name_the_field_and_what_was_expected() {
    // unknown field, with and without a suggestion; kebab spelling of a typo
    let e = line_err(r#"{"prompt": "a", "stpes": 3}"#);
    assert!(
        e.contains("unknown field \"stpes\" (did you mean \"steps\"?)"),
        "{e}"
    );
    assert!(e.contains("the fields are: prompt, negative_prompt"), "{e}");
    let e = line_err(r#"{"prompt": "a", "colour": 3}"#);
    assert!(
        e.contains("unknown field \"colour\"; the fields are"),
        "{e}"
    );
    let e = line_err(r#"{"prompt": "a", "init-nosie": "x"}"#);
    assert!(e.contains("did you mean \"init_noise\""), "{e}");
    // whole-run option
    let e = line_err(r#"{"prompt": "a", "vram-budget": 3}"#);
    assert!(e.contains("--vram-budget on the command line"), "{e}");
    // wrong types, naming the field, the expected range and what was given
    let e = line_err(r#"{"prompt": "a", "steps": "abc"}"#);
    assert_eq!(
        e,
        "field \"steps\": expected a whole number 1..=1000, got the string \"abc\" (write the number without quotes)"
    );
    let e = line_err(r#"{"prompt": "a", "frames": 2.5}"#);
    assert!(
        e.contains("field \"frames\": expected a whole number 1..=1001, got 2.5"),
        "{e}"
    );
    let e = line_err(r#"{"prompt": "a", "seed": [1]}"#);
    assert!(
        e.contains("field \"seed\": expected a whole number") && e.contains("a JSON array ([1])"),
        "{e}"
    );
    let e = line_err(r#"{"prompt": 3}"#);
    assert!(
        e.contains("field \"prompt\": expected a string, got a number (3)"),
        "{e}"
    );
    let e = line_err(r#"{"prompt": "a", "guidance": true}"#);
    assert!(
        e.contains("field \"guidance\": expected a number from 0 to 100, got true/false"),
        "{e}"
    );
    let e = line_err(r#"{"prompt": "a", "output": "  "}"#);
    assert!(e.contains("field \"output\" is an empty string"), "{e}");
    // out of range, with the real bounds
    let e = line_err(r#"{"prompt": "a", "steps": 1001}"#);
    assert!(
        e.contains("field \"steps\" = 1001 is too large: expected a whole number 1..=1000"),
        "{e}"
    );
    let e = line_err(r#"{"prompt": "a", "steps": 0}"#);
    assert!(e.contains("field \"steps\" = 0 is too small"), "{e}");
    let e = line_err(r#"{"prompt": "a", "fps": -3}"#);
    assert!(
        e.contains("field \"fps\" = -3 is too small: expected a whole number 1..=240"),
        "{e}"
    );
    let e = line_err(r#"{"prompt": "a", "crf": 52}"#);
    assert!(
        e.contains("field \"crf\" = 52 is too large: expected a whole number 0..=51"),
        "{e}"
    );
    let e = line_err(r#"{"prompt": "a", "width": 8192}"#);
    assert!(
        e.contains("field \"width\" = 8192 is too large: expected a whole number 1..=4096"),
        "{e}"
    );
    let e = line_err(r#"{"prompt": "a", "shift": 0}"#);
    assert!(
        e.contains("field \"shift\" = 0 is out of range: expected a number from 0.001 to 1000"),
        "{e}"
    );
    let e = line_err(r#"{"prompt": "a", "seed": 99999999999999999999999}"#);
    assert!(
        e.contains("field \"seed\"") && e.contains("too large"),
        "{e}"
    );
    // duplicates, also across spellings
    let e = line_err(r#"{"prompt": "a", "prompt": "b"}"#);
    assert_eq!(e, "field \"prompt\" is given more than once; keep one");
    let e = line_err(r#"{"prompt": "a", "save_latents": "x", "save-latents": "y"}"#);
    assert!(
        e.contains("\"save_latents\" is given more than once"),
        "{e}"
    );
    // not an object, not JSON
    for (j, kind) in [
        ("[1]", "a JSON array"),
        ("\"a\"", "a string"),
        ("3", "a number"),
        ("null", "null"),
    ] {
        let e = line_err(j);
        assert!(
            e.starts_with(&format!(
                "the line is {kind}, but each line must be a JSON object"
            )),
            "{j}: {e}"
        );
    }
    let e = line_err(r#"{"prompt": "a" "seed": 3}"#);
    assert!(e.starts_with("not valid JSON: expected `,` or `}`"), "{e}");
    // no position suffix of the one-line parse
    assert!(!line_err(r#"{"prompt": "a", "steps": 0}"#).contains("column"));
    // good values: null is "not given", integral floats and kebab names are accepted
    let f = RequestFields::from_json_line(
        r#"{"prompt": "a", "steps": 4.0, "negative-prompt": null, "seed": 18446744073709551615, "guidance": 0, "init-noise": "n.safetensors"}"#,
    )
    .unwrap();
    assert_eq!(
        (f.steps, f.negative_prompt, f.seed, f.guidance),
        (Some(4), None, Some(u64::MAX), Some(0.0))
    );
    assert_eq!(f.init_noise, Some(PathBuf::from("n.safetensors")));
}
