//! The host's memory settings that matter to fraudgraph: transparent huge pages.
//!
//! With the graph's memory on 2 MiB pages (the kernel's THP setting `always`, or glibc
//! started with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` or `=2`), the first touch of each
//! fresh 2 MiB page is one page fault that takes milliseconds on a VM whose host backs the
//! guest's memory lazily (5-28 ms on the project's VMs). While samples allocated new memory,
//! one in ~50 took such a fault at 10M edges; since the sampler reuses its memory they do
//! not, and huge pages then made no measurable difference to sampling (docs/BENCHMARKS.md,
//! "The sampler's own page faults"), while the writer still takes such faults as the graph
//! grows, possibly while holding a shard lock. `serve` logs and `doctor` prints
//! [`huge_page_warning`] when the host is set up that way; neither refuses to run, since the
//! setting is the operator's.

/// Where Linux says which transparent-huge-page mode is in force.
const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// The host's huge-page settings as fraudgraph sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HugePages {
    /// The kernel's THP mode (`always`, `madvise` or `never`), or `None` where the file
    /// is missing or unreadable (not Linux, or THP not built in).
    pub thp: Option<String>,
    /// The `GLIBC_TUNABLES` entry asking glibc's malloc for huge pages, if any.
    pub glibc_hugetlb: Option<String>,
}

impl HugePages {
    /// Reads this host's settings and this process's environment.
    pub fn detect() -> HugePages {
        HugePages {
            thp: std::fs::read_to_string(THP_ENABLED)
                .ok()
                .and_then(|s| thp_mode(&s).map(str::to_string)),
            glibc_hugetlb: std::env::var("GLIBC_TUNABLES")
                .ok()
                .and_then(|s| glibc_hugetlb(&s).map(str::to_string)),
        }
    }

    /// Why the graph may get huge pages here, or `None` when it will not.
    pub fn warning(&self) -> Option<String> {
        huge_page_warning(self.thp.as_deref(), self.glibc_hugetlb.as_deref())
    }
}

/// The selected mode in the kernel's THP file, e.g. `madvise` from
/// `always [madvise] never`.
fn thp_mode(file: &str) -> Option<&str> {
    let start = file.find('[')? + 1;
    let len = file[start..].find(']')?;
    Some(&file[start..start + len])
}

/// The `glibc.malloc.hugetlb` entry of a `GLIBC_TUNABLES` value when it asks for huge
/// pages (any value but 0), e.g. `glibc.malloc.hugetlb=1`.
fn glibc_hugetlb(tunables: &str) -> Option<&str> {
    tunables.split(':').find(|entry| {
        entry
            .strip_prefix("glibc.malloc.hugetlb=")
            .is_some_and(|value| value.trim() != "0")
    })
}

/// The warning for a host whose THP mode is `thp` and whose glibc tunables ask for huge
/// pages with `glibc_hugetlb`, or `None` when the graph stays on normal pages.
pub fn huge_page_warning(thp: Option<&str>, glibc_hugetlb: Option<&str>) -> Option<String> {
    let (cause, remedy) = match (thp, glibc_hugetlb) {
        (Some("never"), _) => return None,
        (Some("always"), _) => (
            format!("transparent huge pages are `always` ({THP_ENABLED})"),
            "set it to madvise or never on this host".to_string(),
        ),
        (_, Some(entry)) => (
            format!("GLIBC_TUNABLES has `{entry}`"),
            "start fraudgraph without it".to_string(),
        ),
        _ => return None,
    };
    Some(format!(
        "{cause}: huge pages gave sampling no measurable gain, and each fresh 2 MiB page the \
         graph grows into costs a page fault of milliseconds on a lazily backed VM, which \
         the writer may take while holding a shard lock; {remedy} (docs/OPERATIONS.md)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selected_thp_mode_is_the_bracketed_one() {
        assert_eq!(thp_mode("always [madvise] never\n"), Some("madvise"));
        assert_eq!(thp_mode("[always] madvise never\n"), Some("always"));
        assert_eq!(thp_mode("always madvise [never]"), Some("never"));
        assert_eq!(thp_mode("garbage"), None);
    }

    #[test]
    fn only_a_nonzero_glibc_hugetlb_tunable_asks_for_huge_pages() {
        assert_eq!(
            glibc_hugetlb("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
            Some("glibc.malloc.hugetlb=1")
        );
        assert_eq!(
            glibc_hugetlb("glibc.malloc.hugetlb=2"),
            Some("glibc.malloc.hugetlb=2")
        );
        assert_eq!(glibc_hugetlb("glibc.malloc.hugetlb=0"), None);
        assert_eq!(glibc_hugetlb("glibc.malloc.mxfast=0"), None);
    }

    #[test]
    fn huge_pages_are_warned_about_only_where_the_graph_would_get_them() {
        assert_eq!(huge_page_warning(Some("madvise"), None), None);
        assert_eq!(huge_page_warning(None, None), None);
        assert_eq!(
            huge_page_warning(Some("never"), Some("glibc.malloc.hugetlb=1")),
            None,
            "with THP off the kernel refuses glibc's request"
        );
        let always = huge_page_warning(Some("always"), None).expect("always is warned");
        assert!(always.contains("`always`") && always.contains("madvise or never"));
        let glibc = huge_page_warning(Some("madvise"), Some("glibc.malloc.hugetlb=1"))
            .expect("the glibc tunable is warned about under madvise");
        assert!(glibc.contains("glibc.malloc.hugetlb=1") && glibc.contains("without it"));
    }
}
