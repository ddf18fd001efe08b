//! A small XML 1.0 well-formedness check, enough to read the JUnit files `flowgate test --junit`
//! writes without a new crate: one root element, matched tags, quoted attributes without `<`,
//! no duplicate attribute, `&` only in a defined or numeric reference, and only the characters
//! XML 1.0 can carry (tab, line feed, carriage return, U+0020 and up, less U+FFFE and U+FFFF),
//! raw or referenced. No DTD, CDATA or processing instruction past the declaration: flowgate
//! writes none, so meeting one is an error too.

/// An element: its name, attributes (values as a parser reports them, references resolved and
/// white space normalised) and children; `text` is its character data, joined.
#[derive(Debug, Default)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    is_name_start(c) || c.is_ascii_digit() || c == '-' || c == '.'
}

struct Reader<'a> {
    s: &'a str,
    at: usize,
}

impl Reader<'_> {
    fn rest(&self) -> &str {
        &self.s[self.at..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.rest().starts_with(lit) {
            self.at += lit.len();
            true
        } else {
            false
        }
    }

    fn skip_space(&mut self) -> bool {
        let start = self.at;
        while matches!(self.peek(), Some(' ' | '\t' | '\n' | '\r')) {
            self.bump();
        }
        self.at > start
    }

    fn err(&self, what: &str) -> String {
        format!("{what} at byte {}: {:?}", self.at, self.rest().chars().take(30).collect::<String>())
    }

    fn name(&mut self) -> Result<String, String> {
        let start = self.at;
        match self.peek() {
            Some(c) if is_name_start(c) => {
                self.bump();
            }
            _ => return Err(self.err("a name expected")),
        }
        while self.peek().is_some_and(is_name_char) {
            self.bump();
        }
        Ok(self.s[start..self.at].to_string())
    }

    /// `&...;` after the `&`: the character it stands for.
    fn reference(&mut self) -> Result<char, String> {
        let end = self.rest().find(';').ok_or_else(|| self.err("a reference without `;`"))?;
        let body = self.rest()[..end].to_string();
        let c = match body.as_str() {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = body.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(dec) = body.strip_prefix('#') {
                    dec.parse().ok()
                } else {
                    return Err(self.err(&format!("undefined entity &{body};")));
                };
                code.and_then(char::from_u32).filter(|&c| is_xml_char(c)).ok_or_else(|| self.err(&format!("&{body}; is not an XML character")))?
            }
        };
        self.at += end + 1;
        Ok(c)
    }

    fn char_checked(&mut self) -> Result<char, String> {
        let c = self.bump().ok_or_else(|| self.err("unexpected end"))?;
        if !is_xml_char(c) {
            return Err(self.err(&format!("U+{:04X} may not appear in XML 1.0", c as u32)));
        }
        Ok(c)
    }

    fn attr_value(&mut self) -> Result<String, String> {
        let quote = match self.bump() {
            Some(q @ ('"' | '\'')) => q,
            _ => return Err(self.err("an attribute value must be quoted")),
        };
        let mut value = String::new();
        loop {
            match self.char_checked()? {
                c if c == quote => return Ok(value),
                '<' => return Err(self.err("`<` inside an attribute value")),
                '&' => value.push(self.reference()?),
                // A parser turns literal white space in an attribute into spaces (XML 1.0 §3.3.3).
                '\t' | '\n' | '\r' => value.push(' '),
                c => value.push(c),
            }
        }
    }

    fn element(&mut self) -> Result<Element, String> {
        if !self.eat("<") {
            return Err(self.err("`<` expected"));
        }
        let mut el = Element { name: self.name()?, ..Element::default() };
        loop {
            let spaced = self.skip_space();
            if self.eat("/>") {
                return Ok(el);
            }
            if self.eat(">") {
                break;
            }
            if !spaced {
                return Err(self.err("white space expected before an attribute"));
            }
            let name = self.name()?;
            self.skip_space();
            if !self.eat("=") {
                return Err(self.err("`=` expected"));
            }
            self.skip_space();
            let value = self.attr_value()?;
            if el.attrs.iter().any(|(k, _)| *k == name) {
                return Err(self.err(&format!("attribute {name} twice")));
            }
            el.attrs.push((name, value));
        }
        loop {
            if self.eat("</") {
                let name = self.name()?;
                self.skip_space();
                if name != el.name || !self.eat(">") {
                    return Err(self.err(&format!("</{}> expected", el.name)));
                }
                return Ok(el);
            }
            if self.rest().starts_with("<!") || self.rest().starts_with("<?") {
                return Err(self.err("markup this check does not read"));
            }
            if self.rest().starts_with('<') {
                el.children.push(self.element()?);
                continue;
            }
            if self.rest().starts_with("]]>") {
                return Err(self.err("`]]>` in character data"));
            }
            match self.char_checked()? {
                '&' => el.text.push(self.reference()?),
                // Line ends are normalised to a line feed (XML 1.0 §2.11).
                '\r' => {
                    self.eat("\n");
                    el.text.push('\n');
                }
                c => el.text.push(c),
            }
        }
    }
}

/// The root element of a well-formed document, or why it is not one.
pub fn parse(doc: &str) -> Result<Element, String> {
    let mut r = Reader { s: doc, at: 0 };
    if r.eat("<?xml") {
        let end = r.rest().find("?>").ok_or_else(|| r.err("unterminated XML declaration"))?;
        let decl = &r.rest()[..end];
        if !decl.contains("version=\"1.0\"") {
            return Err(r.err("not an XML 1.0 declaration"));
        }
        r.at += end + 2;
    }
    r.skip_space();
    let root = r.element()?;
    r.skip_space();
    if !r.rest().is_empty() {
        return Err(r.err("content after the root element"));
    }
    Ok(root)
}
