//! Replaces the literals of SQL text by `?`, so query text can be exported without values.
//!
//! The text is lexed twice, once reading a backslash in a string as an escape (MySQL,
//! PostgreSQL `E'...'`) and once not (PostgreSQL's `standard_conforming_strings`), and a
//! character is removed when either reading puts it in a literal or a comment. The engine
//! need not be known, and no reading can leak a value: `'a\', 'b'` is two strings to
//! PostgreSQL and one to MySQL, and both `a` and `b` go.
//!
//! Kept: keywords, identifiers (digits in `t1` included), double-quoted and backquoted
//! identifiers, placeholders (`$1`, `?`) and operators. Removed: quoted strings (with
//! `E`, `N`, `X`, `B` and `U&` prefixes), dollar-quoted strings, numbers and comments.
//! An unterminated string or comment removes the rest of the text.
//!
//! Known limits, all erring towards removing too much: a `#` not followed by `>`, `#`
//! or `-` starts a comment (MySQL), so PostgreSQL's `#` operator drops the rest; a token
//! starting with a digit (a MySQL identifier like `1st`) is taken for a number; a quoted
//! quote (`\'`) in a plain string drops the rest of the text, since the two readings no
//! longer agree where the string ends. MySQL reads `"..."` as a string unless
//! `ANSI_QUOTES` is set; it is kept as an identifier here, as the server's own digest text
//! has already replaced such values.

/// What a byte of the input is, in one reading. Ordered: merging two readings keeps the
/// larger, so a byte either reading removes is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// Kept as written.
    Code,
    /// Whitespace or comment: collapsed into one space between tokens.
    Gap,
    /// Part of a literal: each run becomes one `?`.
    Literal,
}

/// What ends a truncated text.
const ELLIPSIS: &str = "...";

/// `sql` with every string and numeric literal replaced by `?`, comments removed,
/// whitespace collapsed, and at most `max_chars` characters long: a longer result is cut
/// on a character boundary and ends with `...` (counted in `max_chars`).
pub fn obfuscate(sql: &str, max_chars: usize) -> String {
    let bytes = sql.as_bytes();
    let mut classes = vec![Class::Code; bytes.len()];
    classify(bytes, true, &mut classes);
    classify(bytes, false, &mut classes);
    truncate(render(sql, &classes), max_chars)
}

