//! The unexpected-outcomes oracle: a registration that raced no layout operation and still
//! gave another outcome than the expectations say for its cell.

/// What is wrong with a registration that gave `outcome`, if anything: `expected` is the
/// outcome the expectations give the cell and why; `clean` whether no layout operation ran
/// on the file at any moment of the registration (only those are judged).
pub fn judge(expected: Option<&(String, String)>, clean: bool, outcome: &str) -> Option<String> {
    let (exp, why) = expected?;
    (clean && exp != outcome)
        .then(|| format!("registration gave {outcome}, the expectations say {exp} ({why})"))
}

#[cfg(test)]
mod tests {
    use super::judge;

    #[test]
    fn only_clean_registrations_that_differ_are_unexpected() {
        let exp = ("ok".to_string(), "tmpfs pins".to_string());
        assert_eq!(judge(Some(&exp), true, "ok"), None);
        assert_eq!(judge(Some(&exp), false, "EFAULT"), None);
        assert_eq!(judge(None, true, "EFAULT"), None);
        assert_eq!(
            judge(Some(&exp), true, "EFAULT").as_deref(),
            Some("registration gave EFAULT, the expectations say ok (tmpfs pins)")
        );
    }
}
