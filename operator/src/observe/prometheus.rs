//! A minimal client of Prometheus's HTTP API: instant queries (`/api/v1/query`) whose result is
//! a vector, each call bounded in time.

use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

/// Why a query gave no result.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Prometheus could not be reached or did not answer in time.
    #[error("Prometheus at {url} did not answer: {source}")]
    Unreachable {
        /// The base URL.
        url: String,
        /// The HTTP error.
        source: reqwest::Error,
    },
    /// Prometheus answered with an error (a bad query, an overloaded server).
    #[error("Prometheus refused the query {query:?}: {message}")]
    Refused {
        /// The PromQL.
        query: String,
        /// Its `error` field, or the HTTP status.
        message: String,
    },
}

/// One series of a vector result: its labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The series' labels, by name. The queries group by a few labels: a list of pairs is a
    /// fraction of a map's size, and a round at 10,000 services holds tens of thousands.
    pub labels: Vec<(String, String)>,
    /// Its value; `NaN` and infinities (an empty histogram's quantile) are `None`.
    pub value: Option<f64>,
}

impl Series {
    /// The value of the label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A Prometheus server.
#[derive(Clone, Debug)]
pub struct Prometheus {
    url: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// A client of the server at `url` (such as `http://prometheus.monitoring.svc:9090`) whose
    /// every query gives up after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            http,
        })
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs an instant query whose result is a vector.
    pub async fn query(&self, promql: &str) -> Result<Vec<Series>, QueryError> {
        let unreachable = |source| QueryError::Unreachable {
            url: self.url.clone(),
            source,
        };
        let response = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?;
        parse(promql, status, &body)
    }
}

#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: Vec<RawSeries>,
}

#[derive(Deserialize)]
struct RawSeries {
    #[serde(deserialize_with = "pairs")]
    metric: Vec<(String, String)>,
    // [unix time, "value"]
    value: (f64, String),
}

/// A JSON object of strings as a list of pairs.
fn pairs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<(String, String)>, D::Error> {
    struct Pairs;
    impl<'de> de::Visitor<'de> for Pairs {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of label names and values")
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(3));
            while let Some(pair) = map.next_entry()? {
                pairs.push(pair);
            }
            Ok(pairs)
        }
    }
    deserializer.deserialize_map(Pairs)
}

fn parse(promql: &str, status: reqwest::StatusCode, body: &[u8]) -> Result<Vec<Series>, QueryError> {
    let refused = |message: String| QueryError::Refused {
        query: promql.to_owned(),
        message,
    };
    let envelope: Envelope = serde_json::from_slice(body)
        .map_err(|e| refused(format!("HTTP {status}, an unreadable answer: {e}")))?;
    if envelope.status != "success" {
        return Err(refused(
            envelope.error.unwrap_or_else(|| format!("HTTP {status}")),
        ));
    }
    let data = envelope.data.ok_or_else(|| refused("no data".to_owned()))?;
    if data.result_type != "vector" {
        return Err(refused(format!(
            "a {} where a vector was expected",
            data.result_type
        )));
    }
    Ok(data
        .result
        .into_iter()
        .map(|raw| Series {
            labels: raw.metric,
            value: raw.value.1.parse::<f64>().ok().filter(|v| v.is_finite()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_parse_and_empty_quantiles_are_none() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"namespace":"a","inference_service":"s","variant":"q8_0.cpu"},"value":[1.5,"12.25"]},
            {"metric":{"namespace":"a","inference_service":"t","variant":"q8_0.cpu"},"value":[1.5,"NaN"]}
        ]}}"#;
        let series = parse("q", reqwest::StatusCode::OK, body).expect("parses");
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].value, Some(12.25));
        assert_eq!(series[0].label("variant"), Some("q8_0.cpu"));
        assert_eq!(series[1].value, None);
    }

    #[test]
    fn errors_name_the_query_and_the_reason() {
        let body = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        let error = parse("sum(", reqwest::StatusCode::BAD_REQUEST, body).expect_err("refused");
        let message = error.to_string();
        assert!(
            message.contains("sum(") && message.contains("parse error"),
            "{message}"
        );
        let garbage = parse("up", reqwest::StatusCode::BAD_GATEWAY, b"<html>").expect_err("refused");
        assert!(garbage.to_string().contains("502"), "{garbage}");
    }
}
