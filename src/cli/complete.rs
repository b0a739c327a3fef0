//! Shell completion: `stasis completion bash|zsh|fish` prints a script that hands every
//! completion to the hidden `stasis __complete` helper, which walks the clap definitions (so
//! flags, subcommands and value lists never drift from the parser) and lists workload names
//! and exec session ids from the state root the command line names (`--root`, else
//! `STASIS_ROOT`, else the default).
//!
//! One helper serves every shell, so names are completed the same way everywhere; bash calls
//! it through `complete -C`, zsh and fish through a small function. Where an argument is a
//! path (`--export FILE`, `--rootfs DIR`, the workload's command), the helper lists files for
//! bash itself (a `-C` command cannot hand back to bash's own file completion without also
//! offering files where none fit, after a name that matches nothing) and tells zsh and fish
//! with a `:files` line to use theirs.

use super::Cli;
use clap::{Arg, ArgAction, Command, CommandFactory};
use stasis::store::name::WorkloadName;
use stasis::store::state::StateRoot;
use std::io::Write;
use std::path::PathBuf;

/// The hidden helper's name; `cli::main` dispatches to it before clap parses anything, so it
/// is in no help text, no man page and no completion.
pub const HELPER: &str = "__complete";

/// A shell whose completion script stasis prints.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

// `stasis completion SHELL`.
#[derive(clap::Args, Debug)]
pub struct CompletionArgs {
    /// The shell to print the completion script for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Prints the completion script for a shell.
pub fn completion(a: CompletionArgs) -> Result<i32, super::Failure> {
    let script = match a.shell {
        Shell::Bash => BASH,
        Shell::Zsh => ZSH,
        Shell::Fish => FISH,
    };
    std::io::stdout().write_all(script.as_bytes())?;
    Ok(0)
}

// bash runs the -C command with the command's name, the word being completed and the word
// before it, and COMP_LINE/COMP_POINT in the environment; `-o filenames` makes readline
// quote what the helper lists and end a directory with a slash instead of a space.
const BASH: &str = r#"# bash completion for stasis (`stasis completion bash`)
complete -o filenames -C 'stasis __complete bash' stasis
"#;

const ZSH: &str = r#"#compdef stasis
# zsh completion for stasis (`stasis completion zsh`)
_stasis() {
  local -a lines cands
  local l
  lines=("${(@f)$(stasis __complete zsh -- "${(@)words[1,CURRENT]}" 2>/dev/null)}")
  if [[ ${lines[1]} == :files ]]; then
    _files
    return
  fi
  for l in $lines; do
    [[ -n $l ]] && cands+=("${${l%%$'\t'*}//:/\\:}:${l#*$'\t'}")
  done
  (( ${#cands} )) && _describe -t stasis stasis cands
}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  _stasis "$@"
else
  compdef _stasis stasis
fi
"#;

const FISH: &str = r#"# fish completion for stasis (`stasis completion fish`)
function __stasis_complete
    set -l out (stasis __complete fish -- (commandline -opc) (commandline -ct) 2>/dev/null)
    if test "$out[1]" = :files
        __fish_complete_path (commandline -ct)
    else
        printf '%s\n' $out
    end
end
complete -c stasis -f -a '(__stasis_complete)'
"#;

/// Runs the helper: `__complete bash CMD CUR PREV` (bash's `complete -C`, with COMP_LINE and
/// COMP_POINT set) or `__complete zsh|fish -- WORDS…` (the words up to and including the one
/// being completed). Prints one candidate a line (with a tab and a description for zsh and
/// fish) and always exits 0: a failing helper must never disturb the user's shell.
pub fn helper(args: &[String]) -> i32 {
    let (words, bash_cur, describe) = match args.first().map(String::as_str) {
        Some("bash") => {
            let line = std::env::var("COMP_LINE").unwrap_or_default();
            let point = std::env::var("COMP_POINT")
                .ok()
                .and_then(|p| p.parse::<usize>().ok())
                .unwrap_or(usize::MAX);
            let upto: String = line.chars().take(point).collect();
            (split_line(&upto), args.get(2).cloned(), false)
        }
        Some("zsh") | Some("fish") => {
            let words: Vec<String> = args[1..]
                .iter()
                .skip_while(|w| *w == "--")
                .cloned()
                .collect();
            (words, None, true)
        }
        _ => return 0,
    };
    // words[0] is the command's name
    let words = words.get(1..).unwrap_or_default();
    let cur = words.last().map(String::as_str).unwrap_or("");
    let answer = candidates(&command(), words);
    let cands = match answer {
        Answer::Words(c) => c,
        Answer::Files if bash_cur.is_none() => {
            println!(":files");
            return 0;
        }
        Answer::Files => files(cur),
    };
    let mut out = Vec::new();
    for c in cands {
        // bash splits words at COMP_WORDBREAKS (`--format=js` is completed as `js`): answer
        // for the part it replaces.
        let value = match &bash_cur {
            Some(bc) => match cur.strip_suffix(bc.as_str()) {
                Some(head) if !head.is_empty() => match c.value.strip_prefix(head) {
                    Some(v) => v.to_string(),
                    None => continue,
                },
                _ => c.value,
            },
            None => c.value,
        };
        if describe && !c.help.is_empty() {
            // one line a candidate: a session's command may hold tabs or newlines
            let help = c.help.replace(char::is_control, " ");
            out.push(format!("{value}\t{help}"));
        } else {
            out.push(value);
        }
    }
    let mut so = std::io::stdout().lock();
    for l in out {
        let _ = writeln!(so, "{l}");
    }
    0
}

/// The CLI's definition, built: global options and help flags are in every subcommand.
fn command() -> Command {
    let mut c = Cli::command();
    c.build();
    c
}

/// One completion: the word, and what it is (for shells that show it).
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub value: String,
    pub help: String,
}

fn cand(value: impl Into<String>, help: impl Into<String>) -> Candidate {
    Candidate {
        value: value.into(),
        help: help.into(),
    }
}

/// Splits a command line as the shell would for completion: whitespace separates words,
/// quotes and backslashes group them; a line ending in whitespace starts an empty word.
pub fn split_line(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            (Some(_), c) => cur.push(c),
            (None, '\'') | (None, '"') => {
                quote = Some(ch);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    // the word being completed: possibly empty
    words.push(cur);
    words
}

/// Whether an option consumes a value.
fn takes_value(a: &Arg) -> bool {
    matches!(a.get_action(), ArgAction::Set | ArgAction::Append)
}

fn long_arg<'a>(cmds: &[&'a Command], long: &str) -> Option<&'a Arg> {
    cmds.iter()
        .rev()
        .find_map(|c| c.get_arguments().find(|a| a.get_long() == Some(long)))
}

fn short_arg<'a>(cmds: &[&'a Command], short: char) -> Option<&'a Arg> {
    cmds.iter()
        .rev()
        .find_map(|c| c.get_arguments().find(|a| a.get_short() == Some(short)))
}

