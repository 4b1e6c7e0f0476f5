//! The host's memory settings that matter to fraudgraph (transparent huge pages), and this
//! process's resident memory ([`ResidentMemory`]).
//!
//! With the graph's memory on 2 MiB pages (the kernel's THP setting `always`, or glibc
//! started with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` or `=2`), random reads of a large
//! graph miss the TLB less: at 10M edges `bench sampler` ingested and sampled 1.1-1.4x
//! faster with them. But the first touch of each fresh 2 MiB page is one page fault that
//! takes milliseconds on a VM whose host backs the guest's memory lazily (3.8-12 ms on
//! average, up to 37 ms, on the project's VMs), the writer takes those faults as the graph
//! grows, possibly while holding a shard lock, and the scoring service on its default graph
//! answered no faster with them (docs/BENCHMARKS.md, "Huge pages on a quiet morning").
//! `serve` logs and `doctor` prints [`huge_page_warning`] when the host is set up that way;
//! neither refuses to run, since the setting is the operator's (docs/OPERATIONS.md says
//! when to choose it).

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

/// Where Linux sums up this process's memory mappings.
const SMAPS_ROLLUP: &str = "/proc/self/smaps_rollup";

/// This process's resident memory, and how much of it is on transparent huge pages: what
/// `bench sampler` reports next to its figures, so a run says whether the graph it timed
/// sat on 2 MiB pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResidentMemory {
    /// Resident bytes (`Rss`).
    pub resident_bytes: u64,
    /// Resident anonymous bytes on transparent huge pages (`AnonHugePages`).
    pub huge_page_bytes: u64,
}

impl ResidentMemory {
    /// Reads this process's figures, or `None` where the kernel does not give them
    /// (not Linux, or a kernel older than 4.14).
    pub fn of_this_process() -> Option<ResidentMemory> {
        parse_smaps_rollup(&std::fs::read_to_string(SMAPS_ROLLUP).ok()?)
    }
}

/// The `Rss` and `AnonHugePages` lines (in kB) of a `smaps_rollup` file, in bytes.
fn parse_smaps_rollup(file: &str) -> Option<ResidentMemory> {
    let kb = |name: &str| {
        file.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(':')?;
            value.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    };
    Some(ResidentMemory {
        resident_bytes: kb("Rss")? * 1024,
        huge_page_bytes: kb("AnonHugePages")? * 1024,
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
        "{cause}: each fresh 2 MiB page the graph grows into costs a page fault of \
         milliseconds on a lazily backed VM, which the writer may take while holding a shard \
         lock, and scoring measured no faster with huge pages; {remedy}, unless the graph is \
         large and the host backs memory eagerly (docs/OPERATIONS.md)"
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
    fn resident_memory_is_read_from_the_rollup_in_bytes() {
        let rollup = "55d0c0a00000-7ffd8b5fd000 ---p 00000000 00:00 0    [rollup]\n\
                      Rss:             4989884 kB\n\
                      Pss:             4985210 kB\n\
                      AnonHugePages:   4683776 kB\n\
                      ShmemPmdMapped:        0 kB\n";
        assert_eq!(
            parse_smaps_rollup(rollup),
            Some(ResidentMemory {
                resident_bytes: 4_989_884 * 1024,
                huge_page_bytes: 4_683_776 * 1024,
            })
        );
        assert_eq!(
            parse_smaps_rollup("Rss: 12 kB\n"),
            None,
            "no huge-page line"
        );
        assert_eq!(
            parse_smaps_rollup("Rss: many kB\nAnonHugePages: 0 kB\n"),
            None
        );
        let here = ResidentMemory::of_this_process().expect("Linux gives smaps_rollup");
        assert!(here.resident_bytes > 0 && here.huge_page_bytes <= here.resident_bytes);
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
