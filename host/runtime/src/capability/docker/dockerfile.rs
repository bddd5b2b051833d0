//! A Dockerfile read as the engine reads it, and written back as the text the engine is
//! sent.
//!
//! The reading follows the parser every engine Hoist talks to uses (moby/BuildKit's
//! `frontend/dockerfile/parser`, vendored by Docker, buildah and Podman): parser
//! directives (`syntax`, `escape`, `check`) only at the very top, until the first line
//! that is not one; comment and empty lines skipped, inside a continuation too; a
//! continuation is the escape character followed by blanks at the end of a line, and the
//! next line is joined to it as it is (no space added, its indentation kept);
//! instruction flags (`--name=value` words before the arguments) with the parser's own
//! quoting rules; heredocs (`<<EOF` on `RUN`, `COPY`, `ADD`) whose body lines are data.
//!
//! [`Dockerfile::serialize`] writes one line per instruction (heredoc bodies verbatim
//! after it): no comments, no continuations, no `syntax` directive (which would hand the
//! file to another parser, a frontend image). The docker capability checks that text,
//! read both with and without heredocs (an engine that does not know heredocs reads
//! their bodies as instructions), and sends exactly that text to the engine in place of
//! the file on disk.

/// How heredocs are read: as BuildKit does, or as an engine without them does (bodies
/// are instructions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heredocs {
    Read,
    Ignored,
}

/// One instruction: its line, command (lower case), flags as the parser extracts them
/// (`--mount=type=bind`, quotes removed), the rest, and its heredoc lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// The line the instruction starts on (1-based).
    pub line: usize,
    /// The instruction as one line: continuations joined, trimmed.
    pub text: String,
    /// The command, lower case (`run`, `from`, ...).
    pub cmd: String,
    /// The flags before the arguments, quotes and escapes processed.
    pub flags: Vec<String>,
    /// What follows the flags.
    pub args: String,
    /// The lines after the instruction that its heredocs took (bodies and terminators),
    /// verbatim.
    pub heredoc_lines: Vec<String>,
}

impl Instruction {
    /// The flag names (`mount` of `--mount=type=bind`), lower case.
    #[cfg(test)]
    pub fn flag_names(&self) -> impl Iterator<Item = String> + '_ {
        self.flags.iter().map(|f| {
            let f = f.strip_prefix("--").unwrap_or(f);
            f.split('=').next().unwrap_or(f).to_ascii_lowercase()
        })
    }

    /// The value of flag `name` (`--name=value`), if given.
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags.iter().find_map(|f| {
            let (n, v) = f.strip_prefix("--")?.split_once('=')?;
            n.eq_ignore_ascii_case(name).then_some(v)
        })
    }

    /// The instruction an `ONBUILD` carries (parsed as a line of its own).
    pub fn onbuild_inner(&self) -> Option<Instruction> {
        if self.cmd != "onbuild" {
            return None;
        }
        Some(instruction(self.line, self.args.trim(), Vec::new()))
    }
}

/// A parsed Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dockerfile {
    /// The escape character (`\`, or `` ` `` by `# escape=`).
    pub escape: char,
    /// Directives read and not sent on (`syntax=...`, `check=...`), for the log.
    pub dropped_directives: Vec<String>,
    pub instructions: Vec<Instruction>,
}

/// Parser directive names the engine knows.
const DIRECTIVES: [&str; 3] = ["syntax", "escape", "check"];

/// `# name = value` (BuildKit's `reDirective`).
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix('#')?.trim_start_matches([' ', '\t']);
    let name_len = rest
        .char_indices()
        .take_while(|(i, c)| {
            if *i == 0 {
                c.is_ascii_alphabetic()
            } else {
                c.is_ascii_alphanumeric()
            }
        })
        .count();
    if name_len == 0 {
        return None;
    }
    let (name, rest) = rest.split_at(name_len);
    let value = rest
        .trim_start_matches([' ', '\t'])
        .strip_prefix('=')?
        .trim_matches([' ', '\t']);
    if value.is_empty() {
        return None;
    }
    Some((name.to_ascii_lowercase(), value.to_string()))
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// The line with the continuation (escape then blanks at its end) removed, and whether
/// it was the instruction's last line.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end_matches(is_blank);
    match t.strip_suffix(escape) {
        Some(head) => (head, false),
        None => (line, true),
    }
}

