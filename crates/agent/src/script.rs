//! The shell script of a stage, as gitlab-runner's bash shell writes it: errexit, pipefail
//! where the shell has it, every variable exported with safe quoting, each command echoed
//! as a bold green `$ command` before it runs.

/// The shell that runs job scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShellKind {
    /// GNU bash.
    Bash,
    /// POSIX sh.
    Sh,
}

impl ShellKind {
    /// The program name.
    pub fn program(&self) -> &'static str {
        match self {
            ShellKind::Bash => "bash",
            ShellKind::Sh => "sh",
        }
    }
}

/// What a stage script does.
#[derive(Debug, Clone)]
pub struct StageScript<'a> {
    /// The shell.
    pub shell: ShellKind,
    /// Variables to export, in order (file variables already hold their file path).
    pub exports: Vec<(&'a str, &'a str)>,
    /// Directory to run in.
    pub workdir: &'a str,
    /// Commands, each echoed before it runs.
    pub commands: Vec<&'a str>,
    /// `CI_DEBUG_TRACE`: trace every command.
    pub debug_trace: bool,
}

/// Quotes a value for POSIX shells: single quotes, with `'` written as `'\''`.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// Whether `key` can be an exported shell variable name.
pub fn is_shell_name(key: &str) -> bool {
    let mut bytes = key.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Renders the script.
pub fn render(script: &StageScript<'_>) -> String {
    let mut out = String::new();
    out.push_str("trap 'exit 1' TERM\n");
    if script.debug_trace {
        out.push_str("set -o xtrace\n");
    }
    out.push_str("set -o errexit\n");
    match script.shell {
        ShellKind::Bash => out.push_str("set -o pipefail\n"),
        ShellKind::Sh => {
            out.push_str("if set -o | grep pipefail > /dev/null; then set -o pipefail; fi\n")
        }
    }
    out.push_str("set +o noclobber\n");
    for (key, value) in &script.exports {
        if is_shell_name(key) {
            out.push_str(&format!("export {key}={}\n", quote(value)));
        }
    }
    out.push_str(&format!("cd {}\n", quote(script.workdir)));
    for command in &script.commands {
        let command = command.trim_end();
        if command.trim().is_empty() {
            continue;
        }
        let shown = match command.split_once('\n') {
            Some((first, _)) => format!("{first} # collapsed multi-line command"),
            None => command.to_owned(),
        };
        out.push_str(&format!(
            "printf '\\033[32;1m$ %s\\033[0;m\\n' {}\n",
            quote(&shown)
        ));
        out.push_str(command);
        out.push('\n');
    }
    out.push_str("exit 0\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_bash_stage() {
        let script = render(&StageScript {
            shell: ShellKind::Bash,
            exports: vec![
                ("CI_JOB_ID", "42"),
                ("QUOTED", "it's $HOME"),
                ("not-a-name", "x"),
            ],
            workdir: "/builds/group/project",
            commands: vec!["echo hello", "for i in 1 2; do\n  echo $i\ndone", "  "],
            debug_trace: false,
        });
        assert_eq!(
            script,
            "trap 'exit 1' TERM\nset -o errexit\nset -o pipefail\nset +o noclobber\n\
             export CI_JOB_ID='42'\nexport QUOTED='it'\\''s $HOME'\n\
             cd '/builds/group/project'\n\
             printf '\\033[32;1m$ %s\\033[0;m\\n' 'echo hello'\necho hello\n\
             printf '\\033[32;1m$ %s\\033[0;m\\n' 'for i in 1 2; do # collapsed multi-line command'\nfor i in 1 2; do\n  echo $i\ndone\n\
             exit 0\n"
        );
    }

    #[test]
    fn sh_probes_for_pipefail() {
        let script = render(&StageScript {
            shell: ShellKind::Sh,
            exports: vec![],
            workdir: "/",
            commands: vec![],
            debug_trace: true,
        });
        assert!(script.contains("set -o xtrace\n") && script.contains("if set -o | grep pipefail"));
    }

    #[test]
    fn quoting_round_trips_through_a_real_shell() {
        for value in [
            "plain",
            "it's",
            "a'b'c",
            "$HOME `id` \"q\"",
            "line1\nline2",
            "",
            "\\n",
        ] {
            let output = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf '%s' {}", quote(value)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(output.stdout).unwrap(), value);
        }
        assert!(
            is_shell_name("CI_JOB_ID")
                && is_shell_name("_x1")
                && !is_shell_name("1x")
                && !is_shell_name("a-b")
                && !is_shell_name("")
        );
    }
}
