//! The JUnit XML report (GitLab's test reports, and most CI systems): one
//! test suite for the step, one failed test case per crashed process,
//! with its report as the failure's text. Written with `quick-junit`
//! (nextest's), which escapes what XML cannot hold.

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use super::text::{crash_text, site_text};
use super::StepReport;

/// The XML document.
pub fn to_xml(s: &StepReport) -> Result<String, quick_junit::SerializeError> {
    let mut report = Report::new("bts ci");
    let mut suite = TestSuite::new(s.command.join(" "));
    suite.add_property(Property::new("processes", s.processes.to_string()));
    suite.add_property(Property::new("status", s.status.to_string()));
    suite.add_property(Property::new("backend", s.backend.clone()));
    for (i, c) in s.crashes.iter().enumerate() {
        let r = &c.report;
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
        let mut message = format!("pid {} got {}", r.pid, c.what());
        if let Some(site) = site_text(c) {
            message += &format!(" in {site}");
        }
        status.set_message(message);
        status.set_type(r.outcome.signal_name.clone().unwrap_or_else(|| r.outcome.kind.clone()));
        status.set_description(crash_text(i + 1, c));
        let mut case = TestCase::new(format!("{} (pid {})", r.command.join(" "), r.pid), status);
        case.set_classname(c.program());
        suite.add_test_case(case);
    }
    report.add_test_suite(suite);
    report.to_string()
}
