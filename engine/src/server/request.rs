//! Parsing and validating OpenAI request bodies by hand, so every error names its field.
//! Unknown fields are ignored, as OpenAI does; `null` counts as absent.

use serde_json::{Map, Value};

use super::error::ApiError;
use crate::model::ChatMessage;

/// Longest stop string list accepted.
const MAX_STOPS: usize = 16;

/// Which endpoint a body is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// The input to generate from.
#[derive(Debug, Clone)]
pub enum Input {
    Prompt(String),
    Messages(Vec<ChatMessage>),
}

/// A parsed, validated request (sizes are checked later against the tokenized prompt).
#[derive(Debug, Clone)]
pub struct ParsedRequest {
    pub model: Option<String>,
    pub input: Input,
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// vLLM's extension: keep generating past stop tokens (used by `bench`).
    pub ignore_eos: bool,
}

/// Parses a request body for `endpoint`.
pub fn parse(body: &[u8], endpoint: Endpoint) -> Result<ParsedRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_body(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::invalid_body("the request body must be a JSON object"));
    };
    let input = match endpoint {
        Endpoint::Completions => Input::Prompt(prompt(&obj)?),
        Endpoint::Chat => Input::Messages(messages(&obj)?),
    };
    let model = opt_str(&obj, "model")?.map(str::to_string);
    let max_tokens = match opt_uint(&obj, "max_tokens")? {
        Some(n) => Some(n),
        None => opt_uint(&obj, "max_completion_tokens")?,
    };
    let max_tokens = match max_tokens {
        Some(0) => return Err(ApiError::invalid("max_tokens", "max_tokens must be at least 1")),
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        None => None,
    };
    let temperature = opt_num(&obj, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            "temperature must be between 0 and 2",
        ));
    }
    // Checked as the f32 the sampler uses: a tiny positive f64 (1e-250) would round to 0.
    let top_p = opt_num(&obj, "top_p")?.unwrap_or(1.0) as f32;
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", "top_p must be in (0, 1]"));
    }
    let top_k = match opt_int(&obj, "top_k")? {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
        Some(_) => return Err(ApiError::invalid("top_k", "top_k must be -1, 0 or positive")),
    };
    let seed = opt_int(&obj, "seed")?.map(|s| s as u64);
    if let Some(n) = opt_int(&obj, "n")?
        && n != 1
    {
        return Err(ApiError::invalid("n", "only n = 1 is supported"));
    }
    let stream = opt_bool(&obj, "stream")?.unwrap_or(false);
    let include_usage = match field(&obj, "stream_options") {
        None => false,
        Some(Value::Object(o)) => opt_bool(o, "include_usage")
            .map_err(|_| ApiError::invalid("stream_options.include_usage", "must be a boolean"))?
            .unwrap_or(false),
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "stream_options must be an object",
            ));
        }
    };
    let ignore_eos = opt_bool(&obj, "ignore_eos")?.unwrap_or(false);
    Ok(ParsedRequest {
        model,
        input,
        max_tokens,
        temperature: temperature as f32,
        top_p,
        top_k,
        seed,
        stop: stop(&obj)?,
        stream,
        include_usage,
        ignore_eos,
    })
}

fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn type_error(key: &str, what: &str) -> ApiError {
    ApiError::invalid(key, format!("{key} must be {what}"))
}

fn opt_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(type_error(key, "a string")),
    }
}

fn opt_num(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or_else(|| type_error(key, "a number")),
        Some(_) => Err(type_error(key, "a number")),
    }
}

fn opt_int(obj: &Map<String, Value>, key: &str) -> Result<Option<i64>, ApiError> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(u) = n.as_u64() {
                Ok(Some(i64::try_from(u).unwrap_or(i64::MAX)))
            } else {
                Err(type_error(key, "an integer"))
            }
        }
        Some(_) => Err(type_error(key, "an integer")),
    }
}

fn opt_uint(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, ApiError> {
    match opt_int(obj, key)? {
        None => Ok(None),
        Some(i) if i >= 0 => Ok(Some(i as u64)),
        Some(_) => Err(type_error(key, "a non-negative integer")),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(type_error(key, "a boolean")),
    }
}

fn prompt(obj: &Map<String, Value>) -> Result<String, ApiError> {
    let text = match field(obj, "prompt") {
        None => return Err(ApiError::invalid("prompt", "prompt is required")),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => match a.as_slice() {
            [Value::String(s)] => s.clone(),
            [] => return Err(ApiError::invalid("prompt", "prompt must not be empty")),
            [_] => return Err(type_error("prompt", "a string or an array of one string")),
            _ => {
                return Err(ApiError::invalid(
                    "prompt",
                    "only one prompt per request is supported",
                ));
            }
        },
        Some(_) => return Err(type_error("prompt", "a string or an array of one string")),
    };
    if text.is_empty() {
        return Err(ApiError::invalid("prompt", "prompt must not be empty"));
    }
    Ok(text)
}

fn messages(obj: &Map<String, Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let Some(v) = field(obj, "messages") else {
        return Err(ApiError::invalid("messages", "messages is required"));
    };
    let Value::Array(items) = v else {
        return Err(type_error("messages", "an array of messages"));
    };
    if items.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let Value::Object(m) = m else {
                return Err(type_error(&format!("messages[{i}]"), "an object"));
            };
            let role = match field(m, "role") {
                Some(Value::String(r)) => r.clone(),
                _ => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].role"),
                        "role must be a string",
                    ));
                }
            };
            let content = match field(m, "content") {
                None => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => content_parts(parts, i)?,
                Some(_) => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].content"),
                        "content must be a string or an array of text parts",
                    ));
                }
            };
            Ok(ChatMessage { role, content })
        })
        .collect()
}

