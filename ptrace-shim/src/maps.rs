//! `/proc/PID/maps`: the executable mappings of a traced process.

use std::io;

pub use decode::Mapping;

/// Reads the executable mappings of `pid`.
pub fn read_exec_maps(pid: i32) -> io::Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(parse_exec_maps(&text))
}

/// Parses the executable lines of a maps file; malformed lines are skipped.
pub fn parse_exec_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?;
    let offset = it.next()?;
    let _dev = it.next()?;
    let _inode = it.next()?;
    let path = it.next().unwrap_or("").trim().to_string();
    if perms.as_bytes().get(2) != Some(&b'x') {
        return None;
    }
    let (s, e) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_executable_lines_only() {
        let text = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 123 /usr/bin/true
55d0c0a01000-55d0c0a05000 r-xp 00001000 fe:01 123 /usr/bin/true
7ffd1e5f2000-7ffd1e5f4000 r-xp 00000000 00:00 0                          [vdso]
7f00 garbage
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";
        let maps = parse_exec_maps(text);
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].path, "/usr/bin/true");
        assert_eq!(maps[0].offset, 0x1000);
        assert!(maps[0].contains(0x55d0c0a01234));
        assert_eq!(maps[1].path, "[vdso]");
        assert_eq!(maps[2].start, 0xffffffffff600000);
    }
}
