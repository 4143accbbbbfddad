//! The cell cards (docs/cells/*.md), compiled in so the approver console can show a person
//! what the cell does and how it fails without a checkout of the repository.

/// The text of the card at `path` (as [`crate::Cell::card`] names it), if it is one of ours.
pub fn card_text(path: &str) -> Option<&'static str> {
    Some(match path {
        "docs/cells/amadeus.book.md" => include_str!("../../../docs/cells/amadeus.book.md"),
        "docs/cells/amadeus.cancel.md" => include_str!("../../../docs/cells/amadeus.cancel.md"),
        "docs/cells/amadeus.price.md" => include_str!("../../../docs/cells/amadeus.price.md"),
        "docs/cells/gmail.send.md" => include_str!("../../../docs/cells/gmail.send.md"),
        "docs/cells/http.idempotent.md" => include_str!("../../../docs/cells/http.idempotent.md"),
        "docs/cells/hubspot.upsert.md" => include_str!("../../../docs/cells/hubspot.upsert.md"),
        "docs/cells/slack.post.md" => include_str!("../../../docs/cells/slack.post.md"),
        "docs/cells/stripe.charge.md" => include_str!("../../../docs/cells/stripe.charge.md"),
        "docs/cells/stripe.refund.md" => include_str!("../../../docs/cells/stripe.refund.md"),
        "docs/cells/twilio.sms.send.md" => include_str!("../../../docs/cells/twilio.sms.send.md"),
        _ => return None,
    })
}

/// The card's summary: everything before its first `## ` section (what the cell does and
/// the key? / lookup? / human? answers).
pub fn card_summary(path: &str) -> Option<&'static str> {
    card_text(path).map(|t| {
        let body = t.split_once('\n').map_or("", |(_, rest)| rest);
        body.split("\n## ").next().unwrap_or(body).trim()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_card_is_compiled_in_with_a_summary() {
        for entry in
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/cells")).unwrap()
        {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let path = format!("docs/cells/{name}");
            let summary =
                super::card_summary(&path).unwrap_or_else(|| panic!("{path} not compiled in"));
            assert!(summary.contains("key?"), "{path}: {summary}");
        }
    }
}
