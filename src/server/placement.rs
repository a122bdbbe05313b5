//! Which shard owns a key that names where it was made: session ids and task
//! ids are `{shard}{random}` and, in a cluster, `.{node}` after it. The
//! owner is a pure function of the id, on every node: the shard the id names
//! on the node that made it, and a shard chosen by a stable hash of the id
//! on any other node (one that took it over from a dead creator).

/// Separates an id from the node that made it.
pub(crate) const NODE_SEPARATOR: char = '.';
/// Longest node id an id may name (as `--node-id` allows).
pub(crate) const NODE_ID_BYTES_MAX: usize = 64;

/// FNV-1a: a stable hash (the same on every node and every build).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `local` (with `.node` after it, in a cluster).
pub(crate) fn name(local: String, node: Option<&str>) -> String {
    match node {
        Some(n) => format!("{local}{NODE_SEPARATOR}{n}"),
        None => local,
    }
}

/// The id without its node, and the node it names.
pub(crate) fn split(id: &str) -> (&str, Option<&str>) {
    match id.split_once(NODE_SEPARATOR) {
        Some((l, n)) => (l, Some(n)),
        None => (id, None),
    }
}

/// The node an id names (the one that made it), if any.
pub(crate) fn node_of(id: &str) -> Option<&str> {
    split(id).1
}

/// Whether `n` is a node id an id may carry.
pub(crate) fn valid_node(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= NODE_ID_BYTES_MAX
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The shard of this node (`me`, in a cluster) that owns `id`, given the
/// shard its local part names: that shard when this node made it (or
/// outside a cluster), else a hash of the whole id. A shard this node no
/// longer has (it runs fewer since an upgrade or restart) is taken by
/// `named mod shard_count`, where its file was folded
/// (`adapters::store::fold_orphans`). None for an id naming a node outside a
/// cluster, or a malformed node.
pub(crate) fn owner(
    id: &str,
    named_shard: usize,
    shard_count: usize,
    me: Option<&str>,
) -> Option<usize> {
    assert!(shard_count > 0, "a node has at least one shard");
    match node_of(id) {
        Some(n) if !valid_node(n) || me.is_none() => None,
        Some(n) if Some(n) != me => Some((fnv1a(id.as_bytes()) % shard_count as u64) as usize),
        _ => Some(named_shard % shard_count),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_owned_by_its_shard_at_home_and_by_a_hash_elsewhere() {
        assert_eq!(owner("0003x", 3, 4, None), Some(3));
        assert_eq!(owner("0003x", 3, 3, None), Some(0));
        assert_eq!(owner("0005x", 5, 2, None), Some(1));
        assert_eq!(owner("0003x.a", 3, 4, None), None);
        assert_eq!(owner("0003x.a", 3, 4, Some("a")), Some(3));
        let elsewhere = owner("0003x.a", 3, 4, Some("b")).unwrap();
        assert_eq!(elsewhere, (fnv1a(b"0003x.a") % 4) as usize);
        assert_eq!(owner("0003x.a b", 3, 4, Some("b")), None);
        assert_eq!(split("ab.n.x"), ("ab", Some("n.x")));
        assert_eq!(name("ab".into(), Some("n")), "ab.n");
    }
}
