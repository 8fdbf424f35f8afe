//! `switchyard check-config`'s output: the effective configuration as TOML, with the
//! secrets it holds (HS256 secrets, the Redis password, a password inside a Redis or OTLP
//! endpoint URL, the values of the OTLP headers) redacted.

use super::Config;

impl Config {
    /// The effective configuration as TOML, secrets redacted: what `switchyard check-config`
    /// prints.
    pub fn to_redacted_toml(&self) -> Result<String, String> {
        let mut v = serde_json::to_value(self).map_err(|e| e.to_string())?;
        // Secrets are not printed: only how many there are.
        if let Some(list) = v
            .pointer_mut("/auth/hs256_secrets")
            .and_then(|s| s.as_array_mut())
        {
            for s in list.iter_mut() {
                *s = serde_json::Value::from("<redacted>");
            }
        }
        if let Some(p) = v.pointer_mut("/redis/password") {
            *p = serde_json::Value::from("<redacted>");
        }
        // A password inside a Redis URL (`redis://user:secret@host`) is a secret too.
        if let Some(u) = v.pointer_mut("/redis/url") {
            *u = serde_json::Value::from(redact_url(u.as_str().unwrap_or_default()));
        }
        if let Some(list) = v.pointer_mut("/redis/urls").and_then(|s| s.as_array_mut()) {
            for u in list.iter_mut() {
                *u = serde_json::Value::from(redact_url(u.as_str().unwrap_or_default()));
            }
        }
        if let Some(u) = v.pointer_mut("/telemetry/otlp_endpoint")
            && let Some(url) = u.as_str()
        {
            *u = serde_json::Value::from(redact_url(url));
        }
        // OTLP headers often carry an API key (`x-api-key`, `Authorization`): names only.
        if let Some(h) = v
            .pointer_mut("/telemetry/otlp_headers")
            .and_then(|h| h.as_object_mut())
        {
            for val in h.values_mut() {
                *val = serde_json::Value::from("<redacted>");
            }
        }
        let mut out = String::new();
        write_toml(&mut out, "", &v);
        Ok(out)
    }
}

/// `scheme://user:<redacted>@host...` for a URL with a password; unchanged otherwise.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => url.to_string(),
    }
}

/// Print a JSON object as TOML sections (flat values first, then nested tables).
fn write_toml(out: &mut String, section: &str, v: &serde_json::Value) {
    let Some(map) = v.as_object() else { return };
    let key = |k: &str| {
        if !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            k.to_string()
        } else {
            serde_json::Value::from(k).to_string()
        }
    };
    let table_list = |v: &serde_json::Value| {
        v.as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|e| e.is_object()))
    };
    for (k, val) in map.iter().filter(|(_, v)| !v.is_object() && !table_list(v)) {
        match val {
            serde_json::Value::Null if k == "liveness_ms" => out.push_str(&format!(
                "# {k}: unset, derived as 3 x heartbeat_interval_ms\n"
            )),
            serde_json::Value::Null => out.push_str(&format!("# {k}: unset\n")),
            _ => out.push_str(&format!("{} = {val}\n", key(k))),
        }
    }
    let path = |k: &str| {
        if section.is_empty() {
            key(k)
        } else {
            format!("{section}.{}", key(k))
        }
    };
    for (k, val) in map.iter().filter(|(_, v)| v.is_object()) {
        let name = path(k);
        out.push_str(&format!("\n[{name}]\n"));
        write_toml(out, &name, val);
    }
    // Arrays of tables (`[[cells]]`): a table inside an element is `[cells.x]` after the
    // element's header (TOML adds it to the array's last element).
    for (k, val) in map.iter().filter(|(_, v)| table_list(v)) {
        let name = path(k);
        for item in val.as_array().into_iter().flatten() {
            out.push_str(&format!("\n[[{name}]]\n"));
            write_toml(out, &name, item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{redact_url, write_toml};
    use figment::providers::Format;

    /// What the writer prints reads back as the same values, tables inside an array of
    /// tables and arrays of tables inside a table included.
    #[test]
    fn the_toml_written_reads_back_as_the_same_values() {
        let v = serde_json::json!({
            "flat": 1,
            "name with space": "a \"quoted\" \\ text\n",
            "list": ["x", "y"],
            "section": {
                "n": 2,
                "inner": {"deep": true},
                "items": [{"a": 1, "sub": {"b": "c"}}, {"a": 2}]
            },
            "cells": [
                {"name": "main", "tenants": [], "limits": {"max": 3}},
                {"name": "other", "tenants": ["t1"]}
            ]
        });
        let mut out = String::new();
        write_toml(&mut out, "", &v);
        let back: serde_json::Value =
            figment::Figment::from(figment::providers::Toml::string(&out))
                .extract()
                .unwrap_or_else(|e| panic!("{e}:\n{out}"));
        assert_eq!(back, v, "{out}");
    }

    #[test]
    fn a_password_in_a_redis_url_is_redacted_and_nothing_else_is() {
        assert_eq!(
            redact_url("redis://user:secret@10.0.0.1:6379/0"),
            "redis://user:<redacted>@10.0.0.1:6379/0"
        );
        // a password with an '@' in it: the host is after the last one
        assert_eq!(
            redact_url("rediss://:p@ss@redis.example:6380"),
            "rediss://:<redacted>@redis.example:6380"
        );
        for plain in [
            "redis://10.0.0.1:6379",
            "redis://user@host:6379",
            "host:6379",
        ] {
            assert_eq!(redact_url(plain), plain);
        }
    }
}