/// Lexes `b` and raises `out` to each byte's class. `backslash` says whether a backslash
/// escapes the next character in plain single-quoted strings.
fn classify(b: &[u8], backslash: bool, out: &mut [Class]) {
    let mut i = 0;
    while i < b.len() {
        let next = b.get(i + 1).copied();
        let (end, class) = match b[i] {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => (i + 1, Class::Gap),
            b'-' if next == Some(b'-') => (line_end(b, i), Class::Gap),
            b'#' if !matches!(next, Some(b'>' | b'#' | b'-')) => (line_end(b, i), Class::Gap),
            b'/' if next == Some(b'*') => (block_comment_end(b, i), Class::Gap),
            b'\'' => (string_end(b, i, backslash), Class::Literal),
            b'"' | b'`' => quoted_identifier(b, i),
            b'$' => dollar(b, i),
            b'0'..=b'9' => (number_end(b, i), Class::Literal),
            c if is_ident_start(c) => identifier(b, i, backslash),
            _ => (i + 1, Class::Code),
        };
        for class_of in &mut out[i..end] {
            *class_of = (*class_of).max(class);
        }
        i = end;
    }
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_continue(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// The end of a `--` or `#` comment: the line's end (the newline is whitespace).
fn line_end(b: &[u8], start: usize) -> usize {
    b[start..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |p| start + p)
}

/// The end of a `/* */` comment. PostgreSQL nests them; reading nested comments in MySQL
/// text only removes more.
fn block_comment_end(b: &[u8], start: usize) -> usize {
    let (mut depth, mut i) = (0usize, start);
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    b.len()
}

/// The end of a single-quoted string opening at `start`, past its closing quote; the
/// text's end when it is unterminated.
fn string_end(b: &[u8], start: usize, backslash: bool) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' if backslash => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// A `"..."` or `` `...` `` identifier, kept; unterminated, the rest is removed (it may
/// be a MySQL string).
fn quoted_identifier(b: &[u8], start: usize) -> (usize, Class) {
    let quote = b[start];
    let mut i = start + 1;
    while i < b.len() {
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return (i + 1, Class::Code);
        }
        i += 1;
    }
    (b.len(), Class::Literal)
}

/// A `$`: a placeholder (`$1`, kept), a dollar-quoted string (`$$...$$`, `$tag$...$tag$`,
/// removed), or a lone `$`.
fn dollar(b: &[u8], start: usize) -> (usize, Class) {
    let mut i = start + 1;
    if b.get(i).is_some_and(u8::is_ascii_digit) {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        return (i, Class::Code);
    }
    while b
        .get(i)
        .is_some_and(|&c| is_ident_start(c) || c.is_ascii_digit())
    {
        i += 1;
    }
    if b.get(i) != Some(&b'$') {
        return (start + 1, Class::Code);
    }
    let tag = &b[start..=i];
    let body = i + 1;
    let end = b[body..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map_or(b.len(), |p| body + p + tag.len());
    (end, Class::Literal)
}

/// The end of a number starting at `start`: digits, `.`, exponents with a sign, hex,
/// binary and octal prefixes, `_` separators. Letters are taken along (`12abc` goes as a
/// whole), which removes more rather than leaking part of a literal.
fn number_end(b: &[u8], start: usize) -> usize {
    let prefixed = b[start] == b'0'
        && matches!(
            b.get(start + 1),
            Some(b'x' | b'X' | b'b' | b'B' | b'o' | b'O')
        );
    let mut i = start + 1;
    while let Some(&c) = b.get(i) {
        let signed_exponent = matches!(c, b'+' | b'-')
            && !prefixed
            && matches!(b[i - 1], b'e' | b'E')
            && b.get(i + 1).is_some_and(u8::is_ascii_digit);
        if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || signed_exponent {
            i += 1;
        } else {
            break;
        }
    }
    i
}

/// An identifier or keyword, kept; or the prefix of a string literal (`E'..'`, `N'..'`,
/// `X'..'`, `B'..'`, `U&'..'`), removed with it.
fn identifier(b: &[u8], start: usize, backslash: bool) -> (usize, Class) {
    let mut end = start + 1;
    while b.get(end).is_some_and(|&c| is_ident_continue(c)) {
        end += 1;
    }
    if end - start != 1 {
        return (end, Class::Code);
    }
    match (b[start].to_ascii_lowercase(), b.get(end), b.get(end + 1)) {
        (b'e', Some(b'\''), _) => (string_end(b, end, true), Class::Literal),
        (b'n' | b'x' | b'b', Some(b'\''), _) => (string_end(b, end, backslash), Class::Literal),
        (b'u', Some(b'&'), Some(b'\'')) => (string_end(b, end + 1, backslash), Class::Literal),
        _ => (end, Class::Code),
    }
}

/// Writes the kept text: code as is, each literal run as `?`, gaps as one space between
/// tokens.
fn render(sql: &str, classes: &[Class]) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut gap = false;
    let mut i = 0;
    while i < classes.len() {
        let class = classes[i];
        let end = classes[i..]
            .iter()
            .position(|&c| c != class)
            .map_or(classes.len(), |p| i + p);
        match class {
            Class::Gap => gap = !out.is_empty(),
            Class::Code | Class::Literal => {
                if gap {
                    out.push(' ');
                    gap = false;
                }
                if class == Class::Literal {
                    out.push('?');
                } else {
                    // Every class boundary is at an ASCII byte, so this slice is on char
                    // boundaries; `get` keeps a mistake from panicking.
                    out.push_str(sql.get(i..end).unwrap_or_default());
                }
            }
        }
        i = end;
    }
    out
}

/// Cuts `s` to `max_chars` characters, the last three being `...` when it was longer.
fn truncate(mut s: String, max_chars: usize) -> String {
    if s.len() <= max_chars || s.chars().count() <= max_chars {
        return s;
    }
    let keep = max_chars.saturating_sub(ELLIPSIS.len());
    let cut = s.char_indices().nth(keep).map_or(s.len(), |(i, _)| i);
    s.truncate(cut);
    s.push_str(&ELLIPSIS[..max_chars.min(ELLIPSIS.len())]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn o(sql: &str) -> String {
        obfuscate(sql, 10_000)
    }

    #[test]
    fn single_quoted_strings_become_placeholders() {
        assert_eq!(
            o("SELECT * FROM t WHERE a = 'secret'"),
            "SELECT * FROM t WHERE a = ?"
        );
        assert_eq!(o("SELECT 'it''s', 'b'"), "SELECT ?, ?");
        assert_eq!(o("SELECT 'a'||'b'"), "SELECT ?||?");
        assert_eq!(o("SELECT ''"), "SELECT ?");
        assert_eq!(
            o("INSERT INTO t VALUES ('x', 'y')"),
            "INSERT INTO t VALUES (?, ?)"
        );
    }

    #[test]
    fn prefixed_strings_go_with_their_prefix() {
        assert_eq!(o(r"SELECT E'a\'b', 1"), "SELECT ?, ?");
        assert_eq!(
            o("SELECT N'name', X'DEADBEEF', B'1010', b'01'"),
            "SELECT ?, ?, ?, ?"
        );
        assert_eq!(o(r"SELECT U&'d\0061t\+000061'"), "SELECT ?");
        assert_eq!(o("SELECT _utf8mb4'abc'"), "SELECT _utf8mb4?");
        // A one-letter name not followed by a quote stays.
        assert_eq!(o("SELECT e, x FROM t e"), "SELECT e, x FROM t e");
    }

    #[test]
    fn backslash_escapes_hide_the_quote_without_leaking_either_reading() {
        // MySQL: one string `it's`. PostgreSQL: string `it\`, then `s`... both removed.
        let out = o(r"SELECT 'it\'s secret' FROM t");
        assert_eq!(out, "SELECT ?");
        // Two strings to PostgreSQL, one to MySQL: neither `a` nor `b` survives.
        let out = o(r"SELECT 'a\', 'b' FROM t");
        assert!(!out.contains('a') && !out.contains('b'), "{out}");
        // An escaped backslash closes normally in both readings.
        assert_eq!(o(r"SELECT 'a\\' , 1"), "SELECT ? , ?");
    }

    #[test]
    fn dollar_quoted_strings_are_removed_and_placeholders_kept() {
        assert_eq!(o("SELECT $$it's $1 'x'$$, $1"), "SELECT ?, $1");
        assert_eq!(
            o("SELECT $fn$ body $$ inner $$ $fn$ FROM t"),
            "SELECT ? FROM t"
        );
        assert_eq!(
            o("SELECT * FROM t WHERE a = $1 AND b = $23"),
            "SELECT * FROM t WHERE a = $1 AND b = $23"
        );
        assert_eq!(o("SELECT a$b FROM t"), "SELECT a$b FROM t");
        assert_eq!(o("SELECT $ FROM t"), "SELECT $ FROM t");
    }

    #[test]
    fn quoted_identifiers_are_names_and_stay() {
        assert_eq!(
            o(r#"SELECT "Order Items"."x1" FROM "Sales"."Order ""Items""""#),
            r#"SELECT "Order Items"."x1" FROM "Sales"."Order ""Items""""#
        );
        assert_eq!(
            o("SELECT `my-app`.`t 1` FROM x"),
            "SELECT `my-app`.`t 1` FROM x"
        );
        assert_eq!(
            o(r#"SELECT "it's" FROM t WHERE a = 'v'"#),
            r#"SELECT "it's" FROM t WHERE a = ?"#
        );
    }

    #[test]
    fn numbers_become_placeholders_but_digits_in_names_stay() {
        assert_eq!(
            o("SELECT 1, 2.5, .5, 1e10, 1.5E-3, 2e+7, 0x1F, 0b101, 1_000"),
            "SELECT ?, ?, .?, ?, ?, ?, ?, ?, ?"
        );
        assert_eq!(
            o("SELECT t1.col_2 FROM t1 WHERE c3 > 42"),
            "SELECT t1.col_2 FROM t1 WHERE c3 > ?"
        );
        assert_eq!(o("SELECT a-1, b+2, -3"), "SELECT a-?, b+?, -?");
        assert_eq!(
            o("SELECT x FROM t LIMIT 10 OFFSET 20"),
            "SELECT x FROM t LIMIT ? OFFSET ?"
        );
        assert_eq!(o("SELECT 0xE-1"), "SELECT ?-?");
        assert_eq!(o("SELECT a[1:2]"), "SELECT a[?:?]");
    }

    #[test]
    fn mysql_placeholders_stay() {
        assert_eq!(
            o("SELECT * FROM t WHERE a = ? AND b IN (?, ?)"),
            "SELECT * FROM t WHERE a = ? AND b IN (?, ?)"
        );
    }

    #[test]
    fn comments_are_removed() {
        assert_eq!(o("SELECT a -- the 'secret' 42\nFROM t"), "SELECT a FROM t");
        assert_eq!(o("SELECT /* 'x' 1 */ a FROM t"), "SELECT a FROM t");
        assert_eq!(o("SELECT/*c*/a"), "SELECT a");
        assert_eq!(o("SELECT /* a /* nested */ still comment */ b"), "SELECT b");
        assert_eq!(o("SELECT a # mysql comment 1\nFROM t"), "SELECT a FROM t");
        assert_eq!(o("/*+ hint */ SELECT 1"), "SELECT ?");
    }

    #[test]
    fn postgres_json_operators_starting_with_hash_stay() {
        assert_eq!(
            o("SELECT d #> '{a}', d #>> '{b}', d #- '{c}' FROM t"),
            "SELECT d #> ?, d #>> ?, d #- ? FROM t"
        );
    }

    #[test]
    fn whitespace_collapses_and_is_trimmed() {
        assert_eq!(
            o("  SELECT\n\t a ,\r\n  b   FROM   t  \n"),
            "SELECT a , b FROM t"
        );
        assert_eq!(o(""), "");
        assert_eq!(o("   "), "");
        assert_eq!(o("-- only a comment"), "");
    }

    #[test]
    fn unterminated_literals_drop_the_rest_of_the_text() {
        assert_eq!(
            o("SELECT a FROM t WHERE b = 'never closed AND c = 1"),
            "SELECT a FROM t WHERE b = ?"
        );
        assert_eq!(o("SELECT $$ open body 'x' 2"), "SELECT ?");
        assert_eq!(o("SELECT $t$ open $x$ 3"), "SELECT ?");
        assert_eq!(o("SELECT /* open comment 'x' 4"), "SELECT");
        assert_eq!(o(r#"SELECT "unterminated name 5"#), "SELECT ?");
        assert_eq!(o("SELECT `unterminated name 6"), "SELECT ?");
        assert_eq!(o(r"SELECT 'ends in backslash\"), "SELECT ?");
        assert_eq!(o("SELECT E'x"), "SELECT ?");
    }

    #[test]
    fn non_ascii_text_is_kept_whole() {
        assert_eq!(
            o("SELECT prénom, 名前 FROM t WHERE a = 'é'"),
            "SELECT prénom, 名前 FROM t WHERE a = ?"
        );
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary_with_an_ellipsis() {
        assert_eq!(obfuscate("SELECT abcdef FROM t", 10), "SELECT ...");
        assert_eq!(obfuscate("SELECT a", 8), "SELECT a");
        assert_eq!(obfuscate("SELECT éééééé", 10), "SELECT ...");
        assert_eq!(obfuscate("SELECT ééééééé", 11), "SELECT é...");
        assert_eq!(obfuscate("SELECT ééééééé", 11).chars().count(), 11);
        assert_eq!(obfuscate("SELECT a", 2), "..");
        assert_eq!(obfuscate("SELECT a", 0), "");
        // The limit applies to the result, not to the input.
        assert_eq!(obfuscate("SELECT 'a long long string'", 8), "SELECT ?");
    }

    /// A random literal, well-formed in MySQL's reading (`mysql`: a backslash escapes) or
    /// in PostgreSQL's (standard strings), made of the markers `z`, `q` and `7` and of
    /// quotes, escapes and comment-like pieces, so that any surviving part shows.
    fn literal(rng: &mut StdRng, mysql: bool) -> String {
        const BODY: &[&str] = &[
            "zq", "zq ", "''", r"\\", r"\'", "\"", "--", "/*", "*/", "#", "$1", ";", "\n",
        ];
        let mut body = String::new();
        let mut plain = String::new();
        for _ in 0..rng.random_range(0..6) {
            let piece = BODY[rng.random_range(0..BODY.len())];
            body.push_str(piece);
            // PostgreSQL's plain strings end at a quote after a backslash.
            if mysql || piece != r"\'" {
                plain.push_str(piece);
            }
        }
        let dollar: String = body.replace(['\'', '\\', '$'], "");
        match rng.random_range(0..9) {
            0 => format!("'{plain}'"),
            1 => format!("E'{body}'"),
            2 => format!("N'{plain}'"),
            3 => format!("$${dollar}zq$$"),
            4 => format!("$tag${dollar}zq$tag$"),
            5 => "7".repeat(rng.random_range(1..4)),
            6 => format!("7.{}e-7", "7".repeat(rng.random_range(1..3))),
            7 => "0x7F".into(),
            // A trailing backslash ends a PostgreSQL string.
            _ if !mysql => format!("'zq{dollar}\\'"),
            _ => format!("'zq{plain}'"),
        }
    }

    #[test]
    fn no_character_of_any_literal_survives() {
        const CODE: &[&str] = &[
            "SELECT",
            "a",
            "t1",
            "col_2",
            "\"Name\"",
            "`tick`",
            "$1",
            "$2",
            "?",
            "=",
            ",",
            "(",
            ")",
            "+",
            "-",
            "*",
            "/",
            " ",
            "\n",
            "FROM",
            "x.y",
            "-- c zq 7\n",
            "/* zq 7 */",
            "#>",
        ];
        let mut rng = StdRng::seed_from_u64(42);
        for _ in 0..20_000 {
            let mysql = rng.random_bool(0.5);
            let mut sql = String::new();
            for _ in 0..rng.random_range(1..12) {
                if rng.random_bool(0.3) {
                    sql.push_str(&literal(&mut rng, mysql));
                } else {
                    sql.push_str(CODE[rng.random_range(0..CODE.len())]);
                }
                sql.push(' ');
            }
            // An unterminated string can only be the last token: its quote would pair
            // with the next one otherwise.
            if rng.random_bool(0.1) {
                sql.push_str("'zq 7 ");
            }
            let out = obfuscate(&sql, 10_000);
            assert!(
                !out.contains('z') && !out.contains('q'),
                "{sql:?} -> {out:?}"
            );
            assert!(!out.contains('7'), "{sql:?} -> {out:?}");
        }
    }

    #[test]
    fn any_input_gives_a_bounded_result_without_panicking() {
        const CHARS: &[char] = &[
            '\'', '"', '`', '\\', '$', '-', '/', '*', '#', '>', 'e', 'E', 'x', 'u', '&', '0', '9',
            '.', '+', ' ', '\n', 'é', '名', '?', ';',
        ];
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let sql: String = (0..rng.random_range(0..40))
                .map(|_| CHARS[rng.random_range(0..CHARS.len())])
                .collect();
            let max = rng.random_range(0..30);
            let out = obfuscate(&sql, max);
            assert!(out.chars().count() <= max, "{sql:?} -> {out:?}");
            assert!(
                !out.starts_with(' ') && !out.ends_with(' '),
                "{sql:?} -> {out:?}"
            );
        }
    }
}
