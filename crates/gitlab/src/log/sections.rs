//! Section markers and the colours of runner messages, as GitLab renders them.

/// Bold green.
pub const BOLD_GREEN: &str = "\x1b[32;1m";
/// Bold cyan.
pub const BOLD_CYAN: &str = "\x1b[36;1m";
/// Bold red.
pub const BOLD_RED: &str = "\x1b[31;1m";
/// Yellow.
pub const YELLOW: &str = "\x1b[0;33m";
/// Bold yellow.
pub const BOLD_YELLOW: &str = "\x1b[33;1m";
/// Reset.
pub const RESET: &str = "\x1b[0;m";
/// Erase to the end of the line.
pub const ERASE_LINE: &str = "\x1b[0K";

/// `section_start:<unix seconds>:<name>\r\x1b[0K`.
pub fn section_start(name: &str, unix_seconds: u64) -> String {
    format!("section_start:{unix_seconds}:{name}\r{ERASE_LINE}")
}

/// `section_end:<unix seconds>:<name>\r\x1b[0K`.
pub fn section_end(name: &str, unix_seconds: u64) -> String {
    format!("section_end:{unix_seconds}:{name}\r{ERASE_LINE}")
}

/// The bold cyan first line of a section, naming what it does.
pub fn section_header(description: &str) -> String {
    format!("{BOLD_CYAN}{description}{RESET}\n")
}

/// A runner warning line.
pub fn warning_line(message: &str) -> String {
    format!("{YELLOW}WARNING: {message}{RESET}\n")
}

/// A runner error line.
pub fn error_line(message: &str) -> String {
    format!("{BOLD_RED}ERROR: {message}{RESET}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_match_gitlab_format() {
        assert_eq!(
            section_start("step_script", 1_700_000_000),
            "section_start:1700000000:step_script\r\x1b[0K"
        );
        assert_eq!(
            section_end("step_script", 1_700_000_001),
            "section_end:1700000001:step_script\r\x1b[0K"
        );
        assert_eq!(warning_line("x"), "\x1b[0;33mWARNING: x\x1b[0;m\n");
        assert_eq!(error_line("x"), "\x1b[31;1mERROR: x\x1b[0;m\n");
    }
}