/// What the words before the one being completed say.
struct Parsed<'a> {
    /// The command path: the top command, then the subcommand (if one was typed).
    cmds: Vec<&'a Command>,
    /// The option whose value is being completed, if any.
    pending: Option<&'a Arg>,
    /// How many positional words the subcommand has been given.
    positionals: usize,
    /// After `--`: only the workload's own command line follows.
    dashdash: bool,
    root: Option<PathBuf>,
    /// The workload named so far (for session ids).
    workload: Option<String>,
}

fn parse<'a>(top: &'a Command, words: &[String]) -> Parsed<'a> {
    let mut p = Parsed {
        cmds: vec![top],
        pending: None,
        positionals: 0,
        dashdash: false,
        root: None,
        workload: None,
    };
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        i += 1;
        if let Some(a) = p.pending.take() {
            if a.get_long() == Some("root") {
                p.root = Some(PathBuf::from(w));
            }
            continue;
        }
        if p.dashdash {
            continue;
        }
        if w == "--" {
            p.dashdash = true;
            continue;
        }
        if let Some(long) = w.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            if let Some(a) = long_arg(&p.cmds, name) {
                match inline {
                    Some(v) if a.get_long() == Some("root") => p.root = Some(PathBuf::from(v)),
                    Some(_) => {}
                    None if takes_value(a) => p.pending = Some(a),
                    None => {}
                }
            }
            continue;
        }
        if let Some(shorts) = w.strip_prefix('-').filter(|s| !s.is_empty()) {
            // a cluster such as -it; a short option with a value takes the rest or the next word
            for (k, ch) in shorts.char_indices() {
                if let Some(a) = short_arg(&p.cmds, ch) {
                    if takes_value(a) {
                        if k + ch.len_utf8() == shorts.len() {
                            p.pending = Some(a);
                        }
                        break;
                    }
                }
            }
            continue;
        }
        let cmd = p.cmds[p.cmds.len() - 1];
        if let Some(sub) = cmd.find_subcommand(w) {
            p.cmds.push(sub);
            p.positionals = 0;
            continue;
        }
        if let Some(a) = positional(cmd, p.positionals) {
            if is_workload(a) && p.workload.is_none() {
                p.workload = Some(w.clone());
            }
            // the trailing COMMAND takes everything after it
            if a.is_trailing_var_arg_set() {
                p.dashdash = true;
            }
        }
        p.positionals += 1;
    }
    p
}

