//! A process task's `user` (`NAME|UID[:GROUP|GID]`, checked by lb-config)
//! resolved to the uid and gid it runs as, from `/etc/passwd` and
//! `/etc/group` of the node that starts it, as docker resolves `--user`
//! inside the image. A name without a group takes the user's primary group;
//! a bare uid that has no passwd entry runs with gid = uid.

use std::path::Path;

/// The ids a task runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// Resolves `user` against the node's account files.
pub fn resolve(user: &str) -> Result<Ids, String> {
    let read = |path: &str| {
        std::fs::read_to_string(Path::new(path)).map_err(|e| format!("cannot read {path}: {e}"))
    };
    resolve_in(user, &read("/etc/passwd")?, &read("/etc/group")?)
}

/// Resolves `user` against the text of a passwd and a group file.
pub fn resolve_in(user: &str, passwd: &str, group: &str) -> Result<Ids, String> {
    let (name, group_part) = match user.split_once(':') {
        Some((name, group)) => (name, Some(group)),
        None => (user, None),
    };
    // passwd: name:password:uid:gid:gecos:home:shell
    let account = passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .find(|f| f[0] == name || (name.parse::<u32>().is_ok() && f[2] == name));
    let uid = match (&account, name.parse::<u32>()) {
        (Some(fields), _) => fields[2]
            .parse::<u32>()
            .map_err(|_| format!("/etc/passwd: user {name:?} has no numeric uid"))?,
        (None, Ok(uid)) => uid,
        (None, Err(_)) => return Err(format!("user {name:?} does not exist on this node")),
    };
    let gid = match group_part {
        None => match &account {
            Some(fields) => fields[3]
                .parse::<u32>()
                .map_err(|_| format!("/etc/passwd: user {name:?} has no numeric gid"))?,
            None => uid,
        },
        Some(wanted) => {
            // group: name:password:gid:members
            let by_name = group
                .lines()
                .map(|line| line.split(':').collect::<Vec<_>>())
                .filter(|f| f.len() >= 3)
                .find(|f| f[0] == wanted)
                .and_then(|f| f[2].parse::<u32>().ok());
            match (by_name, wanted.parse::<u32>()) {
                (Some(gid), _) | (None, Ok(gid)) => gid,
                (None, Err(_)) => {
                    return Err(format!("group {wanted:?} does not exist on this node"))
                }
            }
        }
    };
    Ok(Ids { uid, gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nweb:x:1000:1001::/home/web:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nnogroup:x:65534:\nstaff:x:50:web\n";

    #[test]
    fn names_and_ids_resolve_as_docker_does() {
        let ids = |user| resolve_in(user, PASSWD, GROUP);
        assert_eq!(
            ids("nobody"),
            Ok(Ids {
                uid: 65534,
                gid: 65534
            })
        );
        assert_eq!(
            ids("web"),
            Ok(Ids {
                uid: 1000,
                gid: 1001
            }),
            "primary group"
        );
        assert_eq!(
            ids("1000"),
            Ok(Ids {
                uid: 1000,
                gid: 1001
            }),
            "a known uid"
        );
        assert_eq!(
            ids("4242"),
            Ok(Ids {
                uid: 4242,
                gid: 4242
            }),
            "unknown uid"
        );
        assert_eq!(ids("web:staff"), Ok(Ids { uid: 1000, gid: 50 }));
        assert_eq!(ids("web:77"), Ok(Ids { uid: 1000, gid: 77 }));
        assert_eq!(
            ids("4242:4243"),
            Ok(Ids {
                uid: 4242,
                gid: 4243
            })
        );
    }

    #[test]
    fn an_unknown_name_is_an_error_naming_it() {
        assert_eq!(
            resolve_in("ghost", PASSWD, GROUP),
            Err("user \"ghost\" does not exist on this node".to_owned())
        );
        assert_eq!(
            resolve_in("web:ghosts", PASSWD, GROUP),
            Err("group \"ghosts\" does not exist on this node".to_owned())
        );
    }
}
