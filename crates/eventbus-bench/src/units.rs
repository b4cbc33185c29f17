//! How the reports write counts and bytes: one style for every table.

/// `1234567.8` as `1,234,568`.
pub fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes as KB or MB (10^3, 10^6).
pub fn bytes(b: f64) -> String {
    if b.abs() >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else {
        format!("{:.1} KB", b / 1e3)
    }
}

/// Bytes in a few characters (chart labels).
pub fn compact_bytes(b: f64) -> String {
    if b < 1e6 {
        format!("{:.0} KB", b / 1e3)
    } else if b < 1e7 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} MB", b / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_bytes_read_easily() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(10_000.0), "10,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(bytes(1_047_800.0), "1.05 MB");
        assert_eq!(bytes(-2_500.0), "-2.5 KB");
        assert_eq!(compact_bytes(2_500.0), "2 KB");
        assert_eq!(compact_bytes(25_000_000.0), "25 MB");
    }
}
