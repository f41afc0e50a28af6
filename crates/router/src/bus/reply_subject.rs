//! Where a node may send an answer to a control request: only to an inbox of the asking
//! process, `<prefix>.ctl.reply.<boot>.<token>` (16 hex digits, then decimal digits). A
//! request is anyone's to publish on the bus; its reply subject must not turn this node
//! into a sender on a delivery subject (`<prefix>.all`, a user's, a room's), where the
//! answer would reach clients, nor on any other subject of the cluster.

/// Whether `reply` is a control inbox under `<prefix>.ctl.` (`ctl_root`, with its dot).
pub(crate) fn is_control_inbox(ctl_root: &str, reply: &str) -> bool {
    let Some(rest) = reply
        .strip_prefix(ctl_root)
        .and_then(|r| r.strip_prefix("reply."))
    else {
        return false;
    };
    let Some((boot, token)) = rest.split_once('.') else {
        return false;
    };
    boot.len() == 16
        && boot.bytes().all(|b| b.is_ascii_hexdigit())
        && !token.is_empty()
        && token.len() <= 20
        && token.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_control_inbox_is_a_reply_subject() {
        let root = "pushgate.ctl.";
        assert!(is_control_inbox(
            root,
            "pushgate.ctl.reply.00000000000000a7.12"
        ));
        for bad in [
            "pushgate.all",
            "pushgate.user.alice",
            "pushgate.room.r",
            "pushgate.h.user.alice",
            "pushgate.ctl.presence",
            "pushgate.ctl.disconnect",
            "pushgate.ctl.node",
            "pushgate.ctl.reply.>",
            "pushgate.ctl.reply.*.1",
            "pushgate.ctl.reply.00000000000000a7.*",
            "pushgate.ctl.reply.00000000000000a7.",
            "pushgate.ctl.reply.00000000000000a7.1.x",
            "pushgate.ctl.reply.00000000000000a7.1 pushgate.all",
            "pushgate.ctl.reply.0a7.1",
            "other.ctl.reply.00000000000000a7.12",
            "_INBOX.abc",
            "",
        ] {
            assert!(!is_control_inbox(root, bad), "{bad:?}");
        }
    }
}
