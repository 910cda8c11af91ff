//! What a prompt may hold: no NUL or other control characters (they cannot go into the
//! video's metadata), tabs and line breaks excepted; and, for the server, a length bound.
use crate::error::{Error, Result};

/// Longest prompt the server accepts, in characters: far above what the text encoders keep
/// (77 CLIP and 256 T5 tokens), far below what would bloat the job records.
pub const MAX_PROMPT_CHARS: usize = 10_000;

/// Refuses a NUL or another control character (other than tab, line feed and carriage
/// return) in `field`'s text; the message starts with the field's name.
pub fn check(field: &str, s: &str) -> Result<()> {
    if let Some((i, c)) = s
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(Error::Input(format!(
            "{field} holds the control character U+{:04X} at character {}: remove it (it cannot go into the video's metadata)",
            c as u32,
            i + 1
        )));
    }
    Ok(())
}

/// Refuses a text longer than [`MAX_PROMPT_CHARS`] (the server's bound).
pub fn check_length(field: &str, s: &str) -> Result<()> {
    let n = s.chars().count();
    if n > MAX_PROMPT_CHARS {
        return Err(Error::Input(format!(
            "{field} is {n} characters long; at most {MAX_PROMPT_CHARS} are accepted (the text encoders keep the first 77 and 256 tokens)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_refused_with_the_field() {
        assert!(super::check("prompt", "a cat\n\tsurfing").is_ok());
        let e = super::check("prompt", "a\0b").unwrap_err().to_string();
        assert!(
            e.starts_with("prompt holds the control character U+0000 at character 2"),
            "{e}"
        );
        assert!(super::check("negative_prompt", "x\u{1b}[31m").is_err());
        assert!(super::check_length("prompt", &"a".repeat(10_000)).is_ok());
        assert!(super::check_length("prompt", &"a".repeat(10_001)).is_err());
    }
}
