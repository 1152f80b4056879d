//! Reading requests: the extractors handlers use instead of axum's (`Json`, `Query`, `Path`),
//! whose failures are in the API's error shape, and the size-limited reading of bodies and
//! component uploads. A body over its limit is refused from its `Content-Length` before any
//! of it is read, or once the limit is crossed while streaming; a gzip upload's decompressed
//! size is capped too, so a small bomb cannot inflate into memory.

use std::io::Read;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use super::error::{ApiError, ApiResult};
use super::state::AppState;

/// A JSON body of type `T` (`deny_unknown_fields` on the API's types: a typo is named).
pub struct Json<T>(pub T);

/// A JSON body of type `T`, or `T::default()` when the body is empty.
pub struct JsonOrDefault<T>(pub T);

/// Query parameters of type `T`.
pub struct Query<T>(pub T);

/// A path parameter (percent-decoded).
pub struct Path<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> ApiResult<Self> {
        let bytes = read(request, state.max_body).await?;
        parse(&bytes).map(Json)
    }
}

impl<T: DeserializeOwned + Default> FromRequest<AppState> for JsonOrDefault<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> ApiResult<Self> {
        let bytes = read(request, state.max_body).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonOrDefault(T::default()));
        }
        parse(&bytes).map(JsonOrDefault)
    }
}

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|query| Query(query.0))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|path| Path(path.0))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    // serde_json's message names the field ("unknown field `prority`", "missing field
    // `task`") and the line and column.
    serde_json::from_slice(bytes)
        .map_err(|error| ApiError::invalid_json(format!("request body: {error}")))
}

/// The whole body of `request`, at most `limit` bytes.
async fn read(request: Request, limit: u64) -> ApiResult<Bytes> {
    let (parts, body) = request.into_parts();
    let too_large = || {
        ApiError::too_large(format!(
            "the request body is over the limit of {limit} bytes; send less (e.g. a smaller batch)"
        ))
    };
    if content_length(&parts.headers).is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    collect(body, limit).await.ok_or_else(too_large)
}

/// The body's bytes, or `None` once it passes `limit` (nothing past it is read).
pub async fn collect(body: Body, limit: u64) -> Option<Bytes> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    axum::body::to_bytes(body, limit).await.ok()
}

/// The request's `Content-Length`, if it has a valid one.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// How an upload's body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

impl Encoding {
    /// The encoding `Content-Encoding` names; 400 for one this service does not read.
    pub fn of(headers: &HeaderMap) -> ApiResult<Encoding> {
        let Some(value) = headers.get(header::CONTENT_ENCODING) else {
            return Ok(Encoding::Identity);
        };
        match value.to_str().map(|v| v.trim().to_ascii_lowercase()) {
            Ok(v) if v == "gzip" || v == "x-gzip" => Ok(Encoding::Gzip),
            Ok(v) if v.is_empty() || v == "identity" => Ok(Encoding::Identity),
            _ => Err(ApiError::bad_request(format!(
                "Content-Encoding {value:?} is not supported; send the component raw or with `Content-Encoding: gzip`"
            ))),
        }
    }

    /// The most bytes a body of this encoding may take to carry `limit` bytes: gzip adds a
    /// header and at worst a few bytes per 16 KiB stored block to incompressible input.
    pub fn wire_limit(self, limit: u64) -> u64 {
        match self {
            Encoding::Identity => limit,
            Encoding::Gzip => limit.saturating_add(limit / 1024).saturating_add(1024),
        }
    }
}

/// Why [`gunzip`] refused a body.
#[derive(Debug, PartialEq, Eq)]
pub enum GunzipError {
    /// It inflates past the limit.
    TooLarge,
    Invalid(String),
}

/// Decompresses `gzipped`, stopping as soon as the output passes `limit` bytes.
pub fn gunzip(gzipped: &[u8], limit: u64) -> Result<Vec<u8>, GunzipError> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(gzipped)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|error| GunzipError::Invalid(error.to_string()))?;
    if out.len() as u64 > limit {
        return Err(GunzipError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).expect("writes to memory");
        encoder.finish().expect("writes to memory")
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![0u8; 8 << 20]);
        assert!(bomb.len() < 64 << 10, "compresses well: {}", bomb.len());
        assert_eq!(gunzip(&bomb, 1 << 20), Err(GunzipError::TooLarge));
        assert_eq!(gunzip(&bomb, 8 << 20).map(|out| out.len()), Ok(8 << 20));
        assert!(matches!(
            gunzip(b"not gzip", 100),
            Err(GunzipError::Invalid(_))
        ));
    }

    #[test]
    fn incompressible_input_fits_the_wire_limit() {
        let mut noise = vec![0u8; 1 << 20];
        getrandom::fill(&mut noise).expect("random");
        let gzipped = gzip(&noise);
        assert!(gzipped.len() as u64 <= Encoding::Gzip.wire_limit(noise.len() as u64));
    }
}