/// The positional argument that the `n`th positional word fills.
fn positional(cmd: &Command, n: usize) -> Option<&Arg> {
    let pos: Vec<&Arg> = cmd.get_positionals().collect();
    pos.get(n).copied().or_else(|| {
        pos.last()
            .copied()
            .filter(|a| a.get_num_args().is_some_and(|r| r.max_values() > 1))
    })
}

/// A positional that names existing workloads (`NAME`, `NAME…`).
fn is_workload(a: &Arg) -> bool {
    matches!(a.get_id().as_str(), "name" | "names") && a.is_positional()
}

/// What the word being completed may be.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// One of these (none: nothing fits).
    Words(Vec<Candidate>),
    /// A path: the shell's file completion.
    Files,
}

/// Completions for the last word of `words` (the words after the program's name).
pub fn candidates(top: &Command, words: &[String]) -> Answer {
    let (cur, before) = match words.split_last() {
        Some((c, b)) => (c.as_str(), b),
        None => ("", &[][..]),
    };
    let p = parse(top, before);
    let root = || StateRoot::from_flag(p.root.clone());
    let filter = |v: Vec<Candidate>, prefix: &str| -> Answer {
        Answer::Words(
            v.into_iter()
                .filter(|c| c.value.starts_with(prefix))
                .collect(),
        )
    };
    let for_value = |a: &Arg, prefix: &str| -> Answer {
        if is_path(a) {
            return Answer::Files;
        }
        filter(values(a, &root(), p.workload.as_deref()), prefix)
    };
    if let Some(a) = p.pending {
        return for_value(a, cur);
    }
    // the workload's own command line: its program and its files
    if p.dashdash {
        return Answer::Files;
    }
    let cmd = p.cmds[p.cmds.len() - 1];
    if let Some(long) = cur.strip_prefix("--") {
        if let Some((name, v)) = long.split_once('=') {
            let Some(a) = long_arg(&p.cmds, name) else {
                return Answer::Words(vec![]);
            };
            let head = format!("--{name}=");
            return match for_value(a, v) {
                Answer::Words(w) => Answer::Words(
                    w.into_iter()
                        .map(|c| cand(format!("{head}{}", c.value), c.help))
                        .collect(),
                ),
                // `--export=FILE`: a file name glued to the flag is past what shells complete
                Answer::Files => Answer::Words(vec![]),
            };
        }
    }
    if cur.starts_with('-') {
        // a built command holds --help, --version and the global options in each subcommand
        let v = cmd
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !a.is_positional())
            .filter_map(|a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                a.get_long()
                    .map(|l| cand(format!("--{l}"), first_line(&help)))
            })
            .collect();
        return filter(v, cur);
    }
    if p.cmds.len() == 1 {
        let v = top
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| {
                cand(
                    s.get_name(),
                    first_line(&s.get_about().map(|a| a.to_string()).unwrap_or_default()),
                )
            })
            .collect();
        return filter(v, cur);
    }
    match positional(cmd, p.positionals) {
        Some(a) if a.is_trailing_var_arg_set() => Answer::Files,
        Some(a) => for_value(a, cur),
        None => Answer::Words(vec![]),
    }
}

/// An argument whose value is a path on this host.
fn is_path(a: &Arg) -> bool {
    use clap::ValueHint::*;
    matches!(
        a.get_value_hint(),
        AnyPath | FilePath | DirPath | ExecutablePath
    ) || a.get_value_names().is_some_and(|v| {
        v.iter()
            .any(|n| matches!(n.as_str(), "FILE" | "DIR" | "SRC:DST[:ro]"))
    })
}

/// Files and directories that complete `cur` (a directory ends with `/`), for bash; `~/` is
/// the home directory, and dot files show only when asked for.
pub fn files(cur: &str) -> Vec<Candidate> {
    let (shown, prefix) = match cur.rfind('/') {
        Some(i) => (&cur[..=i], &cur[i + 1..]),
        None => ("", cur),
    };
    let dir = match shown.strip_prefix("~/") {
        Some(rest) => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(rest),
        None if shown.is_empty() => PathBuf::from("."),
        None => PathBuf::from(shown),
    };
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return vec![];
    };
    let mut v: Vec<Candidate> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if !name.starts_with(prefix) || (name.starts_with('.') && !prefix.starts_with('.')) {
                return None;
            }
            // through a symlink: a link to a directory is one
            let slash = if e.path().is_dir() { "/" } else { "" };
            Some(cand(format!("{shown}{name}{slash}"), ""))
        })
        .collect();
    v.sort_by(|a, b| a.value.cmp(&b.value));
    v
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or("")
        .trim_end_matches('.')
        .to_string()
}

