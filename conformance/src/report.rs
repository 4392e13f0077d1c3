//! What a run found: every check with its spec section, pass or fail, and
//! a one-line reason.

use std::fmt;

/// One check's result.
#[derive(Clone, Debug)]
pub struct CheckResult {
    /// `area/what`, such as `push/chunked`: stable, for tests to name.
    pub name: &'static str,
    /// Where the spec says so, such as `Push: chunked (end-5, end-6)`.
    pub section: &'static str,
    pub passed: bool,
    /// Why it failed; for a pass, a note (or empty).
    pub reason: String,
}

/// Every check of a run, in the order they ran.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub results: Vec<CheckResult>,
}

impl Report {
    /// The checks that failed.
    pub fn failures(&self) -> Vec<&CheckResult> {
        self.results.iter().filter(|r| !r.passed).collect()
    }

    /// The names of the checks that failed.
    pub fn failed_names(&self) -> Vec<&'static str> {
        self.failures().iter().map(|r| r.name).collect()
    }

    /// True when every check passed.
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.passed)
    }

    /// The result of one check, by name.
    pub fn get(&self, name: &str) -> Option<&CheckResult> {
        self.results.iter().find(|r| r.name == name)
    }

    /// The failures, one per line: `name (section): reason`.
    pub fn failure_lines(&self) -> String {
        self.failures()
            .iter()
            .map(|r| format!("{} ({}): {}", r.name, r.section, r.reason))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A table: check, result, reason; then a count.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .results
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(0)
            .max("CHECK".len());
        writeln!(f, "{:width$}  {:6}  REASON", "CHECK", "RESULT")?;
        for r in &self.results {
            let result = if r.passed { "pass" } else { "FAIL" };
            let reason = if r.reason.is_empty() {
                r.section.to_owned()
            } else if r.passed {
                format!("{} ({})", r.section, r.reason)
            } else {
                r.reason.clone()
            };
            writeln!(f, "{:width$}  {result:6}  {reason}", r.name)?;
        }
        let failed = self.failures().len();
        write!(
            f,
            "{} checks: {} passed, {failed} failed",
            self.results.len(),
            self.results.len() - failed
        )
    }
}
