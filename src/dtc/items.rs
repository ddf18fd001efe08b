//! The data items' own rules: the MPAN core check digit, a postcode written the DTC way, and
//! address lines that fit the 40-character address items. Rules call them as helpers; the writer
//! and the reader rely on them too.

/// MPAN core check digit: weights 3,5,7,13,...,43; sum mod 11 mod 10.
pub(crate) fn mpan_check_ok(s: &str) -> bool {
    const W: [u32; 12] = [3, 5, 7, 13, 17, 19, 23, 29, 31, 37, 41, 43];
    let b = s.as_bytes();
    if b.len() != 13 || !b.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = b[..12].iter().zip(W).map(|(d, w)| u32::from(d - b'0') * w).sum();
    sum % 11 % 10 == u32::from(b[12] - b'0')
}

/// Address lines of at most 40 characters: split on commas, long parts wrapped at spaces.
pub(crate) fn address_lines(s: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut line = String::new();
        for word in part.split_whitespace() {
            let mut word = word.to_string();
            while word.chars().count() > 40 {
                let head: String = word.chars().take(40).collect();
                word = word.chars().skip(40).collect();
                if !line.is_empty() {
                    lines.push(std::mem::take(&mut line));
                }
                lines.push(head);
            }
            if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > 40 {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&word);
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}

/// A postcode written the DTC way: upper case, one space before the inward code.
pub fn postcode(s: &str) -> String {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_uppercase();
    if compact.len() > 3 && compact.is_ascii() {
        format!("{} {}", &compact[..compact.len() - 3], &compact[compact.len() - 3..])
    } else {
        compact
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_digits() {
        assert!(mpan_check_ok("1030006718997"));
        assert!(mpan_check_ok("2000000000015"));
        assert!(!mpan_check_ok("2499999999990"));
        assert!(!mpan_check_ok("103000671899"));
    }

    #[test]
    fn address_lines_split_on_commas_and_wrap_at_forty() {
        assert_eq!(address_lines("Flat 1, 25 Spear Building, High Street"), vec!["Flat 1", "25 Spear Building", "High Street"]);
        let long = "The Very Long Named Cottage Beside The Old Mill Pond";
        for l in address_lines(long) {
            assert!(l.chars().count() <= 40, "{l}");
        }
        assert_eq!(address_lines(long).join(" "), long);
    }

    #[test]
    fn postcodes_get_one_space() {
        assert_eq!(postcode("cv54dd"), "CV5 4DD");
        assert_eq!(postcode("SW1A  1AA"), "SW1A 1AA");
    }
}
