//! What an action will do, in words a person approving it reads correctly: money in major
//! units with its currency ("$600.00 USD", not `"amount": 60000`), long text cut short.

/// Digits after the decimal point of an ISO 4217 currency (Stripe's list of zero-decimal
/// and three-decimal currencies; two for every other).
fn exponent(currency: &str) -> u32 {
    match currency.to_ascii_lowercase().as_str() {
        "bif" | "clp" | "djf" | "gnf" | "jpy" | "kmf" | "krw" | "mga" | "pyg" | "rwf" | "ugx"
        | "vnd" | "vuv" | "xaf" | "xof" | "xpf" => 0,
        "bhd" | "jod" | "kwd" | "omr" | "tnd" => 3,
        _ => 2,
    }
}

fn symbol(currency: &str) -> &'static str {
    match currency.to_ascii_lowercase().as_str() {
        "usd" | "cad" | "aud" | "nzd" | "sgd" | "hkd" | "mxn" => "$",
        "eur" => "€",
        "gbp" => "£",
        "jpy" => "¥",
        "inr" => "₹",
        _ => "",
    }
}

/// An amount in minor units as a person reads it: `money(60000, "usd")` is
/// `"$600.00 USD"`, `money(500, "jpy")` is `"¥500 JPY"`, `money(1500, "kwd")` is
/// `"1.500 KWD"`.
pub fn money(minor: u64, currency: &str) -> String {
    let e = exponent(currency);
    let unit = 10u64.pow(e);
    let (major, rest) = (minor / unit, minor % unit);
    let mut whole = major.to_string();
    // Thousands separators: 1234567 → 1,234,567.
    let mut i = whole.len() as isize - 3;
    while i > 0 {
        whole.insert(i as usize, ',');
        i -= 3;
    }
    let code = currency.to_ascii_uppercase();
    let sym = symbol(currency);
    if e == 0 {
        format!("{sym}{whole} {code}")
    } else {
        format!("{sym}{whole}.{rest:0width$} {code}", width = e as usize)
    }
}

/// `text` quoted, cut to `max` characters with an ellipsis.
pub fn quote(text: &str, max: usize) -> String {
    let mut t: String = text.chars().take(max).collect();
    if text.chars().count() > max {
        t.push('…');
    }
    format!("“{t}”")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units_become_major_with_the_currency() {
        assert_eq!(money(60000, "usd"), "$600.00 USD");
        assert_eq!(money(5, "usd"), "$0.05 USD");
        assert_eq!(money(123456789, "eur"), "€1,234,567.89 EUR");
        assert_eq!(money(500, "jpy"), "¥500 JPY");
        assert_eq!(money(1500, "kwd"), "1.500 KWD");
        assert_eq!(money(100, "chf"), "1.00 CHF");
    }

    #[test]
    fn long_text_is_cut() {
        assert_eq!(quote("hi", 10), "“hi”");
        assert_eq!(quote("abcdef", 3), "“abc…”");
    }
}
