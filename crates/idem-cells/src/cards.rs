//! Reading a cell card (its failure-mode analysis in Markdown, compiled in beside the cell:
//! [`crate::Cell::card_text`]).

/// The card's summary: everything before its first `## ` section (what the cell does and
/// the key? / lookup? / human? answers).
pub fn summary(card: &str) -> &str {
    let body = card.split_once('\n').map_or("", |(_, rest)| rest);
    body.split("\n## ").next().unwrap_or(body).trim()
}
