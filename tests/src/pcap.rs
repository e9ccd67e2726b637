//! Reading the classic pcap files tcpdump writes, including one it is still writing.

use std::time::{Duration, SystemTime};

/// One frame from a capture: when the kernel saw it, and its bytes from the link layer up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedFrame {
    /// The capture timestamp (microsecond or nanosecond precision, as the file has it).
    pub ts: SystemTime,
    /// The captured bytes (Ethernet frames for the lab's `eth*` interfaces).
    pub data: Vec<u8>,
    /// The frame's length on the wire, which exceeds `data.len()` if the snapshot cut it.
    pub orig_len: u32,
}

const HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 16;
/// Larger than any snapshot length tcpdump uses: a record claiming more is corruption.
const MAX_RECORD_LEN: usize = 1 << 20;

/// Parses a pcap file's bytes. A file too short for its header yet, or a last record only
/// partly written, yields the complete frames before it: tcpdump may still be writing.
pub fn parse(bytes: &[u8]) -> Result<Vec<CapturedFrame>, String> {
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Ok(Vec::new());
    };
    let magic = [header[0], header[1], header[2], header[3]];
    let (little_endian, nanos) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (true, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (true, true),
        [0xa1, 0xb2, 0xc3, 0xd4] => (false, false),
        [0xa1, 0xb2, 0x3c, 0x4d] => (false, true),
        other => return Err(format!("not a pcap file (magic {other:02x?})")),
    };
    let read_u32 = |at: &[u8]| -> u32 {
        let word = [at[0], at[1], at[2], at[3]];
        if little_endian {
            u32::from_le_bytes(word)
        } else {
            u32::from_be_bytes(word)
        }
    };
    let mut frames = Vec::new();
    let mut rest = &bytes[HEADER_LEN..];
    while let Some(record) = rest.get(..RECORD_HEADER_LEN) {
        let secs = read_u32(&record[0..4]);
        let frac = read_u32(&record[4..8]);
        let incl_len = read_u32(&record[8..12]) as usize;
        let orig_len = read_u32(&record[12..16]);
        if incl_len > MAX_RECORD_LEN {
            return Err(format!(
                "record {} claims {incl_len} bytes: corrupt",
                frames.len()
            ));
        }
        let Some(data) = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + incl_len) else {
            break; // partly written
        };
        let frac = if nanos {
            Duration::from_nanos(u64::from(frac))
        } else {
            Duration::from_micros(u64::from(frac))
        };
        frames.push(CapturedFrame {
            ts: SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(secs)) + frac,
            data: data.to_vec(),
            orig_len,
        });
        rest = &rest[RECORD_HEADER_LEN + incl_len..];
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(magic: [u8; 4], records: &[(u32, u32, &[u8])]) -> Vec<u8> {
        let mut bytes = magic.to_vec();
        bytes.extend([2, 0, 4, 0]); // version 2.4
        bytes.extend([0; 8]); // thiszone, sigfigs
        bytes.extend(262144u32.to_le_bytes());
        bytes.extend(1u32.to_le_bytes()); // Ethernet
        for (secs, frac, data) in records {
            bytes.extend(secs.to_le_bytes());
            bytes.extend(frac.to_le_bytes());
            bytes.extend((data.len() as u32).to_le_bytes());
            bytes.extend((data.len() as u32).to_le_bytes());
            bytes.extend(*data);
        }
        bytes
    }

    #[test]
    fn microsecond_file() {
        let bytes = file([0xd4, 0xc3, 0xb2, 0xa1], &[(10, 500, b"abc"), (11, 0, b"")]);
        let frames = parse(&bytes).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].data, b"abc");
        assert_eq!(
            frames[0].ts,
            SystemTime::UNIX_EPOCH + Duration::from_secs(10) + Duration::from_micros(500)
        );
        assert_eq!(frames[1].orig_len, 0);
    }

    #[test]
    fn nanosecond_file() {
        let bytes = file([0x4d, 0x3c, 0xb2, 0xa1], &[(10, 500, b"abc")]);
        let frames = parse(&bytes).unwrap();
        assert_eq!(
            frames[0].ts,
            SystemTime::UNIX_EPOCH + Duration::from_secs(10) + Duration::from_nanos(500)
        );
    }

    #[test]
    fn partly_written_file_yields_complete_frames() {
        let bytes = file([0xd4, 0xc3, 0xb2, 0xa1], &[(1, 0, b"one"), (2, 0, b"two")]);
        for cut in 0..bytes.len() {
            let frames = parse(&bytes[..cut]).unwrap();
            assert!(frames.len() <= 1, "cut at {cut}");
        }
        assert_eq!(parse(&bytes).unwrap().len(), 2);
    }

    #[test]
    fn rejects_other_files() {
        assert!(parse(&[0u8; 40]).is_err());
    }

    #[test]
    fn rejects_absurd_record_length() {
        let mut bytes = file([0xd4, 0xc3, 0xb2, 0xa1], &[]);
        bytes.extend([0; 8]);
        bytes.extend(u32::MAX.to_le_bytes());
        bytes.extend([0; 4]);
        assert!(parse(&bytes).is_err());
    }
}