impl Dockerfile {
    /// Read `text` as the engine does (heredocs per `heredocs`).
    pub fn parse(text: &str, heredocs: Heredocs) -> Result<Self, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let lines: Vec<&str> = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .collect();
        // A trailing newline does not make one more line.
        let lines = match lines.split_last() {
            Some((&"", rest)) => rest.to_vec(),
            _ => lines,
        };
        let (escape, dropped, mut i) = directives(&lines)?;
        // Left trims are Unicode whitespace, as Go's `unicode.IsSpace` in the parser.
        let is_comment = |l: &str| l.trim_start().starts_with('#');
        let mut instructions = Vec::new();
        while i < lines.len() {
            let start = i;
            let first = lines[i].trim_start();
            i += 1;
            if first.starts_with('#') {
                continue;
            }
            let (head, mut end) = trim_continuation(first, escape);
            if end && head.is_empty() {
                continue;
            }
            let mut joined = head.to_string();
            while !end && i < lines.len() {
                let l = lines[i];
                i += 1;
                if is_comment(l) || l.trim_start().is_empty() {
                    continue;
                }
                let (piece, last) = trim_continuation(l, escape);
                joined.push_str(piece);
                end = last;
            }
            let text = joined.trim_matches(char::is_whitespace).to_string();
            if text.is_empty() {
                continue;
            }
            let mut heredoc_lines = Vec::new();
            let mut ins = instruction(start + 1, &text, Vec::new());
            if heredocs == Heredocs::Read && matches!(ins.cmd.as_str(), "run" | "copy" | "add") {
                for (strip_tabs, word) in heredoc_words(&ins.args) {
                    read_heredoc(&lines, &mut i, (strip_tabs, &word), &mut heredoc_lines)
                        .map_err(|e| format!("line {}: {e}", start + 1))?;
                }
            }
            ins.heredoc_lines = heredoc_lines;
            instructions.push(ins);
        }
        Ok(Self {
            escape,
            dropped_directives: dropped,
            instructions,
        })
    }

    /// The text the engine is sent: the escape directive if it is not `\`, then one line
    /// per instruction, each followed by its heredoc lines.
    pub fn serialize(&self) -> String {
        let mut out = String::new();
        if self.escape != '\\' {
            out.push_str(&format!("# escape={}\n", self.escape));
        }
        for ins in &self.instructions {
            out.push_str(&ins.text);
            out.push('\n');
            for l in &ins.heredoc_lines {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// The parser directives at the top of `lines`: the escape character, the directives
/// not sent on, and the index of the first line after them.
fn directives(lines: &[&str]) -> Result<(char, Vec<String>, usize), String> {
    let mut escape = '\\';
    let mut dropped = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some((name, value)) = directive(lines[i].trim_start()) else {
            break;
        };
        if !DIRECTIVES.contains(&name.as_str()) {
            break;
        }
        if seen.contains(&name) {
            return Err(format!(
                "line {}: only one `{name}` parser directive can be used",
                i + 1
            ));
        }
        seen.push(name.clone());
        if name == "escape" {
            escape = match value.as_str() {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(format!(
                        "line {}: invalid escape token `{}` (only \\ and ` are valid)",
                        i + 1,
                        hoist_policy::text::sanitize(other)
                    ));
                }
            };
        } else {
            dropped.push(format!("{name}={value}"));
        }
        i += 1;
    }
    Ok((escape, dropped, i))
}

/// The lines of one heredoc from `lines[*i]` on, through its terminator, into `out`.
fn read_heredoc(
    lines: &[&str],
    i: &mut usize,
    (strip_tabs, word): (bool, &str),
    out: &mut Vec<String>,
) -> Result<(), String> {
    loop {
        let Some(l) = lines.get(*i) else {
            return Err(format!("heredoc `{word}` is never closed"));
        };
        *i += 1;
        out.push(l.to_string());
        let body = if strip_tabs {
            l.trim_start_matches('\t')
        } else {
            l
        };
        if body == word {
            return Ok(());
        }
    }
}

/// An instruction from its joined line: command, flags, the rest.
fn instruction(line: usize, text: &str, heredoc_lines: Vec<String>) -> Instruction {
    let text = text.trim_matches(char::is_whitespace);
    let (cmd, rest) = match text.find([' ', '\t', '\u{b}', '\u{c}', '\r']) {
        Some(at) => (&text[..at], &text[at..]),
        None => (text, ""),
    };
    let (args, flags) = builder_flags(rest);
    Instruction {
        line,
        text: text.to_string(),
        cmd: cmd.to_ascii_lowercase(),
        flags,
        args: args.to_string(),
        heredoc_lines,
    }
}

/// The flags at the start of `line` and the rest (BuildKit's `extractBuilderFlags`):
/// words that start with `--`, quotes and `\` processed within them; `--` alone ends
/// them.
fn builder_flags(line: &str) -> (&str, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut blank_ok = false;
    let mut phase = Phase::Spaces;
    let mut k = 0;
    while k < chars.len() {
        let (pos, ch) = chars[k];
        if phase == Phase::Spaces {
            if ch.is_whitespace() {
                k += 1;
                continue;
            }
            if ch != '-' || chars.get(k + 1).map(|c| c.1) != Some('-') {
                return (&line[pos..], words);
            }
            phase = Phase::Word;
        }
        match phase {
            Phase::Word => {
                if ch.is_whitespace() {
                    phase = Phase::Spaces;
                    if word == "--" {
                        return (&line[pos..], words);
                    }
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    blank_ok = false;
                } else if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                } else if ch == '\\' {
                    if let Some(&(_, next)) = chars.get(k + 1) {
                        word.push(next);
                        k += 1;
                    }
                } else {
                    word.push(ch);
                }
            }
            Phase::Quote(q) => {
                if ch == q {
                    phase = Phase::Word;
                } else if ch == '\\' {
                    match chars.get(k + 1) {
                        Some(&(_, next)) => {
                            word.push(next);
                            k += 1;
                        }
                        None => phase = Phase::Word,
                    }
                } else {
                    word.push(ch);
                }
            }
            Phase::Spaces => unreachable!(),
        }
        k += 1;
    }
    if phase != Phase::Spaces && word != "--" && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    ("", words)
}

