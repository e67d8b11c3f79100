//! The only place that calls bincode. Every encoded envelope starts with a
//! format version byte, so that old logs keep decoding when the types grow:
//! a new version adds a decoder here that upcasts into today's types, and an
//! unknown (future) version is refused with its number.
//!
//! bincode is positional (field order, variant *index*), so:
//! * adding a variant at the end of an enum needs no new version;
//! * adding, removing or reordering fields does: freeze the old shapes in a
//!   `vN` module (as `v1` is), decode into them and upcast, bump
//!   [`FORMAT_VERSION`], and check in fixtures of the new version
//!   (`events/tests/compat.rs` says how).
//!
//! | version | change |
//! |---|---|
//! | 1 | first format |
//! | 2 | `AttemptStarted` gained `user` and `host` |
//! | 3 | `Plan` gained `distribution` and `kubernetes_version` (older logs are rke1) |
//! | 4 | `Plan` gained `rancher_url` (older logs started their own Rancher) |
//!
//! bincode is pinned to 2.0.1 (3.0.0 only contains a compile error).

mod v1;
mod v2;
mod v3;

use crate::{Envelope, Error};

/// The version written today.
pub const FORMAT_VERSION: u8 = 4;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes an envelope: `[FORMAT_VERSION] ‖ bincode(envelope)`.
pub fn encode(envelope: &Envelope) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    // Encoding into a Vec cannot fail for these types (no maps with
    // non-string keys, no custom serializers that error).
    let body = bincode::serde::encode_to_vec(envelope, config())
        .expect("bincode encoding of an Envelope into a Vec never fails");
    out.extend_from_slice(&body);
    out
}

/// Decodes what [`encode`] wrote, in any format version this build knows.
pub fn decode(bytes: &[u8]) -> Result<Envelope, Error> {
    let (&version, body) = bytes.split_first().ok_or(Error::Corrupt {
        seq: None,
        reason: "empty record".into(),
    })?;
    match version {
        1 => Ok(decode_as::<v1::Envelope>(body)?.into()),
        2 => Ok(decode_as::<v2::Envelope>(body)?.into()),
        3 => Ok(decode_as::<v3::Envelope>(body)?.into()),
        4 => decode_as::<Envelope>(body),
        found => Err(Error::UnknownVersion { found }),
    }
}

/// Decodes the whole of `body` as `T` (trailing bytes are corruption).
fn decode_as<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let (value, used): (T, usize) = bincode::serde::decode_from_slice(body, config()).map_err(|e| Error::Corrupt {
        seq: None,
        reason: format!("undecodable record: {e}"),
    })?;
    if used != body.len() {
        return Err(Error::Corrupt {
            seq: None,
            reason: format!("{} trailing bytes after the record", body.len() - used),
        });
    }
    Ok(value)
}
