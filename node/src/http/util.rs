//! What every handler of the HTTP API shares: request bodies, query
//! strings with `name[]=` arrays and `created_at[gte]` ranges, RFC 3339
//! times, metadata maps, and the opaque page cursors.

use agentd_protocol::limits::{LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX};
use agentd_protocol::resource::{CreatedWithin, CreationCursor, Order};
use axum::body::Bytes;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::HttpError;

/// Parses a JSON request body; an empty body is `{}` (the SDKs send one
/// with bodyless POSTs). Unknown fields are refused where the type says so.
pub fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, HttpError> {
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    serde_json::from_slice(text).map_err(|error| HttpError::invalid(format!("invalid request body: {error}")))
}

/// Milliseconds since the Unix epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    let time = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let time = time.replace_nanosecond(time.millisecond() as u32 * 1_000_000).unwrap_or(time);
    time.format(&Rfc3339).unwrap_or_default()
}

/// An optional time, `null` when absent.
pub fn rfc3339_or_null(ms: Option<u64>) -> Value {
    ms.map_or(Value::Null, |ms| Value::String(rfc3339(ms)))
}

/// An RFC 3339 time as milliseconds since the Unix epoch.
pub fn parse_time(field: &str, text: &str) -> Result<u64, HttpError> {
    let time = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|error| HttpError::invalid(format!("{field}: {text:?} is not an RFC 3339 time ({error})")))?;
    u64::try_from(time.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| HttpError::invalid(format!("{field}: {text:?} is before 1970")))
}

