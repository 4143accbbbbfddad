//! The message that carries an action from the outbox to a worker, on any transport.

use serde::{Deserialize, Serialize};

use crate::ActionId;

/// The envelope version this build writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// One action on the wire. `cell` stays a plain string so that a message naming an unknown
/// or malformed cell still decodes, and its action can be marked `dead` with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    pub action_id: ActionId,
    pub cell: String,
    pub args: serde_json::Value,
    pub ordering_key: String,
}

/// Why some bytes are not an envelope; the bytes go to the dead letters with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a JSON envelope: {0}")]
    Malformed(String),
    #[error("unknown envelope version {0} (this build reads {ENVELOPE_VERSION})")]
    UnknownVersion(u32),
    #[error("args must be a JSON object")]
    ArgsNotObject,
}

impl Envelope {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let version: Version =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if version.v != ENVELOPE_VERSION {
            return Err(DecodeError::UnknownVersion(version.v));
        }
        let env: Envelope =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !env.args.is_object() {
            return Err(DecodeError::ArgsNotObject);
        }
        Ok(env)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_rejects() {
        let id = ActionId::random();
        let env = Envelope {
            v: 1,
            action_id: id,
            cell: "stripe.charge".into(),
            args: serde_json::json!({"amount": 1}),
            ordering_key: id.to_string(),
        };
        assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
        assert!(matches!(
            Envelope::decode(b"{nope"),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(
            Envelope::decode(br#"{"v":2}"#),
            Err(DecodeError::UnknownVersion(2))
        );
        let bad = br#"{"v":1,"action_id":"7a1c6c1e-4a8e-4bd6-9d44-07c1d2f8e0a1","cell":"x.y","args":[1],"ordering_key":"k"}"#;
        assert_eq!(Envelope::decode(bad), Err(DecodeError::ArgsNotObject));
    }
}