/// The values an argument may take; empty for free text and file names.
fn values(a: &Arg, root: &StateRoot, workload: Option<&str>) -> Vec<Candidate> {
    let pv = a.get_possible_values();
    if !pv.is_empty() {
        return pv
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| {
                cand(
                    v.get_name(),
                    v.get_help().map(|h| h.to_string()).unwrap_or_default(),
                )
            })
            .collect();
    }
    if is_workload(a) {
        return root
            .names()
            .into_iter()
            .map(|n| cand(n.as_str(), "workload"))
            .collect();
    }
    // --attach, --stop, --rm, logs --exec: the named workload's exec sessions
    if a.get_value_names()
        .is_some_and(|v| v.iter().any(|n| n.as_str() == "ID"))
    {
        let Some(wd) = workload
            .and_then(|w| WorkloadName::parse(w).ok())
            .map(|n| root.workload(&n))
        else {
            return vec![];
        };
        return stasis::store::sessions::list(&wd)
            .into_iter()
            .map(|s| cand(s.id.as_str(), s.command.join(" ")))
            .collect();
    }
    vec![]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_list_a_directory_with_slashes_on_directories() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("spec.yaml"), "").unwrap();
        std::fs::write(d.path().join(".hidden"), "").unwrap();
        let base = format!("{}/", d.path().display());
        let got: Vec<String> = files(&format!("{base}s"))
            .into_iter()
            .map(|c| c.value)
            .collect();
        assert_eq!(got, vec![format!("{base}spec.yaml"), format!("{base}sub/")]);
        assert_eq!(files(&base).len(), 2);
        assert_eq!(files(&format!("{base}.")).len(), 1);
    }

    fn words(s: &str) -> Vec<String> {
        split_line(s)[1..].to_vec()
    }

    fn complete(line: &str) -> Vec<String> {
        match candidates(&command(), &words(line)) {
            Answer::Words(w) => {
                let mut v: Vec<String> = w.into_iter().map(|c| c.value).collect();
                v.sort();
                v
            }
            Answer::Files => vec![":files".into()],
        }
    }

    #[test]
    fn lines_split_like_a_shell() {
        assert_eq!(split_line("stasis logs "), vec!["stasis", "logs", ""]);
        assert_eq!(split_line("stasis lo"), vec!["stasis", "lo"]);
        assert_eq!(
            split_line(r#"stasis --root '/a b' x\ y "c"#),
            vec!["stasis", "--root", "/a b", "x y", "c"]
        );
    }

    #[test]
    fn subcommands_flags_and_values_come_from_clap() {
        let subs = complete("stasis che");
        assert_eq!(subs, vec!["check", "checkpoint", "checkpoints"]);
        assert!(complete("stasis checkpoint --le").contains(&"--leave-running".to_string()));
        assert!(complete("stasis ps --").contains(&"--root".to_string()));
        assert_eq!(complete("stasis ps --format "), vec!["json", "table"]);
        assert_eq!(complete("stasis ps --format=j"), vec!["--format=json"]);
        assert_eq!(complete("stasis completion "), vec!["bash", "fish", "zsh"]);
        // the helper itself is no subcommand
        assert!(complete("stasis __").is_empty());
        // file arguments and the workload's command are the shell's file completion
        assert_eq!(complete("stasis run -f "), vec![":files"]);
        assert_eq!(complete("stasis checkpoint --export "), vec![":files"]);
        assert_eq!(complete("stasis --root "), vec![":files"]);
        assert_eq!(complete("stasis exec job -- ls "), vec![":files"]);
        assert_eq!(complete("stasis run sh "), vec![":files"]);
        // a value that is neither a list nor a path: nothing
        assert!(complete("stasis stop -t ").is_empty());
    }

    #[test]
    fn names_come_from_the_root_on_the_line() {
        let d = tempfile::tempdir().unwrap();
        for n in ["alpha", "beta"] {
            std::fs::create_dir_all(d.path().join("workloads").join(n)).unwrap();
        }
        let r = d.path().display().to_string();
        assert_eq!(
            complete(&format!("stasis --root {r} logs ")),
            vec!["alpha", "beta"]
        );
        assert_eq!(
            complete(&format!("stasis --root={r} rm -f al")),
            vec!["alpha"]
        );
        assert_eq!(
            complete(&format!("stasis --root {r} logs -f --markers b")),
            vec!["beta"]
        );
        // a new name is not an existing one
        assert!(complete(&format!("stasis --root {r} run --name ")).is_empty());
        // a name that matches nothing offers nothing, never files
        assert!(complete(&format!("stasis --root {r} logs zz")).is_empty());
        // one NAME given: the next word is not a name
        assert!(complete(&format!("stasis --root {r} logs alpha ")).is_empty());
    }
}