/// The heredocs an instruction opens: `(strip leading tabs, terminator)` for each word
/// `[n]<<[-]WORD` (quotes around WORD removed), in order.
fn heredoc_words(args: &str) -> Vec<(bool, String)> {
    args.split_whitespace()
        .filter_map(|w| {
            let w = w.trim_start_matches(|c: char| c.is_ascii_digit());
            let rest = w.strip_prefix("<<")?;
            let (strip, rest) = match rest.strip_prefix('-') {
                Some(r) => (true, r),
                None => (false, rest),
            };
            let word: String = rest.chars().filter(|c| *c != '"' && *c != '\'').collect();
            (!word.is_empty() && !word.starts_with('<')).then_some((strip, word))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<String> {
        Dockerfile::parse(text, Heredocs::Read)
            .unwrap()
            .instructions
            .into_iter()
            .map(|i| i.text)
            .collect()
    }

    #[test]
    fn continuations_join_as_the_engine_joins_them() {
        assert_eq!(
            texts("# c\nFROM a AS b\nRUN x \\\n  y\n\nADD https://x/y /z\n"),
            ["FROM a AS b", "RUN x   y", "ADD https://x/y /z"]
        );
        // Empty and comment lines inside a continuation are skipped, not its end; a
        // comment ending in the escape character is still a comment.
        assert_eq!(
            texts(
                "FROM a\nRUN \\\n\n# hidden \\\n  --mount=type=bind,source=/,target=/h cat /h/etc/shadow\n"
            ),
            [
                "FROM a",
                "RUN   --mount=type=bind,source=/,target=/h cat /h/etc/shadow"
            ]
        );
        // Escape followed by blanks continues too; CRLF line ends.
        assert_eq!(texts("RUN a \\  \r\nb\r\n"), ["RUN a b"]);
        let d = Dockerfile::parse(
            "FROM a\nRUN \\\n\n# x \\\n--mount=type=bind,source=/,target=/h id\n",
            Heredocs::Read,
        )
        .unwrap();
        assert_eq!(
            d.instructions[1].flag_names().collect::<Vec<_>>(),
            ["mount"]
        );
    }

    #[test]
    fn directives_only_at_the_top() {
        let d = Dockerfile::parse(
            "# syntax=docker/dockerfile:1\n#escape=`\nFROM a\nRUN `\n  --network=host x\n",
            Heredocs::Read,
        )
        .unwrap();
        assert_eq!(d.escape, '`');
        assert_eq!(d.dropped_directives, ["syntax=docker/dockerfile:1"]);
        assert_eq!(d.instructions[1].flags, ["--network=host"]);
        // After an instruction (or a plain comment, or an empty line) it is a comment.
        let d = Dockerfile::parse("# hi\n# escape=`\nRUN a \\\nb\n", Heredocs::Read).unwrap();
        assert_eq!(d.escape, '\\');
        assert_eq!(d.instructions[0].text, "RUN a b");
        assert!(Dockerfile::parse("# escape=x\nFROM a\n", Heredocs::Read).is_err());
        assert!(Dockerfile::parse("# escape=`\n# escape=\\\nFROM a\n", Heredocs::Read).is_err());
    }

    #[test]
    fn flags_are_read_with_the_parsers_quoting() {
        let flags = |l: &str| instruction(1, l, Vec::new()).flags;
        assert_eq!(flags("RUN --\"mount\"=type=bind x"), ["--mount=type=bind"]);
        assert_eq!(flags("RUN --m\\ount=a x"), ["--mount=a"]);
        assert_eq!(
            flags("RUN\t--mount='a b' --network=host x"),
            ["--mount=a b", "--network=host"]
        );
        assert_eq!(flags("RUN -- --mount=x y"), Vec::<String>::new());
        assert_eq!(flags("RUN echo --mount"), Vec::<String>::new());
        let i = instruction(1, "COPY --from=build /a /b", Vec::new());
        assert_eq!(i.flag("FROM"), Some("build"));
        assert_eq!(i.args, "/a /b");
    }

    #[test]
    fn heredoc_bodies_are_data_or_instructions() {
        let text = "FROM a\nRUN <<EOF\nRUN --mount=type=bind,source=/,target=/h x\nEOF\nRUN <<-'E2' cat\n\tbody\n\tE2\nRUN b\n";
        let read = Dockerfile::parse(text, Heredocs::Read).unwrap();
        assert_eq!(read.instructions.len(), 4);
        assert_eq!(read.instructions[1].heredoc_lines.len(), 2);
        assert!(read.instructions.iter().all(|i| i.flags.is_empty()));
        let ignored = Dockerfile::parse(text, Heredocs::Ignored).unwrap();
        assert!(
            ignored
                .instructions
                .iter()
                .any(|i| i.flags.first().is_some_and(|f| f.starts_with("--mount"))),
            "{ignored:?}"
        );
        assert!(Dockerfile::parse("RUN <<EOF\nx\n", Heredocs::Read).is_err());
    }

    #[test]
    fn serialized_text_reads_back_the_same() {
        let text = "\u{feff}# syntax=x/y\n# escape=`\n# c\nFROM a AS b\nRUN x `\n\n# c `\n  y\nRUN <<EOF\nline `\nEOF\nONBUILD RUN z\n";
        let d = Dockerfile::parse(text, Heredocs::Read).unwrap();
        let s = d.serialize();
        assert_eq!(
            s,
            "# escape=`\nFROM a AS b\nRUN x   y\nRUN <<EOF\nline `\nEOF\nONBUILD RUN z\n"
        );
        let again = Dockerfile::parse(&s, Heredocs::Read).unwrap();
        let shape = |d: &Dockerfile| {
            d.instructions
                .iter()
                .map(|i| (i.text.clone(), i.flags.clone(), i.heredoc_lines.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(shape(&again), shape(&d));
        let inner = d.instructions[3].onbuild_inner().unwrap();
        assert_eq!((inner.cmd.as_str(), inner.args.as_str()), ("run", "z"));
    }
}
