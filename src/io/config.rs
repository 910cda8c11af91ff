//! `config.json` files of the checkpoint's components, read the way diffusers and transformers
//! read them: a key that is absent or `null` takes the class default; a key of the wrong type
//! is an error that names the file and the key.
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// A parsed config.json and where it came from (for error messages).
pub struct ConfigJson {
    v: Value,
    origin: String,
}

impl ConfigJson {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<ConfigJson> {
        let text = std::fs::read(path)
            .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
        ConfigJson::parse(&text, &path.display().to_string())
    }

    /// Parses JSON text; `origin` (usually the file's path) names it in errors.
    pub fn parse(text: &[u8], origin: &str) -> Result<ConfigJson> {
        let v: Value = serde_json::from_slice(text)
            .map_err(|e| Error::Weights(format!("{origin} is not valid JSON: {e}")))?;
        if !v.is_object() {
            return Err(Error::Weights(format!(
                "{origin}: a config must be a JSON object"
            )));
        }
        Ok(ConfigJson {
            v,
            origin: origin.to_string(),
        })
    }

    /// The object under `key` if there is one (e.g. a `CLIPConfig`'s `text_config`), else self.
    pub fn nested_or_self(self, key: &str) -> ConfigJson {
        match self.v.get(key) {
            Some(n) if n.is_object() => ConfigJson {
                v: n.clone(),
                origin: format!("{} ({key})", self.origin),
            },
            _ => self,
        }
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The value of `key`; `null` counts as absent.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.v.get(key).filter(|x| !x.is_null())
    }

    /// An error about `key`: `"<file>: "<key>" <what>"`.
    pub fn bad(&self, key: &str, what: &str) -> Error {
        Error::Weights(format!("{}: \"{key}\" {what}", self.origin))
    }

    /// A positive integer, or `None` when absent.
    pub fn positive(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(x) => x
                .as_u64()
                .filter(|&n| n > 0)
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.bad(key, &format!("is {x}, expected a positive integer"))),
        }
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(x) => x
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| self.bad(key, &format!("must be a non-negative integer, got {x}"))),
        }
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(x) => x
                .as_f64()
                .ok_or_else(|| self.bad(key, &format!("must be a number, got {x}"))),
        }
    }

    pub fn str_or<'a>(&'a self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(x) => x
                .as_str()
                .ok_or_else(|| self.bad(key, &format!("must be a string, got {x}"))),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(x) => x
                .as_bool()
                .ok_or_else(|| self.bad(key, &format!("must be true or false, got {x}"))),
        }
    }

    /// A list of booleans (`None` when absent).
    pub fn bools(&self, key: &str) -> Result<Option<Vec<bool>>> {
        self.list(key, |x| x.as_bool(), "booleans")
    }

    /// A list of non-negative integers (`None` when absent).
    pub fn usizes(&self, key: &str) -> Result<Option<Vec<usize>>> {
        self.list(
            key,
            |x| x.as_u64().and_then(|n| usize::try_from(n).ok()),
            "non-negative integers",
        )
    }

    /// A list of numbers (`None` when absent).
    pub fn f64s(&self, key: &str) -> Result<Option<Vec<f64>>> {
        self.list(key, |x| x.as_f64(), "numbers")
    }

    fn list<T>(
        &self,
        key: &str,
        item: impl Fn(&Value) -> Option<T>,
        what: &str,
    ) -> Result<Option<Vec<T>>> {
        let Some(x) = self.get(key) else {
            return Ok(None);
        };
        x.as_array()
            .and_then(|a| a.iter().map(&item).collect::<Option<Vec<T>>>())
            .map(Some)
            .ok_or_else(|| self.bad(key, &format!("must be a list of {what}, got {x}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_types_and_errors() {
        let c = ConfigJson::parse(
            br#"{"a": 3, "b": null, "f": 1e-6, "s": "gelu", "t": [true, false], "n": [1, 2],
                 "x": -1, "l": [1, "x"], "text_config": {"a": 7}}"#,
            "dir/config.json",
        )
        .unwrap();
        assert_eq!(c.usize_or("a", 0).unwrap(), 3);
        assert_eq!(c.usize_or("b", 5).unwrap(), 5, "null = absent");
        assert_eq!(c.usize_or("zz", 9).unwrap(), 9);
        assert_eq!(c.f64_or("f", 0.0).unwrap(), 1e-6);
        assert_eq!(c.f64_or("a", 0.0).unwrap(), 3.0);
        assert_eq!(c.str_or("s", "relu").unwrap(), "gelu");
        assert_eq!(c.bools("t").unwrap(), Some(vec![true, false]));
        assert_eq!(c.usizes("n").unwrap(), Some(vec![1, 2]));
        assert_eq!(c.usizes("none").unwrap(), None);
        assert_eq!(c.positive("a").unwrap(), Some(3));
        assert_eq!(c.positive("b").unwrap(), None);
        assert!(c.positive("x").is_err());
        let e = c.usize_or("x", 0).unwrap_err().to_string();
        assert!(e.contains("dir/config.json") && e.contains("\"x\""), "{e}");
        let e = c.usizes("l").unwrap_err().to_string();
        assert!(e.contains("\"l\"") && e.contains("list of"), "{e}");
        assert!(c.str_or("a", "").is_err());
        let n = c.nested_or_self("text_config");
        assert_eq!(n.usize_or("a", 0).unwrap(), 7);
        assert!(n.origin().contains("text_config"));
        let e = ConfigJson::parse(b"{ nope", "v/config.json")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("v/config.json") && e.contains("not valid JSON"),
            "{e}"
        );
        assert!(ConfigJson::parse(b"[1]", "c").is_err());
    }
}