fn content_parts(parts: &[Value], i: usize) -> Result<String, ApiError> {
    let mut out = String::new();
    for (j, p) in parts.iter().enumerate() {
        let text = p
            .as_object()
            .filter(|o| o.get("type").and_then(Value::as_str) == Some("text"))
            .and_then(|o| o.get("text"))
            .and_then(Value::as_str);
        match text {
            Some(t) => out.push_str(t),
            None => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].content[{j}]"),
                    "only text content parts are supported",
                ));
            }
        }
    }
    Ok(out)
}

fn stop(obj: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let stops = match field(obj, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| type_error("stop", "a string or an array of strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(type_error("stop", "a string or an array of strings")),
    };
    if stops.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!("at most {MAX_STOPS} stop strings are supported"),
        ));
    }
    Ok(stops.into_iter().filter(|s| !s.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn param(body: &str, ep: Endpoint) -> Option<String> {
        parse(body.as_bytes(), ep).expect_err("should fail").param
    }

    #[test]
    fn names_the_field() {
        let c = Endpoint::Completions;
        assert_eq!(param("{", c), None);
        assert_eq!(
            param(r#"{"prompt":"x","temperature":"hot"}"#, c).as_deref(),
            Some("temperature")
        );
        assert_eq!(
            param(r#"{"prompt":"x","temperature":3}"#, c).as_deref(),
            Some("temperature")
        );
        assert_eq!(param(r#"{"prompt":"x","top_p":0}"#, c).as_deref(), Some("top_p"));
        assert_eq!(
            param(r#"{"prompt":"x","top_p":1e-250}"#, c).as_deref(),
            Some("top_p")
        );
        assert_eq!(param(r#"{"prompt":"x","n":2}"#, c).as_deref(), Some("n"));
        assert_eq!(
            param(r#"{"prompt":"x","max_tokens":-1}"#, c).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            param(r#"{"prompt":"x","max_tokens":0}"#, c).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(param(r#"{"prompt":""}"#, c).as_deref(), Some("prompt"));
        assert_eq!(param(r#"{"prompt":5}"#, c).as_deref(), Some("prompt"));
        assert_eq!(param(r#"{"prompt":"x","stop":[1]}"#, c).as_deref(), Some("stop"));
        assert_eq!(
            param(r#"{"messages":[{"role":1}]}"#, Endpoint::Chat).as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            param(r#"{"model":"m"}"#, Endpoint::Chat).as_deref(),
            Some("messages")
        );
    }

    #[test]
    fn accepts_openai_shapes() {
        let r = parse(
            br#"{"model":"m","prompt":["hi"],"max_tokens":5,"temperature":0,"stop":"\n","seed":3,
                "stream":true,"stream_options":{"include_usage":true},"unknown":{"x":1},"logprobs":null}"#,
            Endpoint::Completions,
        )
        .expect("valid");
        assert!(matches!(&r.input, Input::Prompt(p) if p == "hi"));
        assert_eq!(
            (r.max_tokens, r.stop.clone(), r.stream, r.include_usage),
            (Some(5), vec!["\n".into()], true, true)
        );
        let r = parse(
            br#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"max_completion_tokens":2}"#,
            Endpoint::Chat,
        )
        .expect("valid");
        assert!(
            matches!(&r.input, Input::Messages(m) if m.len() == 1 && m[0].role == "user" && m[0].content == "ab")
        );
        assert_eq!(r.max_tokens, Some(2));
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("prompt".to_string()),
                        Just("messages".to_string()),
                        Just("role".to_string()),
                        Just("content".to_string()),
                        Just("max_tokens".to_string()),
                        Just("temperature".to_string()),
                        Just("top_p".to_string()),
                        Just("stop".to_string()),
                        Just("n".to_string()),
                        Just("stream_options".to_string()),
                        "[a-z_]{1,6}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes, Endpoint::Completions);
            let _ = parse(&bytes, Endpoint::Chat);
        }

        #[test]
        fn never_panics_on_json(v in json_value()) {
            let body = serde_json::to_vec(&v).unwrap_or_default();
            for ep in [Endpoint::Completions, Endpoint::Chat] {
                match parse(&body, ep) {
                    Ok(r) => {
                        prop_assert!((0.0..=2.0).contains(&r.temperature));
                        prop_assert!(r.top_p > 0.0 && r.top_p <= 1.0);
                        prop_assert!(r.max_tokens != Some(0));
                    }
                    Err(e) => prop_assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST),
                }
            }
        }
    }
}
