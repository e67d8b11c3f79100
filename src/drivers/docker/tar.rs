//! A tar archive of one file (and its parent directories), for the
//! Engine's archive API: all the driver uploads is the bootstrap password.

/// One 512-byte ustar header.
fn header(path: &str, mode: u32, size: usize, kind: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    let name = path.as_bytes();
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{v:0width$o}\0", width = len - 1);
        h[at..at + len].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, u64::from(mode));
    octal(&mut h, 108, 8, 0); // uid
    octal(&mut h, 116, 8, 0); // gid
    octal(&mut h, 124, 12, size as u64);
    octal(&mut h, 136, 12, 0); // mtime
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // checksum: computed with its own field as spaces
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// `path` (absolute) with `content` and `mode`, its parents as 0755
/// directories.
pub fn one_file(path: &str, content: &[u8], mode: u32) -> Vec<u8> {
    let rel = path.trim_start_matches('/');
    let mut out = Vec::new();
    let parts: Vec<&str> = rel.split('/').collect();
    for i in 1..parts.len() {
        out.extend_from_slice(&header(&format!("{}/", parts[..i].join("/")), 0o755, 0, b'5'));
    }
    out.extend_from_slice(&header(rel, mode, content.len(), b'0'));
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_system_tar_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar");
        std::fs::write(&archive, super::one_file("/run/rmm/pw", b"secret-value", 0o400)).unwrap();
        let out = std::process::Command::new("tar").arg("-tvf").arg(&archive).output().unwrap();
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(list.contains("run/rmm/pw") && list.contains("r--------"), "{list}");
        let x = std::process::Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(dir.path()).status().unwrap();
        assert!(x.success());
        assert_eq!(std::fs::read(dir.path().join("run/rmm/pw")).unwrap(), b"secret-value");
    }
}
