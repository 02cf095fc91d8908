//! The MySQL client/server protocol as a test proxy between floatlm and
//! MariaDB sees it: packets (a 3-byte little-endian payload length, a
//! sequence id, the payload) and the command each client request opens with.

/// The packets complete at the front of `buf`, taken out of it in order;
/// a partial packet stays for the next read.
pub fn take_packets(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = buf[0] as usize | (buf[1] as usize) << 8 | (buf[2] as usize) << 16;
        if buf.len() < 4 + len {
            break;
        }
        out.push(buf.drain(..4 + len).collect());
    }
    out
}

/// The command byte and its body when `pkt` opens a client request
/// (sequence id 0, non-empty): 0x03 a text query, 0x17 a prepared execute.
pub fn command(pkt: &[u8]) -> Option<(u8, &[u8])> {
    match pkt {
        [_, _, _, 0, cmd, body @ ..] => Some((*cmd, body)),
        _ => None,
    }
}
