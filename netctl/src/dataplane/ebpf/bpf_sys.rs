//! The `bpf(2)` commands aya 0.14 does not expose the way netctl needs them: opening a
//! pinned object, `BPF_LINK_UPDATE` (swap a link's program atomically) for links of every
//! kind, and walking the keys of a map whose key type is not known here (to count its
//! entries for the metrics' map pressure).

use std::{
    ffi::CString,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    path::Path,
};

use anyhow::Context;

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// The kernel checks that the bytes after the last field are zero: the padding is a field,
/// so that it is zeroed too.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapNextKeyAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, correctly laid out `union bpf_attr` prefix of its size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a pinned BPF object (program, map or link).
pub fn obj_get(path: &Path) -> anyhow::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).context("pin path with a NUL byte")?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        ..ObjGetAttr::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)
        .with_context(|| format!("opening pinned {}", path.display()))?;
    // SAFETY: the kernel returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Replaces the program of the link pinned at `link` with `prog`, atomically.
pub fn link_update(link: &Path, prog: BorrowedFd<'_>) -> anyhow::Result<()> {
    let link_fd = obj_get(link)?;
    let mut attr = LinkUpdateAttr {
        link_fd: link_fd.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        ..LinkUpdateAttr::default()
    };
    bpf(BPF_LINK_UPDATE, &mut attr)
        .map(drop)
        .with_context(|| format!("updating the program of link {}", link.display()))
}

/// How many keys the hash map pinned at `path` holds (keys of `key_size` bytes), walked
/// with `BPF_MAP_GET_NEXT_KEY`. Entries that come and go meanwhile may be missed or seen
/// twice (the kernel restarts a walk at a deleted key): a gauge, not an exact count. Stops
/// after `limit` keys.
pub fn count_keys(path: &Path, key_size: u32, limit: u64) -> anyhow::Result<u64> {
    let fd = obj_get(path)?;
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut n = 0u64;
    let mut first = true;
    while n < limit {
        let mut attr = MapNextKeyAttr {
            map_fd: fd.as_raw_fd() as u32,
            // NULL asks for the first key.
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            ..MapNextKeyAttr::default()
        };
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {
                n += 1;
                first = false;
                std::mem::swap(&mut key, &mut next);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => {
                return Err(e).with_context(|| format!("walking the keys of {}", path.display()));
            }
        }
    }
    Ok(n)
}
