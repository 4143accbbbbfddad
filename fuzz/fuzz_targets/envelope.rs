//! Any bytes a transport delivers: decoding never panics, and what decodes round-trips
//! (a re-encoded envelope names the same action, cell, arguments and key).
#![no_main]

use idem_core::envelope::{DecodeError, Envelope, ENVELOPE_VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Envelope::decode(data) {
        Ok(env) => {
            assert_eq!(env.v, ENVELOPE_VERSION);
            assert!(env.args.is_object(), "decoded args must be an object");
            let again = Envelope::decode(&env.encode()).expect("an encoded envelope decodes");
            assert_eq!(again, env);
        }
        Err(DecodeError::UnknownVersion(v)) => assert_ne!(v, ENVELOPE_VERSION),
        Err(DecodeError::Malformed(_) | DecodeError::ArgsNotObject) => {}
    }
});