/// A query string's pairs, decoded, in order.
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        let pairs = form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).into_owned().collect();
        Query { pairs }
    }

    /// Refuses any parameter not in `known` (after `[]` is taken off arrays),
    /// naming it.
    pub fn only(&self, known: &[&str]) -> Result<(), HttpError> {
        for (name, _) in &self.pairs {
            let base = name.strip_suffix("[]").unwrap_or(name);
            if !known.contains(&base) && !known.contains(&name.as_str()) {
                return Err(HttpError::invalid(format!("unknown query parameter `{name}`")));
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// Every value of an array parameter, sent as `name[]=` (or, leniently, `name=`).
    pub fn all(&self, name: &str) -> Vec<&str> {
        let bracketed = format!("{name}[]");
        self.pairs.iter().filter(|(key, _)| *key == bracketed || key == name).map(|(_, value)| value.as_str()).collect()
    }

    pub fn bool(&self, name: &str) -> Result<bool, HttpError> {
        match self.get(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(HttpError::invalid(format!("{name} must be true or false, not {other:?}"))),
        }
    }

    pub fn u32(&self, name: &str) -> Result<Option<u32>, HttpError> {
        self.get(name)
            .map(|value| value.parse().map_err(|_| HttpError::invalid(format!("{name} must be a whole number"))))
            .transpose()
    }

    /// `limit`, within 1 and `max` (default `default`).
    pub fn limit(&self, default: u32, max: u32) -> Result<u32, HttpError> {
        match self.u32("limit")? {
            None => Ok(default),
            Some(limit) if (1..=max).contains(&limit) => Ok(limit),
            Some(limit) => Err(HttpError::invalid(format!("limit must be 1 to {max}, not {limit}"))),
        }
    }

    /// `limit` of a list of objects.
    pub fn list_limit(&self) -> Result<u32, HttpError> {
        self.limit(LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX)
    }

    /// `order`: `asc` or `desc`.
    pub fn order(&self, default: Order) -> Result<Order, HttpError> {
        match self.get("order") {
            None => Ok(default),
            Some("asc") => Ok(Order::Ascending),
            Some("desc") => Ok(Order::Descending),
            Some(other) => Err(HttpError::invalid(format!("order must be asc or desc, not {other:?}"))),
        }
    }

    /// The `created_at[gte|gt|lte|lt]` bounds, inclusive, in milliseconds.
    pub fn created(&self) -> Result<CreatedWithin, HttpError> {
        let mut within = CreatedWithin::default();
        for (bound, field) in
            [("gte", "created_at[gte]"), ("gt", "created_at[gt]"), ("lte", "created_at[lte]"), ("lt", "created_at[lt]")]
        {
            let Some(text) = self.get(field) else { continue };
            let ms = parse_time(field, text)?;
            match bound {
                "gte" => within.from_ms = within.from_ms.max(ms),
                "gt" => within.from_ms = within.from_ms.max(ms.saturating_add(1)),
                "lte" => within.to_ms = within.to_ms.min(ms),
                _ => within.to_ms = within.to_ms.min(ms.saturating_sub(1)),
            }
        }
        Ok(within)
    }
}

/// A page cursor over objects ordered by creation. It names the order it was
/// made for: reusing it with the other order is a client's mistake.
pub fn encode_cursor(order: Order, cursor: CreationCursor) -> String {
    let order = match order {
        Order::Ascending => 'a',
        Order::Descending => 'd',
    };
    let id: String = cursor.id.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("page_{order}{:016x}{id}", cursor.created_at_ms)
}

pub fn decode_cursor(text: &str, order: Order) -> Result<CreationCursor, HttpError> {
    let invalid = || HttpError::invalid(format!("page {text:?} is not a cursor this API returned"));
    let rest = text.strip_prefix("page_").ok_or_else(invalid)?;
    if rest.len() != 1 + 16 + 32 || !rest.is_ascii() {
        return Err(invalid());
    }
    let made_for = match &rest[..1] {
        "a" => Order::Ascending,
        "d" => Order::Descending,
        _ => return Err(invalid()),
    };
    if made_for != order {
        return Err(HttpError::invalid("the page cursor was made for the other order"));
    }
    let created_at_ms = u64::from_str_radix(&rest[1..17], 16).map_err(|_| invalid())?;
    let mut id = [0u8; 16];
    for (index, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&rest[17 + index * 2..19 + index * 2], 16).map_err(|_| invalid())?;
    }
    Ok(CreationCursor { created_at_ms, id })
}

/// The optional `page` parameter as a creation cursor.
pub fn page_cursor(query: &Query, order: Order) -> Result<Option<CreationCursor>, HttpError> {
    query.get("page").map(|page| decode_cursor(page, order)).transpose()
}

/// The `{data, next_page}` body of a list.
pub fn list_body(data: Vec<Value>, next_page: Option<String>) -> Value {
    serde_json::json!({"data": data, "next_page": next_page})
}

/// Metadata as a JSON object.
pub fn metadata_json(metadata: &[(String, String)]) -> Value {
    Value::Object(metadata.iter().map(|(key, value)| (key.clone(), Value::String(value.clone()))).collect())
}

/// Client metadata for a new object: string values only.
pub fn metadata_from(field: &str, value: Option<&Map<String, Value>>) -> Result<Vec<(String, String)>, HttpError> {
    let Some(map) = value else { return Ok(Vec::new()) };
    let mut pairs = Vec::with_capacity(map.len());
    for (key, value) in map {
        let Value::String(text) = value else {
            return Err(HttpError::invalid(format!("{field}.{key} must be a string")).with_code("invalid_metadata"));
        };
        pairs.push((key.clone(), text.clone()));
    }
    pairs.sort();
    Ok(pairs)
}

/// A metadata patch: string values set a key, `null` deletes it.
pub fn metadata_patch(field: &str, value: &Map<String, Value>) -> Result<Vec<(String, Option<String>)>, HttpError> {
    let mut patch = Vec::with_capacity(value.len());
    for (key, value) in value {
        match value {
            Value::String(text) => patch.push((key.clone(), Some(text.clone()))),
            Value::Null => patch.push((key.clone(), None)),
            _ => {
                return Err(
                    HttpError::invalid(format!("{field}.{key} must be a string or null")).with_code("invalid_metadata")
                )
            }
        }
    }
    Ok(patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_rfc3339() {
        assert_eq!(rfc3339(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert_eq!(parse_time("t", "2026-01-01T00:00:00.123Z").unwrap(), 1_767_225_600_123);
        assert_eq!(parse_time("t", "2026-01-01T01:00:00+01:00").unwrap(), 1_767_225_600_000);
        assert!(parse_time("t", "yesterday").is_err());
    }

    #[test]
    fn cursors_round_trip_and_name_their_order() {
        let cursor = CreationCursor { created_at_ms: 42, id: [7; 16] };
        let text = encode_cursor(Order::Descending, cursor);
        assert_eq!(decode_cursor(&text, Order::Descending).unwrap(), cursor);
        assert!(decode_cursor(&text, Order::Ascending).is_err());
        assert!(decode_cursor("page_x", Order::Descending).is_err());
    }

    #[test]
    fn queries_decode_arrays_and_refuse_strangers() {
        let query = Query::parse(Some(
            "statuses%5B%5D=idle&statuses[]=running&limit=5&created_at%5Bgte%5D=2026-01-01T00:00:00Z",
        ));
        assert_eq!(query.all("statuses"), vec!["idle", "running"]);
        assert_eq!(query.list_limit().unwrap(), 5);
        assert_eq!(query.created().unwrap().from_ms, 1_767_225_600_000);
        assert!(query.only(&["statuses", "limit", "created_at[gte]"]).is_ok());
        assert!(query.only(&["statuses", "limit"]).is_err());
        assert!(Query::parse(Some("limit=0")).list_limit().is_err());
    }
}
