use std::io::Write;

use super::FileInput;

fn drain(mut input: FileInput) -> Vec<(u64, u64, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(chunk) = input.next_chunk() {
        for (pos, bytes) in chunk.iter() {
            out.push((chunk.epoch, pos, bytes.to_vec()));
        }
    }
    assert!(input.take_error().is_none());
    out
}

#[test]
fn epochs_count_lines_and_skip_blanks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    std::fs::write(&path, b"a\n\n  \r\nb\r\nc\nd").unwrap();
    let got = drain(FileInput::open(&path, 2).unwrap());
    assert_eq!(
        got,
        vec![
            (0, 0, b"a".to_vec()),
            (1, 3, b"b".to_vec()),
            (2, 4, b"c".to_vec()),
            (2, 5, b"d".to_vec()),
        ]
    );
}

#[test]
fn directories_and_gzip_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.jsonl"), b"3\n4\n").unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"1\n2\n").unwrap();
    std::fs::write(dir.path().join("a.jsonl.gz"), gz.finish().unwrap()).unwrap();
    std::fs::write(dir.path().join(".hidden"), b"x\n").unwrap();
    let got: Vec<_> = drain(FileInput::open(dir.path(), 100).unwrap())
        .into_iter()
        .map(|(_, pos, b)| (pos, String::from_utf8(b).unwrap()))
        .collect();
    let expected: Vec<(u64, String)> = (0..4).map(|i| (i, (i + 1).to_string())).collect();
    assert_eq!(got, expected);
}

#[test]
fn missing_input_is_a_clear_error() {
    let err = FileInput::open(std::path::Path::new("/nonexistent/x.jsonl"), 10)
        .err()
        .unwrap();
    assert!(err.to_string().contains("/nonexistent/x.jsonl"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    assert!(FileInput::open(dir.path(), 10).is_err());
}

#[test]
fn chunks_stay_within_an_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.jsonl");
    let text: String = (0..10_000).map(|i| format!("{i}\n")).collect();
    std::fs::write(&path, text).unwrap();
    let mut input = FileInput::open(&path, 3000).unwrap();
    let mut n = 0;
    while let Some(chunk) = input.next_chunk() {
        for (pos, _) in chunk.iter() {
            assert_eq!(pos / 3000, chunk.epoch);
            assert_eq!(pos, n);
            n += 1;
        }
    }
    assert_eq!(n, 10_000);
}

#[test]
fn watermark_bound_waits_for_every_earlier_epoch() {
    use crate::chunk::{ChunkSource, Pull};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.jsonl");
    let text: String = (0..30).map(|i| format!("{i}\n")).collect();
    std::fs::write(&path, text).unwrap();
    // Epochs of 10 lines, so chunks 0, 1, 2 are epochs 0, 1, 2.
    let mut input = FileInput::open(&path, 10).unwrap().shared();
    let mut chunks = Vec::new();
    while let Pull::Chunk(c) = input.pull() {
        chunks.push(c);
    }
    assert_eq!(
        chunks.iter().map(|c| (c.seq, c.epoch)).collect::<Vec<_>>(),
        vec![(0, 0), (1, 1), (2, 2)]
    );
    // Nothing precedes epoch 0.
    assert_eq!(input.watermark_bound(&chunks[0]), Some(None));
    // Epoch 2 needs chunks 0 and 1; chunk 1 reported first is not enough.
    input.parsed(&chunks[1], Some(500));
    assert_eq!(input.watermark_bound(&chunks[2]), None);
    assert_eq!(input.watermark_bound(&chunks[1]), None);
    input.parsed(&chunks[0], Some(100));
    assert_eq!(input.watermark_bound(&chunks[1]), Some(Some(500)));
    assert_eq!(input.watermark_bound(&chunks[2]), Some(Some(500)));
}

#[test]
fn lines_longer_than_the_read_buffer_and_files_without_a_last_newline() {
    // The reader's buffer is 1 MiB: a 3 MiB line spans several fills, and so do the lines
    // around it; the first file ends without a newline, which still ends its last line.
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(3 << 20);
    let mut first = String::new();
    for i in 0..40_000 {
        first.push_str(&format!("{{\"line\":{i}}}\r\n"));
        if i == 20_000 {
            first.push_str(&long);
            first.push('\n');
            first.push_str("   \n\n");
        }
    }
    first.push_str("last-without-newline");
    std::fs::write(dir.path().join("a.jsonl"), &first).unwrap();
    std::fs::write(dir.path().join("b.jsonl"), b"b1\nb2\n").unwrap();
    let text = format!("{first}\nb1\nb2\n");
    let expected: Vec<(u64, u64, Vec<u8>)> = text
        .split_terminator('\n')
        .enumerate()
        .map(|(i, line)| (i as u64, line.strip_suffix('\r').unwrap_or(line)))
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| (i / 7_000, i, line.as_bytes().to_vec()))
        .collect();
    let got = drain(FileInput::open(dir.path(), 7_000).unwrap());
    assert_eq!(got.len(), expected.len());
    assert!(
        got == expected,
        "the lines read differ from the file's lines"
    );
}
